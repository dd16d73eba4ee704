"""decide_revocation: whether an identity must be revoked, from what is observed and what the
status recorded, and when the answer may change without any event."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models.meta import Phase
from nhi.policies.revocation import EXPIRED, MANUAL, WORKLOAD_DELETED, decide_revocation
from tests.unit.factories import make_identity

pytestmark = pytest.mark.unit

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
CREATED = T0 - dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)


def at(delta: dt.timedelta) -> str:
    return (T0 + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


CASES: list[tuple[str, dict[str, Any], dict[str, Any], int, bool, dict[str, Any]]] = [
    # (id, spec overrides, status.workloads, workloads now, manual, expected Decision fields)
    ("never had a workload: nothing to revoke", {}, {}, 0, False,
     {"reason": None, "first_seen_at": None, "gone_since": None, "next_check": None}),
    ("a workload appears: first seen now", {}, {}, 1, False,
     {"reason": None, "first_seen_at": T0, "gone_since": None}),
    ("workloads present: first seen kept", {}, {"firstSeenAt": at(-MIN * 30)}, 2, False,
     {"reason": None, "first_seen_at": T0 - MIN * 30, "gone_since": None}),
    ("the last workload just went: grace period starts", {"revocation": {"gracePeriod": "2m"}},
     {"firstSeenAt": at(-MIN * 30)}, 0, False,
     {"reason": None, "gone_since": T0, "next_check": T0 + 2 * MIN}),
    ("inside the grace period", {"revocation": {"gracePeriod": "2m"}},
     {"firstSeenAt": at(-MIN * 30), "goneSince": at(-MIN)}, 0, False,
     {"reason": None, "gone_since": T0 - MIN, "next_check": T0 + MIN}),
    ("grace period over: revoked", {"revocation": {"gracePeriod": "2m"}},
     {"firstSeenAt": at(-MIN * 30), "goneSince": at(-MIN * 2)}, 0, False,
     {"reason": WORKLOAD_DELETED, "next_check": None}),
    ("grace 0: revoked at once", {"revocation": {"gracePeriod": "0s"}},
     {"firstSeenAt": at(-MIN)}, 0, False, {"reason": WORKLOAD_DELETED}),
    ("Retain keeps it whatever the workloads", {"revocation": {"onWorkloadDeletion": "Retain"}},
     {"firstSeenAt": at(-MIN * 30), "goneSince": at(-MIN * 20)}, 0, False,
     {"reason": None, "next_check": None}),
    ("a workload back inside the grace period: no longer gone", {},
     {"firstSeenAt": at(-MIN * 30), "goneSince": at(-MIN)}, 1, False,
     {"reason": None, "gone_since": None}),
    ("JIT window open: look again when it ends", {"lifetime": {"validFor": "2h"}}, {}, 0, False,
     {"reason": None, "expires_at": CREATED + 2 * 60 * MIN, "next_check": T0 + 60 * MIN}),
    ("JIT window over: expired", {"lifetime": {"validFor": "1h"}}, {}, 1, False,
     {"reason": EXPIRED, "expires_at": T0, "next_check": None}),
    ("the earlier of grace end and window end", {"lifetime": {"validFor": "1h5m"},
     "revocation": {"gracePeriod": "10m"}}, {"firstSeenAt": at(-MIN * 30)}, 0, False,
     {"reason": None, "next_check": T0 + 5 * MIN}),
    ("manual revocation wins over everything", {"lifetime": {"validFor": "1h"}}, {}, 3, True,
     {"reason": MANUAL}),
    ("an unreadable recorded time counts as none", {},
     {"firstSeenAt": "yesterday", "goneSince": "soon"}, 0, False,
     {"reason": None, "first_seen_at": None, "gone_since": None}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "workloads", "count", "manual", "expected"),
    [pytest.param(s, w, c, m, e, id=i) for i, s, w, c, m, e in CASES],
)
def test_decide_revocation(
    spec: dict[str, Any],
    workloads: dict[str, Any],
    count: int,
    manual: bool,
    expected: dict[str, Any],
) -> None:
    decision = decide_revocation(
        make_identity(**spec).spec,
        manual=manual,
        created=CREATED,
        status={"workloads": workloads},
        workload_count=count,
        now=T0,
    )
    for field, value in expected.items():
        assert getattr(decision, field) == value, field


def test_the_phase_follows_the_reason() -> None:
    def phase(**status: Any) -> str:
        spec = make_identity(lifetime={"validFor": "1h"}).spec
        return decide_revocation(
            spec, manual=False, created=CREATED, status=status, workload_count=0, now=T0
        ).phase

    assert phase() == Phase.EXPIRED
    manual = decide_revocation(
        make_identity().spec, manual=True, created=CREATED, status={}, workload_count=0, now=T0
    )
    assert manual.phase == Phase.REVOKED


def test_no_creation_time_means_no_window() -> None:
    spec = make_identity(lifetime={"validFor": "1h"}).spec
    decision = decide_revocation(
        spec, manual=False, created=None, status={}, workload_count=0, now=T0
    )
    assert decision.expires_at is None and decision.reason is None


def test_time_to_revoke_counts_from_the_last_workload_gone() -> None:
    from nhi.reconcilers.identity_revocation import _since_gone

    gone = {"workloads": {"goneSince": at(-dt.timedelta(minutes=5))}}
    assert _since_gone(gone, T0) == 300.0
    assert _since_gone({}, T0) == 0.0  # gone in this very pass
    assert _since_gone({"workloads": {"goneSince": "yesterday"}}, T0) == 0.0
    assert _since_gone({"workloads": {"goneSince": at(MIN)}}, T0) == 0.0  # a clock behind
