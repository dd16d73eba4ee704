"""Rotation decisions: when a value is renewed, why a new one is issued, and what the
credential Secret's annotations remember across restarts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models import issued
from nhi.models.issued import Issued
from nhi.policies import rotation as rot
from nhi.policies.rotation import jitter, next_due, reason_to_issue, renewal_time
from tests.unit.factories import T0, credential, make_identity, make_issued

pytestmark = pytest.mark.unit

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)

# --------------------------------------------------------------------------- renewal time

RENEWAL_CASES = [
    # (id, spec.rotation, lifetime, base renewal time after not_before, jitter cap)
    ("default fraction 0.33 of 1h", {}, H, 40 * M + 12 * S, dt.timedelta(seconds=120.6)),
    ("fraction 0.5 of 24h", {"renewBeforeFraction": 0.5}, 24 * H, 12 * H, 5 * M),
    ("fraction 0.1 of 10m", {"renewBeforeFraction": 0.1}, 10 * M, 9 * M, dt.timedelta(seconds=27)),
    ("renewBefore 10m of 1h", {"renewBefore": "10m"}, H, 50 * M, dt.timedelta(seconds=150)),
    ("renewBefore 8h of 24h", {"renewBefore": "8h"}, 24 * H, 16 * H, 5 * M),
    # renewBefore longer than the value lives: renew after 1% of a long lifetime.
    (
        "renewBefore beyond the lifetime",
        {"renewBefore": "200h"},
        100 * H,
        H,
        3 * M,
    ),
    # The actual lifetime counts (an issuer may cut a certificate short), not the spec's ttl.
    ("shortened lifetime", {}, 30 * M, 20 * M + 6 * S, dt.timedelta(seconds=60.3)),
]


@pytest.mark.parametrize(
    ("rotation", "lifetime", "base", "cap"),
    [pytest.param(r, lt, b, c, id=i) for i, r, lt, b, c in RENEWAL_CASES],
)
def test_renewal_time(
    rotation: dict[str, Any], lifetime: dt.timedelta, base: dt.timedelta, cap: dt.timedelta
) -> None:
    spec = make_identity(rotation=rotation).spec
    for seed in ("team-a/payments-api/api-token", "team-b/ledger/mtls", "x"):
        when = renewal_time(spec, T0, T0 + lifetime, seed)
        # Jitter only ever renews earlier, by less than its cap.
        assert T0 + base - cap < when <= T0 + base, seed
        assert T0 < when < T0 + lifetime


MIN_INTERVAL_CASES = [
    # (id, spec.rotation, not_before, issued_at, not_after, expected renewal time)
    # 1% of 1h is 36 s: too soon after issuance, so one minute.
    ("renewBefore beyond a short lifetime", {"renewBefore": "2h"}, T0, T0, T0 + H, T0 + M),
    # The issue's case: notBefore back-dated 1m, so 95% of 11m before notAfter is 27 s
    # before issuance; a renewal in the past meant an issuance at every reconcile.
    (
        "fraction 0.95 of a back-dated 10m certificate",
        {"renewBeforeFraction": 0.95},
        T0 - M,
        T0,
        T0 + 10 * M,
        T0 + M,
    ),
    (
        "fraction 0.999999 of 24h",
        {"renewBeforeFraction": 0.999999},
        T0,
        T0,
        T0 + 24 * H,
        T0 + M,
    ),
    # A certificate cut short (its CA expires in 40 s): half of what is left, before it expires.
    ("40 s left at issuance", {"renewBeforeFraction": 0.95}, T0, T0, T0 + 40 * S, T0 + 20 * S),
]


@pytest.mark.parametrize(
    ("rotation", "not_before", "issued_at", "not_after", "expected"),
    [pytest.param(r, nb, ia, na, e, id=i) for i, r, nb, ia, na, e in MIN_INTERVAL_CASES],
)
def test_renewal_is_never_sooner_than_the_minimum_interval(
    rotation: dict[str, Any],
    not_before: dt.datetime,
    issued_at: dt.datetime,
    not_after: dt.datetime,
    expected: dt.datetime,
) -> None:
    spec = make_identity(rotation=rotation).spec
    for seed in ("team-a/payments-api/api-token", "team-b/ledger/mtls", "x"):
        when = renewal_time(spec, not_before, not_after, seed, issued_at=issued_at)
        assert when == expected, seed
        assert when - issued_at >= rot.min_reissue_interval(issued_at, not_after)
        assert when < not_after


def test_renewal_is_before_not_after_with_a_fraction_near_zero() -> None:
    spec = make_identity(rotation={"renewBeforeFraction": 1e-12}).spec
    for seed in ("a", "b", "c", "d"):
        when = renewal_time(spec, T0, T0 + H, seed)
        assert T0 + 55 * M < when < T0 + H


@pytest.mark.parametrize(
    ("reason", "now", "held"),
    [
        # One minute after issuance at T0 (make_issued), whatever the stored renewal time says.
        (rot.RENEWAL_DUE, T0 + 30 * S, T0 + M),
        (rot.ISSUER_CHANGED, T0 + 30 * S, T0 + M),
        (rot.RENEWAL_DUE, T0 + M, None),
        # Someone's edit (each answered once), or a value gone or expired: at once.
        (rot.SPEC_CHANGED, T0 + S, None),
        (rot.RENEW_REQUESTED, T0 + S, None),
        (rot.SECRET_MISSING, T0 + S, None),
        (rot.EXPIRED, T0 + S, None),
    ],
)
def test_a_value_is_not_issued_again_within_the_minimum_interval(
    reason: str, now: dt.datetime, held: dt.datetime | None
) -> None:
    # Annotations that put the renewal before the issuance (an older operator wrote them).
    issued = make_issued(renewal_time=T0 - M)
    assert rot.held_until(issued, reason, now) == held
    assert next_due(issued, now) == T0 + M  # the next look waits for the interval too


@pytest.mark.parametrize(
    ("window", "cap"),
    [
        (dt.timedelta(0), dt.timedelta(0)),
        (-H, dt.timedelta(0)),
        (M, 3 * S),  # 5% of the window
        (H, 3 * M),
        (100 * M, 5 * M),  # both limits meet
        (24 * H, 5 * M),  # never more than 5 minutes
        (8760 * H, 5 * M),
    ],
)
def test_jitter_is_bounded(window: dt.timedelta, cap: dt.timedelta) -> None:
    values = [jitter(f"team-a/id-{i}/tok", window) for i in range(1000)]
    assert all(dt.timedelta(0) <= v <= cap for v in values)
    if cap:
        assert all(v < cap for v in values)
        assert max(values) > cap * 0.9  # the whole range is used
        assert min(values) < cap * 0.1
    else:
        assert set(values) == {dt.timedelta(0)}


def test_jitter_is_stable_for_a_seed() -> None:
    spec = make_identity().spec
    first = renewal_time(spec, T0, T0 + 24 * H, "team-a/payments-api/api-token")
    again = renewal_time(spec, T0, T0 + 24 * H, "team-a/payments-api/api-token")
    assert first == again
    # Pinned: a restarted operator (another process) computes the same schedule.
    assert jitter("team-a/payments-api/api-token", 24 * H) == jitter(
        "team-a/payments-api/api-token", 24 * H
    )


def test_jitter_spreads_identities_created_together() -> None:
    spec = make_identity().spec
    times = {renewal_time(spec, T0, T0 + 24 * H, f"team-a/id-{i}/tok") for i in range(1000)}
    assert len(times) >= 990
    assert max(times) - min(times) > 4 * M


# --------------------------------------------------------------------------- reasons

DEFAULT_NOW = T0 + 10 * M
REASON_CASES = [
    # (id, Issued overrides or None for no Secret, reason_to_issue kwargs, expected reason)
    ("no Secret", None, {"current_spec_hash": "other"}, rot.SECRET_MISSING),
    (
        "spec changed beats expired",
        {},
        {"current_spec_hash": "hash-2", "now": T0 + 2 * H, "ca_fingerprint": "ca-2"},
        rot.SPEC_CHANGED,
    ),
    (
        "expired beats issuer changed",
        {},
        {"now": T0 + H, "ca_fingerprint": "ca-2", "renew_request": "r1"},
        rot.EXPIRED,
    ),
    (
        "issuer changed beats renew requested",
        {},
        {"ca_fingerprint": "ca-2", "renew_request": "r1"},
        rot.ISSUER_CHANGED,
    ),
    (
        "renew requested beats renewal due",
        {},
        {"renew_request": "r1", "now": T0 + 45 * M},
        rot.RENEW_REQUESTED,
    ),
    ("renewal due", {}, {"now": T0 + 45 * M}, rot.RENEWAL_DUE),
    ("renewal due at the exact time", {}, {"now": T0 + 40 * M}, rot.RENEWAL_DUE),
    ("one second before renewal", {}, {"now": T0 + 40 * M - S}, None),
    ("expired at the exact time", {}, {"now": T0 + H}, rot.EXPIRED),
    ("nothing to do", {}, {}, None),
    ("same CA", {}, {"ca_fingerprint": "ca-1"}, None),
    ("CA not known now", {}, {"ca_fingerprint": None}, None),
    ("CA not recorded then", {"ca_fingerprint": ""}, {"ca_fingerprint": "ca-2"}, None),
    ("renew request already answered", {"renew_handled": "r1"}, {"renew_request": "r1"}, None),
    (
        "answered renew request, renewal due",
        {"renew_handled": "r1"},
        {"renew_request": "r1", "now": T0 + 50 * M},
        rot.RENEWAL_DUE,
    ),
    (
        "a new renew request value",
        {"renew_handled": "r1"},
        {"renew_request": "r2"},
        rot.RENEW_REQUESTED,
    ),
    (
        "a renew request naming a past time still renews once",
        {},
        {"renew_request": "2000-01-01T00:00:00Z"},
        rot.RENEW_REQUESTED,
    ),
    ("empty renew request", {}, {"renew_request": ""}, None),
]


@pytest.mark.parametrize(
    ("issued_overrides", "kwargs", "expected"),
    [pytest.param(o, k, e, id=i) for i, o, k, e in REASON_CASES],
)
def test_reason_to_issue(
    issued_overrides: dict[str, Any] | None, kwargs: dict[str, Any], expected: str | None
) -> None:
    issued = (
        None
        if issued_overrides is None
        else make_issued(**{"ca_fingerprint": "ca-1", **issued_overrides})
    )
    args: dict[str, Any] = {"current_spec_hash": "hash-1", "now": DEFAULT_NOW, **kwargs}
    (cred,) = make_identity(credentials=[credential()]).spec.credentials
    assert reason_to_issue(cred, issued, **args) == expected


def test_a_renew_request_renews_once() -> None:
    """The value issued for a request records it; the same request then asks for nothing."""
    (cred,) = make_identity(credentials=[credential()]).spec.credentials
    first = make_issued()
    request = "2030-01-01T12:05:00Z"
    assert reason_to_issue(
        cred, first, current_spec_hash="hash-1", now=DEFAULT_NOW, renew_request=request
    ) == (rot.RENEW_REQUESTED)
    renewed = Issued.from_annotations({**first.annotations(), issued.A_RENEW_HANDLED: request})
    assert renewed is not None
    assert (
        reason_to_issue(
            cred, renewed, current_spec_hash="hash-1", now=DEFAULT_NOW, renew_request=request
        )
        is None
    )


@pytest.mark.parametrize(
    ("previous_not_after", "now", "due"),
    [
        (None, T0, T0 + 40 * M),
        (T0 + 20 * M, T0, T0 + 20 * M),  # the old value's overlap ends first
        (T0 + 20 * M, T0 + 30 * M, T0 + 40 * M),  # overlap over: only the renewal counts
        (T0 + 50 * M, T0, T0 + 40 * M),
    ],
)
def test_next_due(
    previous_not_after: dt.datetime | None, now: dt.datetime, due: dt.datetime
) -> None:
    assert next_due(make_issued(previous_not_after=previous_not_after), now) == due


# --------------------------------------------------------------------------- annotations


FULL = make_issued(
    rotation_count=3,
    serial="4f:1a",
    fingerprint="sha256:abcd",
    issuer="ClusterIdentityIssuer/mesh-ca",
    ca_fingerprint="sha256:ca",
    previous_not_after=T0 + 5 * M,
    renew_handled="2030-01-01T11:00:00Z",
)


@pytest.mark.parametrize("issued", [make_issued(), FULL], ids=["minimal", "full"])
def test_annotations_round_trip(issued: Issued) -> None:
    ann = issued.annotations()
    assert all(k.startswith("nhi.dev/") for k in ann)
    assert all(isinstance(v, str) for v in ann.values())
    assert Issued.from_annotations(ann) == issued


def test_minimal_annotations() -> None:
    assert make_issued().annotations() == {
        "nhi.dev/not-before": "2030-01-01T12:00:00Z",
        "nhi.dev/not-after": "2030-01-01T13:00:00Z",
        "nhi.dev/renewal-time": "2030-01-01T12:40:00Z",
        "nhi.dev/issued-at": "2030-01-01T12:00:00Z",
        "nhi.dev/rotation-count": "0",
        "nhi.dev/spec-hash": "hash-1",
    }


def test_annotations_keep_whole_seconds() -> None:
    issued = make_issued(renewal_time=T0 + 40 * M + dt.timedelta(microseconds=999_999))
    restored = Issued.from_annotations(issued.annotations())
    assert restored is not None
    assert restored.renewal_time == T0 + 40 * M
    assert restored.renewal_time.tzinfo is not None


def test_other_annotations_are_ignored() -> None:
    ann = {**FULL.annotations(), "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert Issued.from_annotations(ann) == FULL


def test_optional_annotations_default() -> None:
    ann = make_issued().annotations()
    del ann[issued.A_COUNT]
    del ann[issued.A_SPEC_HASH]
    restored = Issued.from_annotations(ann)
    assert restored is not None
    assert (restored.rotation_count, restored.spec_hash) == (0, "")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (issued.A_NOT_BEFORE, None),
        (issued.A_NOT_AFTER, None),
        (issued.A_RENEWAL, None),
        (issued.A_ISSUED_AT, None),
        (issued.A_NOT_AFTER, "tomorrow"),
        (issued.A_RENEWAL, ""),
        (issued.A_COUNT, "three"),
        (issued.A_PREVIOUS_NOT_AFTER, "soon"),
    ],
)
def test_unreadable_annotations_mean_no_issued_value(key: str, value: str | None) -> None:
    ann = FULL.annotations()
    if value is None:
        del ann[key]
    else:
        ann[key] = value
    assert Issued.from_annotations(ann) is None


def test_no_annotations() -> None:
    assert Issued.from_annotations({}) is None


# --------------------------------------------------------------------------- spec hash

TOKEN = credential("tok", secretName="tok-secret", ttl="1h", audiences=["vault"])
CERT = credential(
    "mtls", "X509", secretName="mtls-secret", keyAlgorithm="ECDSA-P256", dnsNames=["a.svc"]
)
STATIC = credential(
    "pw", "StaticSecret", secretName="pw-secret", generator={"length": 32, "charset": "hex"}
)


def _hash(raw: dict[str, Any], service_account: str = "payments-api") -> str:
    identity = make_identity(serviceAccount={"name": service_account}, credentials=[raw])
    (cred,) = identity.spec.credentials
    return rot.spec_hash(cred, identity.spec.service_account)


SPEC_HASH_CASES = [
    # (id, base credential, changed fields, new serviceAccount, issues a new value)
    ("token ttl", TOKEN, {"ttl": "2h"}, None, True),
    ("token ttl same duration", TOKEN, {"ttl": "60m"}, None, False),
    ("token audience added", TOKEN, {"audiences": ["vault", "ledger"]}, None, True),
    ("token audiences removed", TOKEN, {"audiences": []}, None, True),
    ("token serviceAccount", TOKEN, {}, "other-sa", True),
    ("token type", TOKEN, {"type": "StaticSecret", "audiences": []}, None, True),
    # Renaming a credential that keeps its secretName keeps its value: nothing about the value
    # changes. (Without an explicit secretName the rename moves it to a new Secret, which is a
    # SecretMissing of its own.)
    ("token name", TOKEN, {"name": "renamed"}, None, False),
    ("token secretName", TOKEN, {"secretName": "moved"}, None, False),
    ("token keyAlgorithm (tokens have no key)", TOKEN, {"keyAlgorithm": "Ed25519"}, None, False),
    ("cert ttl", CERT, {"ttl": "48h"}, None, True),
    ("cert issuer name", CERT, {"issuerRef": {"name": "other-ca"}}, None, True),
    (
        "cert issuer kind",
        CERT,
        {"issuerRef": {"kind": "IdentityIssuer", "name": "mesh-ca"}},
        None,
        True,
    ),
    (
        "cert issuer kind spelled out as the default",
        CERT,
        {"issuerRef": {"kind": "ClusterIdentityIssuer", "name": "mesh-ca"}},
        None,
        False,
    ),
    ("cert keyAlgorithm", CERT, {"keyAlgorithm": "RSA-2048"}, None, True),
    ("cert dnsNames", CERT, {"dnsNames": ["a.svc", "b.svc"]}, None, True),
    ("cert serviceAccount (the SPIFFE ID)", CERT, {}, "other-sa", True),
    ("cert name", CERT, {"name": "renamed"}, None, False),
    (
        "static generator length",
        STATIC,
        {"generator": {"length": 64, "charset": "hex"}},
        None,
        True,
    ),
    (
        "static generator charset",
        STATIC,
        {"generator": {"length": 32, "charset": "base64url"}},
        None,
        True,
    ),
    ("static ttl", STATIC, {"ttl": "24h"}, None, True),
    ("static keyAlgorithm", STATIC, {"keyAlgorithm": "Ed25519"}, None, False),
    ("static secretName", STATIC, {"secretName": "moved"}, None, False),
]


@pytest.mark.parametrize(
    ("base", "changes", "service_account", "changed"),
    [pytest.param(b, c, sa, ch, id=i) for i, b, c, sa, ch in SPEC_HASH_CASES],
)
def test_spec_hash(
    base: dict[str, Any], changes: dict[str, Any], service_account: str | None, changed: bool
) -> None:
    before = _hash(base)
    after = _hash({**base, **changes}, service_account or "payments-api")
    assert (before != after) is changed


def test_spec_hash_is_short_and_stable() -> None:
    value = _hash(TOKEN)
    assert len(value) == 16
    assert int(value, 16) >= 0
    assert value == _hash(dict(TOKEN))


def test_spec_hash_ignores_the_rotation_policy() -> None:
    """Changing when to renew takes effect at the next issuance; it issues nothing now."""
    a = make_identity(credentials=[TOKEN], rotation={"renewBeforeFraction": 0.5})
    b = make_identity(credentials=[TOKEN], rotation={"renewBefore": "5m"})
    assert rot.spec_hash(a.spec.credentials[0], "sa") == rot.spec_hash(b.spec.credentials[0], "sa")
