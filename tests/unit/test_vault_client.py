"""nhi.vault without a server: error translation, secrets scrubbed, re-login, bounded pool.

The server itself is exercised in tests/integration/test_vault.py against a real OpenBao.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import hvac.exceptions
import pytest
import requests

from nhi.vault import (
    KubernetesLogin,
    TokenLogin,
    VaultClient,
    VaultError,
    VaultPool,
    VaultReason,
    reason_for,
    scrub,
)

pytestmark = pytest.mark.unit

TOKEN = "hvs.super-secret-token-value"
ADDRESS = "https://vault.example.org:8200"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, VaultReason.UNREACHABLE),
        (503, VaultReason.SEALED),
        (403, VaultReason.FORBIDDEN),
        (401, VaultReason.UNAUTHORIZED),
        (404, VaultReason.NOT_FOUND),
        (500, VaultReason.SERVER_ERROR),
        (502, VaultReason.SERVER_ERROR),
        (400, VaultReason.REJECTED),
    ],
)
def test_reasons_follow_the_status(status: int | None, reason: str) -> None:
    assert reason_for(status) == reason
    err = VaultError(ADDRESS, "sign with pki/sign/r", status)
    assert err.reason == reason
    assert ADDRESS in str(err)
    assert ("did not answer" in str(err)) == (status is None)
    if status is not None:
        assert f"HTTP {status}" in str(err)
    assert err.retryable == (reason not in (VaultReason.REJECTED, VaultReason.NOT_FOUND))


def test_scrub_removes_every_secret_and_bounds_the_length() -> None:
    text = f"token {TOKEN} was refused; secret id abcd-1234 too " + "x" * 500
    out = scrub(text, [TOKEN, "abcd-1234", ""])
    assert TOKEN not in out and "abcd-1234" not in out
    assert out.count("<redacted>") == 2
    assert len(out) <= 300


class FakeHvac:
    """What the client reaches through hvac: a function per call, given by the test."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.logins = 0


def client_with(login: Any, pool: VaultPool | None = None) -> tuple[VaultClient, FakeHvac]:
    client = VaultClient(ADDRESS, login, pool or VaultPool(2))
    fake = FakeHvac()
    client._hvac = fake  # the calls below are given the fake, never a network
    return client, fake


async def test_an_hvac_error_becomes_one_vault_error_without_the_token() -> None:
    client, _ = client_with(TokenLogin(TOKEN))

    def refuse(c: Any) -> Any:
        raise hvac.exceptions.Forbidden(
            errors=[f"permission denied for token {TOKEN}"], method="GET", url="/v1/x"
        )

    with pytest.raises(VaultError) as caught:
        await client._call("read pki/roles/r", refuse)
    err = caught.value
    assert err.status == 403 and err.reason == VaultReason.FORBIDDEN
    assert TOKEN not in str(err) and TOKEN not in repr(err.args)
    assert str(err) == (
        f"Vault {ADDRESS}: read pki/roles/r answered HTTP 403: "
        "permission denied for token <redacted>"
    )


@pytest.mark.parametrize(
    ("raised", "reason", "words"),
    [
        (requests.exceptions.ConnectTimeout(), VaultReason.TIMEOUT, "no answer within 10s"),
        (requests.exceptions.ConnectionError(), VaultReason.UNREACHABLE, "ConnectionError"),
        (hvac.exceptions.VaultDown(errors=["Vault is sealed"]), VaultReason.SEALED, "sealed"),
        (hvac.exceptions.InternalServerError(errors=["boom"]), VaultReason.SERVER_ERROR, "500"),
    ],
)
async def test_transport_failures_name_the_server(
    raised: Exception, reason: str, words: str
) -> None:
    client, _ = client_with(TokenLogin(TOKEN))

    def fail(c: Any) -> Any:
        raise raised

    with pytest.raises(VaultError) as caught:
        await client._call("read pki/crl/pem", fail, auth=False)
    assert caught.value.reason == reason
    assert ADDRESS in str(caught.value) and words in str(caught.value)


async def test_kubernetes_login_is_done_once_and_again_after_a_403() -> None:
    jwts: list[str] = []

    async def jwt() -> str:
        jwts.append(f"jwt-{len(jwts)}")
        return jwts[-1]

    client, fake = client_with(KubernetesLogin("nhi-operator", jwt))
    tokens = iter(["t-1", "t-2"])

    class Auth:
        class kubernetes:  # hvac's attribute name
            @staticmethod
            def login(role: str, jwt: str, mount_point: str) -> dict[str, Any]:
                fake.logins += 1
                assert (role, mount_point) == ("nhi-operator", "kubernetes")
                return {"auth": {"client_token": next(tokens), "lease_duration": 3600}}

    fake.auth = Auth  # type: ignore[attr-defined]
    seen: list[str | None] = []

    def read(c: Any) -> str:
        seen.append(c.token)
        if c.token == "t-1" and len(seen) > 1:
            raise hvac.exceptions.Forbidden(errors=["permission denied"])
        return "ok"

    assert await client._call("read", read) == "ok"
    assert await client._call("read", read) == "ok"  # 403 with t-1: logs in again, retries
    assert seen == ["t-1", "t-1", "t-2"]
    assert fake.logins == 2 and jwts == ["jwt-0", "jwt-1"]


async def test_the_pool_bounds_the_requests_in_flight() -> None:
    pool = VaultPool(limit=2)
    lock = threading.Lock()
    running = [0, 0]  # now, most

    def slow() -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    await asyncio.gather(*(pool.run(slow) for _ in range(8)))
    pool.close()
    assert running[1] == 2
