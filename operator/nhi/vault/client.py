"""A small asynchronous client of Vault/OpenBao over hvac (the only module importing hvac).

hvac is synchronous: every call runs on a thread of the :class:`VaultPool`'s own executor,
behind its semaphore, so a slow Vault never takes the event loop or the threads other work
uses, and never more than ``limit`` requests are in flight. Every failure becomes one
:class:`~nhi.vault.errors.VaultError` naming the server, the operation and the HTTP status;
secrets are scrubbed from its message.

A client logs in (Kubernetes auth, AppRole, or a given token) on its first call and again
when its token is two thirds through its lease or the server says it is no longer valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from nhi.vault.errors import VaultError, VaultReason, scrub

T = TypeVar("T")

#: Seconds one request may take before the server counts as unreachable.
DEFAULT_TIMEOUT = 10.0
#: Requests in flight to all Vault servers at once.
DEFAULT_LIMIT = 8

_STATUS = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.PreconditionFailed: 412,
    hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}


@dataclass(frozen=True)
class KubernetesLogin:
    """Kubernetes auth: ``jwt`` returns a ServiceAccount token to log in with."""

    role: str
    jwt: Callable[[], Awaitable[str]] = field(repr=False)
    mount: str = "kubernetes"


@dataclass(frozen=True)
class AppRoleLogin:
    role_id: str
    secret_id: str = field(repr=False)
    mount: str = "approle"


@dataclass(frozen=True)
class TokenLogin:
    token: str = field(repr=False)


Login = KubernetesLogin | AppRoleLogin | TokenLogin


@dataclass(frozen=True)
class SignedCertificate:
    certificate: str  # PEM
    chain: tuple[str, ...]  # PEM, the issuing CA first
    serial: str  # as Vault writes it: hex bytes separated by ':'


class VaultPool:
    """The threads and the semaphore every Vault client of the process shares."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="nhi-vault")
        self._semaphore: asyncio.Semaphore | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class VaultClient:
    """One server, one identity (its login); safe to share between tasks."""

    def __init__(
        self,
        address: str,
        login: Login,
        pool: VaultPool,
        *,
        ca_pem: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address.rstrip("/")
        self.login_method = login
        self.pool = pool
        self.timeout = timeout
        self._monotonic = monotonic
        self._ca_file: str | None = None
        verify: bool | str = True
        if ca_pem:
            fd, self._ca_file = tempfile.mkstemp(prefix="nhi-vault-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as f:
                f.write(ca_pem)
            verify = self._ca_file
        self._hvac = hvac.Client(url=self.address, verify=verify, timeout=timeout)
        self._token_until: float | None = None  # monotonic time to log in again; None: never
        self._logged_in = False
        self._login_lock = asyncio.Lock()
        self._secrets: set[str] = set()
        if isinstance(login, AppRoleLogin):
            self._secrets.add(login.secret_id)
        if isinstance(login, TokenLogin):
            self._secrets.add(login.token)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._hvac.adapter.close()
        if self._ca_file:
            with contextlib.suppress(OSError):
                Path(self._ca_file).unlink()
            self._ca_file = None

    # ------------------------------------------------------------------ calls

    async def _call(self, operation: str, fn: Callable[[hvac.Client], T], auth: bool = True) -> T:
        if auth:
            await self._ensure_login()
        try:
            return await self.pool.run(lambda: self._translate(operation, fn))
        except VaultError as err:
            if (
                not auth
                or err.status not in (401, 403)
                or isinstance(self.login_method, TokenLogin)
            ):
                raise
        # The token may have expired or been revoked: log in again, once.
        self._logged_in = False
        await self._ensure_login()
        return await self.pool.run(lambda: self._translate(operation, fn))

    def _translate(self, operation: str, fn: Callable[[hvac.Client], T]) -> T:
        """Run ``fn`` on this thread; any failure as a VaultError without secrets."""
        try:
            return fn(self._hvac)
        except hvac.exceptions.VaultError as err:
            status = next((s for cls, s in _STATUS.items() if isinstance(err, cls)), None)
            errors = err.errors if isinstance(err.errors, list) else [str(err.args[0] or "")]
            detail = scrub("; ".join(str(e) for e in errors if e), self._secrets)
            reason = None if status is not None else VaultReason.SERVER_ERROR
            raise VaultError(self.address, operation, status, detail, reason=reason) from None
        except requests.exceptions.Timeout:
            raise VaultError(
                self.address,
                operation,
                None,
                f"no answer within {self.timeout:g}s",
                reason=VaultReason.TIMEOUT,
            ) from None
        except requests.exceptions.SSLError as err:
            raise VaultError(
                self.address, operation, None, f"TLS: {scrub(str(err), self._secrets, 200)}"
            ) from None
        except requests.exceptions.RequestException as err:
            raise VaultError(
                self.address, operation, None, scrub(type(err).__name__, self._secrets)
            ) from None

    async def _ensure_login(self) -> None:
        async with self._login_lock:
            if self._logged_in and (
                self._token_until is None or self._monotonic() < self._token_until
            ):
                return
            method = self.login_method
            if isinstance(method, TokenLogin):
                self._hvac.token = method.token
                self._logged_in, self._token_until = True, None
                return
            if isinstance(method, KubernetesLogin):
                jwt = await method.jwt()
                self._secrets.add(jwt)

                def login(c: hvac.Client) -> Any:
                    return c.auth.kubernetes.login(method.role, jwt, mount_point=method.mount)

                answer = await self.pool.run(lambda: self._translate("login (kubernetes)", login))
            else:
                approle = method

                def login(c: hvac.Client) -> Any:
                    return c.auth.approle.login(
                        approle.role_id, approle.secret_id, mount_point=approle.mount
                    )

                answer = await self.pool.run(lambda: self._translate("login (approle)", login))
            auth = (answer or {}).get("auth") or {}
            token = str(auth.get("client_token") or "")
            if not token:
                raise VaultError(self.address, "login", 200, "the answer held no token")
            self._secrets.add(token)
            self._hvac.token = token
            lease = float(auth.get("lease_duration") or 0)
            self._token_until = self._monotonic() + lease * 2 / 3 if lease > 0 else None
            self._logged_in = True

    # ------------------------------------------------------------------ PKI

    async def sign(
        self,
        mount: str,
        role: str,
        csr_pem: str,
        *,
        uri_sans: list[str],
        dns_names: list[str],
        ttl_seconds: int,
    ) -> SignedCertificate:
        """``<mount>/sign/<role>``: Vault signs the CSR; the key never leaves the operator."""
        params: dict[str, Any] = {"ttl": f"{ttl_seconds}s", "format": "pem"}
        if uri_sans:
            params["uri_sans"] = ",".join(uri_sans)
        if dns_names:
            params["alt_names"] = ",".join(dns_names)
        answer = await self._call(
            f"sign with {mount}/sign/{role}",
            lambda c: c.secrets.pki.sign_certificate(
                role, csr_pem, "", extra_params=params, mount_point=mount
            ),
        )
        data = answer.get("data") or {}
        chain = data.get("ca_chain") or [data.get("issuing_ca") or ""]
        return SignedCertificate(
            certificate=str(data.get("certificate") or ""),
            chain=tuple(str(c) for c in chain if c),
            serial=str(data.get("serial_number") or ""),
        )

    async def revoke(self, mount: str, serial: str) -> None:
        """``<mount>/revoke``: the serial (hex, ':'-separated) goes on Vault's CRL."""
        await self._call(
            f"revoke with {mount}/revoke",
            lambda c: c.secrets.pki.revoke_certificate(serial, mount_point=mount),
        )

    async def ca_chain(self, mount: str) -> str:
        """The issuing CA and its chain in PEM (unauthenticated)."""
        text = await self._call(
            f"read {mount}/ca_chain",
            lambda c: c.secrets.pki.read_ca_certificate_chain(mount_point=mount),
            auth=False,
        )
        if not text.strip():
            text = await self._call(
                f"read {mount}/ca/pem",
                lambda c: str(c.adapter.get(f"/v1/{mount}/ca/pem").text),
                auth=False,
            )
        return str(text)

    async def crl(self, mount: str) -> str:
        """Vault's CRL of the mount in PEM (unauthenticated)."""
        text = await self._call(
            f"read {mount}/crl/pem",
            lambda c: c.secrets.pki.read_crl(mount_point=mount),
            auth=False,
        )
        return str(text)

    async def role(self, mount: str, role: str) -> Mapping[str, Any]:
        """The PKI role's settings (``max_ttl`` in seconds...)."""
        answer = await self._call(
            f"read {mount}/roles/{role}",
            lambda c: c.secrets.pki.read_role(role, mount_point=mount),
        )
        return dict(answer.get("data") or {})

    # ------------------------------------------------------------------ any endpoint

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """``method`` on ``/v1/<path>``: the JSON answer ({} without one); None for a 404."""

        def call(c: hvac.Client) -> Any:
            return c.adapter.request(method, f"/v1/{path}", json=dict(body) if body else None)

        try:
            answer = await self._call(f"{method.lower()} {path}", call)
        except VaultError as err:
            if err.status == 404:
                return None
            raise
        return dict(answer) if isinstance(answer, Mapping) else {}

    # ------------------------------------------------------------------ KV v2

    async def kv_write(
        self, mount: str, path: str, data: Mapping[str, str], metadata: Mapping[str, str]
    ) -> int:
        """A new version at ``path`` and its custom metadata; returns the version."""
        version = await self.kv_put(mount, path, data)
        await self.kv_set_metadata(mount, path, metadata)
        return version

    async def kv_put(
        self, mount: str, path: str, data: Mapping[str, str], *, cas: int | None = None
    ) -> int:
        """A new version at ``path``; returns its number. ``cas=0``: only if the path holds
        no version yet (a VaultError with status 400 otherwise)."""
        answer = await self._call(
            f"write {mount}/data/{path}",
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                path, dict(data), cas=cas, mount_point=mount
            ),
        )
        return int((answer.get("data") or {}).get("version") or 0)

    async def kv_set_metadata(self, mount: str, path: str, metadata: Mapping[str, str]) -> None:
        """The custom metadata of ``path`` (it replaces what was there)."""
        await self._call(
            f"write {mount}/metadata/{path}",
            lambda c: c.secrets.kv.v2.update_metadata(
                path, custom_metadata=dict(metadata), mount_point=mount
            ),
        )

    async def kv_read(
        self, mount: str, path: str, version: int | None = None
    ) -> tuple[dict[str, str], dict[str, Any]] | None:
        """(data, metadata of the version) at ``path``, or None when there is none."""
        try:
            answer = await self._call(
                f"read {mount}/data/{path}",
                lambda c: c.secrets.kv.v2.read_secret_version(
                    path, version=version, mount_point=mount, raise_on_deleted_version=True
                ),
            )
        except VaultError as err:
            if err.status == 404:
                return None
            raise
        body = answer.get("data") or {}
        return dict(body.get("data") or {}), dict(body.get("metadata") or {})

    async def kv_metadata(self, mount: str, path: str) -> dict[str, Any] | None:
        """The metadata at ``path`` (versions, custom_metadata), or None when there is none."""
        try:
            answer = await self._call(
                f"read {mount}/metadata/{path}",
                lambda c: c.secrets.kv.v2.read_secret_metadata(path, mount_point=mount),
            )
        except VaultError as err:
            if err.status == 404:
                return None
            raise
        return dict((answer or {}).get("data") or {})

    async def kv_destroy(self, mount: str, path: str) -> None:
        """Every version and the metadata at ``path`` gone (nothing there is fine)."""
        try:
            await self._call(
                f"delete {mount}/metadata/{path}",
                lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(path, mount_point=mount),
            )
        except VaultError as err:
            if err.status != 404:
                raise
