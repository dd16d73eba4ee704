"""The CA and CRL rules of issuers (nhi.policies.ca): when to rotate, re-sign, look again.

Table-driven, with a fixed ``now``: every rule takes the clock as an argument.
"""

from __future__ import annotations

import datetime as dt
import functools

import pytest
from cryptography import x509

from nhi.builders.issuer import RootMaterial
from nhi.crypto import (
    PrivateKey,
    RevokedSerial,
    build_crl,
    build_self_signed_ca,
    generate_key,
)
from nhi.models.issuer import SelfSignedSource
from nhi.policies.ca import (
    OVERDUE_MARGIN,
    crl_resign_at,
    crl_resign_reason,
    merge_revoked,
    needs_rotation,
    next_look,
    pending_root_changes,
    plan_crl,
    prune_revoked,
    restorable,
    root_action,
    root_due,
    rotation_at,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def key(slot: int = 0) -> PrivateKey:
    return generate_key("ECDSA-P256")


@functools.cache
def root(slot: int = 0, now: dt.datetime = NOW, ttl: dt.timedelta = 30 * DAY) -> x509.Certificate:
    return build_self_signed_ca(f"root {slot}", key(slot), now, ttl)


def _crl(
    entries: list[RevokedSerial],
    number: int = 1,
    now: dt.datetime = NOW,
    validity: dt.timedelta = DAY,
    slot: int = 0,
) -> x509.CertificateRevocationList:
    return build_crl(
        ca_cert=root(slot),
        ca_key=key(slot),
        revoked=entries,
        now=now,
        next_update=validity,
        crl_number=number,
    )


# ------------------------------------------------------------------------------ rotation


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (dt.timedelta(0), False),
        (10 * DAY, False),
        (19 * DAY, False),  # 19 of 30 days: more than a third left
        (20 * DAY + dt.timedelta(minutes=2), True),  # less than a third left
        (29 * DAY, True),
        (31 * DAY, True),  # expired
    ],
)
def test_needs_rotation_when_a_third_of_the_lifetime_is_left(
    elapsed: dt.timedelta, expected: bool
) -> None:
    assert needs_rotation(root(), NOW + elapsed) is expected


def test_rotation_at_is_two_thirds_into_the_lifetime() -> None:
    cert = root()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert rotation_at(cert) == cert.not_valid_before_utc + lifetime * 2 / 3


def test_root_action_in_order() -> None:
    current = RootMaterial(root(0), key(0))
    assert root_action(None, NOW) == "create"
    assert root_action(current, NOW) is None
    assert root_action(current, NOW + 25 * DAY) == "rotate"
    old = root(1, now=NOW - 29 * DAY)
    with_previous = RootMaterial(root(0), key(0), (old,))
    assert root_action(with_previous, NOW) is None
    assert root_action(with_previous, NOW + 2 * DAY) == "prune"  # the previous root expired


def test_root_due_is_its_rotation_or_a_previous_root_expiring_first() -> None:
    current = RootMaterial(root(0), key(0))
    assert root_due(current) == rotation_at(root(0))
    soon = root(1, now=NOW - 29 * DAY)  # expires in a day, before root(0) rotates
    assert root_due(RootMaterial(root(0), key(0), (soon,))) == soon.not_valid_after_utc


@pytest.mark.parametrize(
    ("remembered", "elapsed", "expected"),
    [
        (None, dt.timedelta(0), False),
        (True, dt.timedelta(0), True),
        (True, 29 * DAY, True),  # rotation is due, but it still signs validly
        (True, 31 * DAY, False),  # expired: a new root is made instead
    ],
)
def test_a_lost_root_is_restored_while_it_is_valid(
    remembered: bool | None, elapsed: dt.timedelta, expected: bool
) -> None:
    material = RootMaterial(root(0), key(0)) if remembered else None
    assert restorable(material, NOW + elapsed) is expected


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (SelfSignedSource(key_algorithm="ECDSA-P256", ttl=30 * DAY), None),
        (
            SelfSignedSource(key_algorithm="Ed25519", ttl=30 * DAY),
            "keyAlgorithm ECDSA-P256 -> Ed25519",
        ),
        (SelfSignedSource(key_algorithm="ECDSA-P256", ttl=60 * DAY), "(ttl)"),
        (
            SelfSignedSource(key_algorithm="RSA-2048", ttl=DAY),
            "(keyAlgorithm ECDSA-P256 -> RSA-2048, ttl)",
        ),
    ],
)
def test_spec_changes_wait_for_the_next_rotation(
    source: SelfSignedSource, words: str | None
) -> None:
    note = pending_root_changes(source, root(0))
    if words is None:
        assert note == ""
    else:
        assert words in note
        assert note.startswith("spec.selfSigned changes")
        assert note.endswith(rotation_at(root(0)).strftime("%Y-%m-%dT%H:%M:%SZ"))


# ----------------------------------------------------------------------------------- CRL


def test_merge_revoked_is_idempotent_and_keeps_the_earliest_revocation() -> None:
    a = RevokedSerial(10, NOW)
    b = RevokedSerial(5, NOW + DAY)
    merged, added = merge_revoked([a], [b, RevokedSerial(10, NOW + DAY)])
    assert merged == [b, a]
    assert added == 1
    again, added = merge_revoked(merged, [b])
    assert again == merged
    assert added == 0
    earlier, _ = merge_revoked(merged, [RevokedSerial(5, NOW)])
    assert earlier[0].revoked_at == NOW


