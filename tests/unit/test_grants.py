"""AccessGrants, pure: the model, what a policy allows, who approved, and the lifecycle
(``nhi.policies.grants.decide``), table-driven and property-based."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhi.builders.grants import build_children
from nhi.models.fields import SpecError
from nhi.models.grant import AccessGrant, GrantPhase, GrantReason
from nhi.models.policy import IdentityPolicy
from nhi.policies.grants import (
    Observed,
    auto_approver,
    decide,
    requester_checks,
    violations,
)
from nhi.policies.ownership import controlled_by_grant

pytestmark = pytest.mark.unit

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
READ = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
DELETE_PVC = {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["delete"]}


def at(delta: dt.timedelta) -> str:
    return (T0 + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "identityRef": {"name": "app"},
        "rules": [READ],
        "duration": "1h",
        "reason": "debug the nightly job",
        "requester": "alice",
        "requesterGroups": ["dev"],
    }
    base.update(spec or {})
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "AccessGrant",
        "metadata": {"name": "g", "namespace": "team", "uid": "uid-g", "generation": 1},
        "spec": base,
        "status": status or {},
    }


def grant(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> AccessGrant:
    return AccessGrant.from_body(body(spec, status))


APPROVED = {"approval": {"decision": "Approved", "approver": "bob"}}
OK = Observed(service_account="app")


# ------------------------------------------------------------------------------ the model


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"identityRef": {}}, "spec.identityRef.name"),
        ({"rules": [], "roleRefs": []}, "spec.rules"),
        ({"duration": "10s"}, "spec.duration"),
        ({"duration": "169h"}, "spec.duration"),
        ({"duration": "soon"}, "spec.duration"),
        ({"reason": "   "}, "spec.reason"),
        ({"startAt": "tomorrow"}, "spec.startAt"),
        ({"approval": {"decision": "Maybe"}}, "spec.approval.decision"),
        ({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]}, "spec.rules[0]"),
        ({"roleRefs": [{"kind": "Group", "name": "x"}]}, "spec.roleRefs[0].kind"),
    ],
)
def test_bad_input_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        grant(spec)
    assert err.value.path.startswith(field)


def test_model_reads_everything() -> None:
    g = grant(
        {**APPROVED, "startAt": at(HOUR), "roleRefs": [{"kind": "ClusterRole", "name": "view"}]},
        {"phase": "Active", "activatedAt": at(-MIN), "approvedBy": "bob"},
    )
    assert g.identity == "app" and g.duration == HOUR and g.requester == "alice"
    assert g.requester_groups == ("dev",) and g.start_at == T0 + HOUR
    assert g.approval is not None and g.approval.approver == "bob"
    assert g.status.activated_at == T0 - MIN and g.status.phase == "Active"
    assert g.role_refs[0].name == "view"


# ------------------------------------------------------------------------------ lifecycle

# (id, spec overrides, status, observed, now offset, expected fields)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], Observed, dt.timedelta, dict[str, Any]]] = [
    (
        "requested: waits for a person",
        {},
        {},
        OK,
        0 * MIN,
        {
            "phase": "Pending",
            "reason": GrantReason.AWAITING_APPROVAL,
            "grant_access": False,
            "next_look": None,
            "stalled": False,
        },
    ),
    (
        "approved: active for its duration from now",
        APPROVED,
        {},
        OK,
        0 * MIN,
        {
            "phase": "Active",
            "grant_access": True,
            "activated_at": T0,
            "expires_at": T0 + HOUR,
            "next_look": T0 + HOUR,
            "approved_by": "bob",
            "approved_at": T0,
        },
    ),
    (
        "active: the window comes from the status (a restart)",
        APPROVED,
        {
            "phase": "Active",
            "activatedAt": at(-30 * MIN),
            "approvedBy": "bob",
            "approvedAt": at(-31 * MIN),
        },
        OK,
        0 * MIN,
        {
            "phase": "Active",
            "activated_at": T0 - 30 * MIN,
            "expires_at": T0 + 30 * MIN,
            "approved_at": T0 - 31 * MIN,
        },
    ),
    (
        "a crash after the Role was created: the window started then",
        APPROVED,
        {},
        Observed(service_account="app", granted_since=T0 - 10 * MIN),
        0 * MIN,
        {"phase": "Active", "activated_at": T0 - 10 * MIN, "expires_at": T0 + 50 * MIN},
    ),
    (
        "the window is over: expired at its exact end",
        APPROVED,
        {"phase": "Active", "activatedAt": at(-HOUR - 2 * MIN)},
        OK,
        0 * MIN,
        {
            "phase": "Expired",
            "grant_access": False,
            "ended_at": T0 - 2 * MIN,
            "next_look": T0 - 2 * MIN + DAY,
            "delete": False,
        },
    ),
    (
        "expired and kept as the record",
        APPROVED,
        {"phase": "Expired", "endedAt": at(-HOUR), "activatedAt": at(-2 * HOUR)},
        OK,
        0 * MIN,
        {"phase": "Expired", "grant_access": False, "ended_at": T0 - HOUR, "delete": False},
    ),
    (
        "the record's retention is over: delete it",
        APPROVED,
        {"phase": "Expired", "endedAt": at(-DAY - MIN)},
        OK,
        0 * MIN,
        {"phase": "Expired", "delete": True},
    ),
    (
        "an ended grant never comes back, even approved again",
        APPROVED,
        {"phase": "Revoked", "endedAt": at(-MIN)},
        OK,
        0 * MIN,
        {"phase": "Revoked", "grant_access": False},
    ),
    (
        "revoked by the requester while active",
        {**APPROVED, "revoked": True},
        {"phase": "Active", "activatedAt": at(-MIN)},
        OK,
        0 * MIN,
        {"phase": "Revoked", "grant_access": False, "ended_at": T0, "activated_at": T0 - MIN},
    ),
    (
        "denied",
        {"approval": {"decision": "Denied", "approver": "bob"}},
        {},
        OK,
        0 * MIN,
        {"phase": "Denied", "grant_access": False, "reason": GrantReason.DENIED},
    ),
    (
        "scheduled: approved, waits for startAt",
        {**APPROVED, "startAt": at(HOUR)},
        {},
        OK,
        0 * MIN,
        {"phase": "Approved", "grant_access": False, "next_look": T0 + HOUR},
    ),
    (
        "approved after startAt: active from the approval",
        {**APPROVED, "startAt": at(-HOUR)},
        {},
        OK,
        0 * MIN,
        {"phase": "Active", "activated_at": T0},
    ),
    (
        "scheduled and approved before: the window opens at startAt exactly",
        {**APPROVED, "startAt": at(-2 * MIN)},
        {"phase": "Approved", "approvedBy": "bob", "approvedAt": at(-HOUR)},
        OK,
        0 * MIN,
        {"phase": "Active", "activated_at": T0 - 2 * MIN, "expires_at": T0 + 58 * MIN},
    ),
    (
        "the approval was withdrawn (terms edited) while active",
        {},
        {"phase": "Active", "activatedAt": at(-MIN)},
        OK,
        0 * MIN,
        {"phase": "Pending", "reason": GrantReason.WITHDRAWN, "grant_access": False},
    ),
    (
        "re-approved after an edit: the window does not start again",
        APPROVED,
        {"phase": "Pending", "activatedAt": at(-50 * MIN)},
        OK,
        0 * MIN,
        {"phase": "Active", "expires_at": T0 + 10 * MIN},
    ),
    (
        "the identity does not exist",
        APPROVED,
        {},
        Observed(service_account=None),
        0 * MIN,
        {
            "phase": "Pending",
            "reason": GrantReason.IDENTITY_NOT_FOUND,
            "stalled": True,
            "grant_access": False,
        },
    ),
    (
        "refused by a policy, even if approved",
        APPROVED,
        {"phase": "Active", "activatedAt": at(-MIN)},
        Observed(service_account="app", refusals=("spec.duration: x",)),
        0 * MIN,
        {
            "phase": "Pending",
            "reason": GrantReason.POLICY_VIOLATION,
            "stalled": True,
            "grant_access": False,
        },
    ),
    (
        "approved automatically by a policy",
        {},
        {},
        Observed(service_account="app", auto_approver="IdentityPolicy/p"),
        0 * MIN,
        {"phase": "Active", "approved_by": "IdentityPolicy/p"},
    ),
]


@pytest.mark.parametrize(
    ("spec", "status", "observed", "offset", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    spec: dict[str, Any],
    status: dict[str, Any],
    observed: Observed,
    offset: dt.timedelta,
    expected: dict[str, Any],
) -> None:
    verdict = decide(grant(spec, status), observed, T0 + offset)
    for key, value in expected.items():
        assert getattr(verdict, key) == value, key


# ------------------------------------------------------------------------------ policies


def policy(**spec: Any) -> IdentityPolicy:
    return IdentityPolicy.from_body({"metadata": {"name": "p"}, "spec": spec})


def test_policy_bounds_the_duration_and_the_rules() -> None:
    p = policy(
        grants={"maxDuration": "30m"},
        forbiddenRules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}],
    )
    found = violations(
        grant(
            {
                "rules": [
                    READ,
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                    {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
                ],
                "roleRefs": [{"kind": "ClusterRole", "name": "admin"}],
            }
        ),
        [p],
        {},
    )
    text = "\n".join(found)
    assert "spec.duration: 1h is longer than IdentityPolicy p's grants.maxDuration (30m)" in text
    assert "spec.rules[1]: asks for get on secrets" in text
    assert "spec.rules[2].apiGroups: contains the wildcard '*'" in text
    assert "spec.roleRefs[0]: binds ClusterRole 'admin'" in text
    assert violations(grant(), [policy(enforcement="Warn", grants={"maxDuration": "1m"})], {}) == []
    assert violations(grant(), [policy(namespaceSelector={"matchLabels": {"x": "y"}})], {}) == []


def test_auto_approval_only_within_its_bounds() -> None:
    p = policy(grants={"autoApprove": {"maxDuration": "1h", "verbs": ["get", "list", "watch"]}})
    assert auto_approver(grant(), [p], {}) == "IdentityPolicy/p"
    assert auto_approver(grant({"duration": "2h"}), [p], {}) is None
    assert auto_approver(grant({"rules": [DELETE_PVC]}), [p], {}) is None
    assert auto_approver(grant({"roleRefs": [{"kind": "Role", "name": "r"}]}), [p], {}) is None
    wild = {"apiGroups": ["*"], "resources": ["configmaps"], "verbs": ["get"]}
    assert auto_approver(grant({"rules": [wild]}), [p], {}) is None
    assert auto_approver(grant(), [policy()], {}) is None


def test_requester_checks_cover_every_combination_and_binding() -> None:
    g = grant({"rules": [READ], "roleRefs": [{"kind": "ClusterRole", "name": "view"}]})
    checks = requester_checks(g)
    assert {(c.verb, c.resource, c.namespace) for c in checks} == {
        ("get", "configmaps", "team"),
        ("list", "configmaps", "team"),
        ("bind", "clusterroles", "team"),
    }
    assert checks[-1].field == "spec.roleRefs[0]"


def test_children_are_controlled_by_the_grant() -> None:
    g = grant({"roleRefs": [{"kind": "ClusterRole", "name": "view"}]})
    children = build_children(g, "app-sa")
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("Role", "nhi-grant-g"),
        ("RoleBinding", "nhi-grant-g"),
        ("RoleBinding", "nhi-grant-g-ref-0"),
    ]
    assert all(controlled_by_grant(c, "uid-g") for c in children)
    assert not any(controlled_by_grant(c, "uid-other") for c in children)
    assert children[1]["subjects"] == [
        {"kind": "ServiceAccount", "name": "app-sa", "namespace": "team"}
    ]
    # Labels prove nothing: a look-alike without the ownerReference is not the grant's.
    fake = {"metadata": {"labels": children[0]["metadata"]["labels"]}}
    assert not controlled_by_grant(fake, "uid-g")


# ------------------------------------------------------------------------------ properties

moments = st.integers(min_value=-10 * 24 * 3600, max_value=10 * 24 * 3600).map(
    lambda s: T0 + dt.timedelta(seconds=s)
)


@settings(max_examples=300, deadline=None)
@given(
    duration_s=st.integers(min_value=60, max_value=168 * 3600),
    activated=st.none() | moments,
    start=st.none() | moments,
    now=moments,
    phase=st.sampled_from(["", "Pending", "Approved", "Active", "Expired", "Revoked", "Denied"]),
    approval=st.sampled_from([None, "Approved", "Denied"]),
    revoked=st.booleans(),
    auto=st.booleans(),
    identity=st.booleans(),
)
def test_access_only_inside_an_approved_window(
    duration_s: int,
    activated: dt.datetime | None,
    start: dt.datetime | None,
    now: dt.datetime,
    phase: str,
    approval: str | None,
    revoked: bool,
    auto: bool,
    identity: bool,
) -> None:
    spec: dict[str, Any] = {"duration": f"{duration_s}s", "revoked": revoked}
    if approval:
        spec["approval"] = {"decision": approval, "approver": "bob"}
    if start:
        spec["startAt"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {"phase": phase}
    if activated:
        status["activatedAt"] = activated.strftime("%Y-%m-%dT%H:%M:%SZ")
    if phase in GrantPhase.ENDED:
        status["endedAt"] = at(-MIN)
    g = grant(spec, status)
    observed = Observed(
        service_account="app" if identity else None,
        auto_approver="IdentityPolicy/p" if auto else None,
    )
    v = decide(g, observed, now)
    if v.grant_access:
        assert v.phase == GrantPhase.ACTIVE and identity and not revoked
        assert approval == "Approved" or (auto and approval is None)
        assert v.activated_at is not None and v.expires_at == v.activated_at + g.duration
        assert v.activated_at <= now < v.expires_at
        assert phase not in GrantPhase.ENDED
        assert v.next_look == v.expires_at
    if phase in GrantPhase.ENDED or revoked:
        assert not v.grant_access
    if v.next_look is not None:
        # Never a busy loop: the next look is in the future, or the record is due for deletion.
        assert v.next_look > now or v.delete or v.phase in GrantPhase.ENDED


def test_grant_series_counts_phases_and_overdue_grants() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from nhi.metrics import GrantSeries

    now = [1000.0]
    series = GrantSeries(clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(series)
    series.observe("a", "g1", "Active", 1003.0)
    series.observe("a", "g2", "Active", 900.0)
    series.observe("a", "g3", "Expired", None)
    series.observe("b", "g4", "Pending", None)
    page = generate_latest(registry).decode()
    assert 'nhi_access_grants{namespace="a",phase="Active"} 2.0' in page
    assert 'nhi_access_grants{namespace="a",phase="Expired"} 1.0' in page
    assert 'nhi_access_grants_overdue{namespace="a"} 1.0' in page
    assert 'nhi_access_grants_overdue{namespace="b"} 0.0' in page
    series.forget("a", "g2")
    now[0] = 1009.0  # g1's window ended 6 s ago and it is still Active
    page = generate_latest(registry).decode()
    assert 'nhi_access_grants_overdue{namespace="a"} 1.0' in page
    assert 'nhi_access_grants{namespace="a",phase="Active"} 1.0' in page


def test_used_for_lists_the_requests_the_grant_allowed_in_its_window() -> None:
    from nhi.models.usage import Access, Seen
    from nhi.policies.grants import used_for

    g = grant({"rules": [DELETE_PVC, READ]})
    start = int(T0.timestamp())
    pvc, cm = "persistentvolumeclaims", "configmaps"
    entries = {
        Access("", pvc, "", "team", "old-data", "delete"): Seen(start + 5, start + 9, 3),
        Access("", cm, "", "team", "", "list"): Seen(start + 1, start + 1, 1),
        # Before the window, another namespace, a verb the grant does not give: not its use.
        Access("", cm, "", "team", "", "get"): Seen(start - 900, start - 600, 4),
        Access("", pvc, "", "other", "x", "delete"): Seen(start + 5, start + 5, 1),
        Access("", pvc, "", "team", "x", "create"): Seen(start + 5, start + 5, 1),
    }
    assert used_for(g, entries, T0, T0 + HOUR) == [
        "3 x delete persistentvolumeclaims/old-data in team",
        "1 x list configmaps in team",
    ]
    assert used_for(g, {}, T0, T0 + HOUR) == []
