"""Revocations a Vault server has not confirmed: kept, recorded in the issuer's status, read
back after a restart, and removed from the status once confirmed."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nhi.crypto import serial_hex
from nhi.models.issuer import SecretKeyRef, VaultSource, VaultTokenAuth
from nhi.reconcilers.issuers.sources.vault import VaultSigning, recorded_revocations
from nhi.reconcilers.issuers.status import (
    MAX_RECORDED_REVOCATIONS,
    IssuerOutcome,
    compute_status,
)
from nhi.vault import VaultError

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
ADDRESS = "https://vault.example.org:8200"
SOURCE = VaultSource(
    address=ADDRESS, pki_role="nhi", auth=VaultTokenAuth(SecretKeyRef("vault-token", "token"))
)


class FakeClient:
    """Answers revoke like a server that is down, then up (``down`` toggles it)."""

    def __init__(self) -> None:
        self.down = True
        self.revoked: list[str] = []

    async def revoke(self, mount: str, serial: str) -> None:
        if self.down:
            raise VaultError(ADDRESS, "revoke", 503, "Vault is sealed")
        self.revoked.append(serial)

    async def crl(self, mount: str) -> str:
        return "CRL"


def _signing(client: FakeClient, pending: set[str]) -> VaultSigning:
    return VaultSigning(client, SOURCE, ca_cert=None, pending=pending)  # type: ignore[arg-type]


def test_a_refused_revocation_stays_unconfirmed_until_the_server_takes_it() -> None:
    from nhi.reconcilers.issuers.signers import IssuerNotReady

    client, pending = FakeClient(), set[str]()
    signing = _signing(client, pending)
    with pytest.raises(IssuerNotReady) as err:
        asyncio.run(signing.revoke([0x5F3A07, 0x10]))
    assert err.value.reason == "VaultSealed"
    assert signing.unconfirmed() == ["10", "5f:3a:07"]
    client.down = False
    assert asyncio.run(signing.revoke([])) == "CRL"
    assert sorted(client.revoked) == ["10", "5f:3a:07"]
    assert signing.unconfirmed() == [] and pending == set()


def _status(vault: dict[str, Any] | None, old: dict[str, Any]) -> dict[str, Any]:
    outcome = IssuerOutcome(True, "CAReady", "ready", vault=vault)
    return compute_status(old, 1, outcome, NOW)


def test_unconfirmed_revocations_are_written_then_removed_once_confirmed() -> None:
    where = {"address": ADDRESS, "crlURL": f"{ADDRESS}/v1/pki/crl"}
    written = _status({**where, "pendingRevocations": ["10"]}, {})
    assert written["vault"]["pendingRevocations"] == ["10"]
    # Confirmed: the outcome no longer names the list, and the merge patch removes it.
    confirmed = _status(dict(where), {"vault": written["vault"]})
    assert confirmed["vault"] == {**where, "pendingRevocations": None}
    # Once removed, nothing is left to patch.
    again = _status(dict(where), {"vault": dict(where)})
    assert again["vault"] == where


def test_a_source_that_is_no_longer_vault_removes_status_vault() -> None:
    assert _status(None, {"vault": {"address": ADDRESS}})["vault"] is None


def test_recorded_revocations_are_read_back() -> None:
    body = {"status": {"vault": {"pendingRevocations": ["10", "5f:3a:07"]}}}
    assert recorded_revocations(body) == {"10", "5f:3a:07"}
    # Read back in the form the operator writes, whatever the case or separators.
    body = {"status": {"vault": {"pendingRevocations": ["5F:3A:07", "1", "5f3a07"]}}}
    assert recorded_revocations(body) == {"5f:3a:07", "01"}


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"vault": None},
        {"vault": "x"},
        {"vault": {"pendingRevocations": "10"}},
        {"vault": {"pendingRevocations": [10, None, {"a": 1}, "ZZ", "10; rm -rf", ""]}},
    ],
)
def test_anything_but_serials_is_ignored(status: dict[str, Any]) -> None:
    assert recorded_revocations({"status": status}) == set()


def test_at_most_the_recorded_limit_is_read() -> None:
    listed = [serial_hex(i) for i in range(1, MAX_RECORDED_REVOCATIONS + 50)]
    body = {"status": {"vault": {"pendingRevocations": listed}}}
    assert len(recorded_revocations(body)) == MAX_RECORDED_REVOCATIONS


@given(st.integers(min_value=1, max_value=2**159))
def test_every_serial_the_operator_writes_is_read_back(serial: int) -> None:
    hexed = serial_hex(serial)
    assert recorded_revocations({"status": {"vault": {"pendingRevocations": [hexed]}}}) == {hexed}


def test_what_else_status_vault_held_is_kept_while_the_server_is_down() -> None:
    where = {"address": ADDRESS, "crlURL": f"{ADDRESS}/v1/pki/crl"}
    old = {"vault": {**where, "maxTTL": "259200s"}}
    assert _status(dict(where), old)["vault"] == where  # the merge patch keeps maxTTL