def test_prune_drops_entries_older_than_every_trusted_ca() -> None:
    entries = [RevokedSerial(1, NOW - 2 * DAY), RevokedSerial(2, NOW)]
    assert prune_revoked(entries, NOW - DAY) == [RevokedSerial(2, NOW)]


@pytest.mark.parametrize(
    ("crl_age", "validity", "slot", "expected"),
    [
        (dt.timedelta(0), DAY, 0, None),
        (dt.timedelta(hours=15), DAY, 0, None),  # 9h of 24h left: more than a third
        (dt.timedelta(hours=17), DAY, 0, "due"),  # 7h left
        (dt.timedelta(0), 2 * DAY, 0, "validity changed"),
        (dt.timedelta(0), DAY, 1, "issuer changed"),  # signed by another CA
    ],
)
def test_crl_resign_reason(
    crl_age: dt.timedelta, validity: dt.timedelta, slot: int, expected: str | None
) -> None:
    crl = _crl([], now=NOW - crl_age, slot=slot)
    assert crl_resign_reason(crl, root(0), NOW, validity) == expected


def test_missing_crl_must_be_signed() -> None:
    assert crl_resign_reason(None, root(0), NOW, DAY) == "missing"


def test_crl_resign_at_is_a_third_before_next_update() -> None:
    crl = _crl([])
    assert crl_resign_at(crl, DAY) == NOW + DAY - DAY / 3


A, B, C = RevokedSerial(10, NOW), RevokedSerial(20, NOW), RevokedSerial(30, NOW)
OLD = RevokedSerial(5, NOW - 2 * DAY)  # revoked before the CA was made


@pytest.mark.parametrize(
    ("published", "remembered", "new", "tagged", "expected"),
    [
        # Nothing published yet: signed, number 1.
        (None, None, [], True, ([], [], 1, "missing")),
        # Published, current and tagged: left as it is.
        ((1, [A], NOW, 0), None, [], True, ([A], [], 1, None)),
        # Published and current, but untagged: signed again to carry the tag.
        ((1, [A], NOW, 0), None, [], False, ([A], [], 2, "provenance")),
        # A new serial: listed, signed again.
        ((3, [A], NOW, 0), None, [B], True, ([A, B], [B], 4, "entries changed")),
        # A serial already listed: nothing to do.
        ((3, [A], NOW, 0), None, [A], True, ([A], [], 3, None)),
        # The ConfigMap lost an entry this process published: put back, numbered after both.
        ((2, [A], NOW, 0), (5, [A, C]), [], True, ([A, C], [], 6, "entries changed")),
        # An entry older than every trusted CA leaves.
        ((2, [OLD, A], NOW, 0), None, [], True, ([A], [], 3, "entries changed")),
        # Signed by another CA (a rotation): signed again by the current one.
        ((2, [A], NOW, 1), None, [], True, ([A], [], 3, "issuer changed")),
        # A third of its validity left: signed again.
        ((2, [A], NOW - dt.timedelta(hours=17), 0), None, [], True, ([A], [], 3, "due")),
    ],
)
def test_plan_crl(
    published: tuple[int, list[RevokedSerial], dt.datetime, int] | None,
    remembered: tuple[int, list[RevokedSerial]] | None,
    new: list[RevokedSerial],
    tagged: bool,
    expected: tuple[list[RevokedSerial], list[RevokedSerial], int, str | None],
) -> None:
    crl = None
    if published is not None:
        number, entries, when, slot = published
        crl = _crl(entries, number=number, now=when, slot=slot)
    previous = build_self_signed_ca("previous", key(1), NOW - DAY, 30 * DAY)  # still trusted
    plan = plan_crl(
        crl,
        remembered,
        new,
        ca_cert=root(0),
        anchors=[previous],
        validity=DAY,
        tagged=tagged,
        now=NOW,
    )
    entries, added, number, why = expected
    assert [e.serial for e in plan.entries] == [e.serial for e in entries]
    assert [e.serial for e in plan.added] == [e.serial for e in added]
    assert (plan.number, plan.why) == (number, why)


# ------------------------------------------------------------------------------ next look


@pytest.mark.parametrize(
    ("ready", "retry", "due", "expected"),
    [
        (False, True, None, NOW + dt.timedelta(seconds=10)),  # waits on a Secret: retry
        (True, True, NOW + DAY, NOW + dt.timedelta(seconds=10)),  # retry wins
        (False, False, None, None),  # Stalled on its spec: only a change helps
        (True, False, None, NOW + dt.timedelta(seconds=60)),  # resync
        (True, False, NOW + DAY, NOW + dt.timedelta(seconds=60)),  # resync comes first
        (
            True,
            False,
            NOW + dt.timedelta(seconds=5),
            NOW + dt.timedelta(seconds=5 + OVERDUE_MARGIN),
        ),
        (True, False, NOW - dt.timedelta(seconds=5), NOW - dt.timedelta(seconds=5)),  # overdue
        (True, False, NOW, NOW),
    ],
)
def test_next_look(
    ready: bool, retry: bool, due: dt.datetime | None, expected: dt.datetime | None
) -> None:
    got = next_look(ready=ready, retry=retry, due=due, now=NOW, resync=60.0, retry_interval=10.0)
    assert got == expected
