"""Revoker: the order of Vault's part of a revocation or deletion (the workload's access
before the copies it could read), and what one refused step does to the other."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest

from nhi.reconcilers.identity_revocation import Revoker
from nhi.vault import VaultError, VaultReason
from tests.unit.factories import make_body, make_identity

pytestmark = pytest.mark.unit

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class Batch:
    def __init__(self) -> None:
        self.events: list[str] = []

    def normal(self, reason: str, message: str) -> None:
        self.events.append(message)


def refused(reason: str) -> VaultError:
    return VaultError("https://vault.example:8200", "delete", None, reason=reason)


def revoker(steps: list[str], fail: dict[str, VaultError] | None = None) -> Revoker:
    """A Revoker with no Kubernetes children whose two Vault steps record their order and
    raise what ``fail`` names for them."""
    fail = fail or {}
    r = Revoker(
        children_of=lambda namespace, name: {},
        events=cast(Any, None),
        issuers=cast(Any, None),
        writer=cast(Any, None),
        clock=lambda: T0,
        access=cast(Any, object()),
        kv=cast(Any, object()),
    )

    async def remove_access(identity: Any, account_uid: str) -> list[str]:
        steps.append("access")
        if "access" in fail:
            raise fail["access"]
        return ["role auth/kubernetes/role/nhi.ns.app", "policy nhi.ns.app"]

    async def destroy_kv(identity: Any, revoked: Any = None) -> list[str]:
        steps.append("kv")
        if "kv" in fail:
            raise fail["kv"]
        return ["secret/data/nhi/ns/app/key"]

    r.remove_access = remove_access  # type: ignore[method-assign]
    r.destroy_kv = destroy_kv  # type: ignore[method-assign]
    return r


async def test_a_revocation_removes_the_access_before_the_copies() -> None:
    steps: list[str] = []
    batch = Batch()
    taken, waiting = await revoker(steps).take_away(
        make_identity(), "Manual", "2030-01-01T12:00:00Z", cast(Any, batch)
    )
    assert steps == ["access", "kv"]
    assert waiting is None and taken == []
    assert batch.events == [
        "removed Vault role auth/kubernetes/role/nhi.ns.app (Manual)",
        "removed Vault policy nhi.ns.app (Manual)",
        "destroyed Vault KV secret/data/nhi/ns/app/key (Manual)",
    ]


@pytest.mark.parametrize("step", ["access", "kv"])
async def test_a_revocation_whose_vault_part_fails_says_it_waits(step: str) -> None:
    steps: list[str] = []
    err = refused(VaultReason.SEALED)
    _taken, waiting = await revoker(steps, {step: err}).take_away(
        make_identity(), "Manual", "2030-01-01T12:00:00Z", cast(Any, Batch())
    )
    assert waiting == err.message
    # The access failing keeps the copies for the next try (they are destroyed after it).
    assert steps == (["access"] if step == "access" else ["access", "kv"])


async def test_a_deletion_removes_the_access_before_the_copies() -> None:
    steps: list[str] = []
    removed = await revoker(steps).cleanup(make_body())
    assert steps == ["access", "kv"]
    assert removed == [
        "vault:role auth/kubernetes/role/nhi.ns.app",
        "vault:policy nhi.ns.app",
        "vault:secret/data/nhi/ns/app/key",
    ]


@pytest.mark.parametrize("step", ["access", "kv"])
async def test_a_deletion_step_refused_for_good_does_not_keep_the_other(step: str) -> None:
    steps: list[str] = []
    removed = await revoker(steps, {step: refused(VaultReason.REJECTED)}).cleanup(make_body())
    assert steps == ["access", "kv"]
    assert ("vault:policy nhi.ns.app" in removed) == (step == "kv")
    assert ("vault:secret/data/nhi/ns/app/key" in removed) == (step == "access")


@pytest.mark.parametrize("step", ["access", "kv"])
async def test_a_deletion_step_the_server_cannot_take_now_is_tried_again(step: str) -> None:
    steps: list[str] = []
    with pytest.raises(VaultError):
        await revoker(steps, {step: refused(VaultReason.SEALED)}).cleanup(make_body())
    assert steps == (["access"] if step == "access" else ["access", "kv"])
