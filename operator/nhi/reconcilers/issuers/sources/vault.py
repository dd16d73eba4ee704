"""``spec.vault``: Vault or OpenBao signs, with its PKI secrets engine; the key stays here.

Each load logs in when needed (Kubernetes auth with the operator's own ServiceAccount token
or one requested for ``serviceAccountName``, AppRole, or a token from a Secret of the
issuer's home namespace), flushes revocations still waiting for the server, and reads the CA
chain, the role (its ``max_ttl``) and the CRL, which the CRL publisher mirrors. Identities
then sign through :class:`VaultSigning`: the operator makes the key pair and the CSR,
``<mount>/sign/<role>`` signs it, and the answer is checked before it is used.

A server that cannot serve makes the issuer not Ready with a reason naming the server and
the HTTP status (``backoff``: retried with the work queue's growing delay); certificates
already issued stay in place.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nhi import crypto
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventRecorder
from nhi.models.issuer import (
    Issuer,
    IssuerKey,
    IssuerReason,
    SecretKeyRef,
    VaultAppRoleAuth,
    VaultKubernetesAuth,
    VaultSource,
    VaultTokenAuth,
)
from nhi.reconcilers.issuers.signers import IssuerNotReady, RemoteCA
from nhi.reconcilers.issuers.sources.base import (
    CASourceStrategy,
    LoadRequest,
    RemoteLoaded,
    SecretWatch,
)
from nhi.reconcilers.issuers.status import MAX_RECORDED_REVOCATIONS, PENDING, IssuerOutcome
from nhi.vault import (
    AppRoleLogin,
    KubernetesLogin,
    Login,
    TokenLogin,
    VaultClient,
    VaultError,
    VaultPool,
    VaultReason,
)

log = logging.getLogger("nhi.reconcilers.issuer")

#: The operator's own ServiceAccount token (projected into its pod).
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: Seconds a token requested for ``serviceAccountName`` is valid (it is used to log in once).
REQUESTED_TOKEN_SECONDS = 600


class AuthMaterialMissing(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VaultSigning:
    """Signs CSRs with one issuer's Vault role; revokes serials on Vault's CRL."""

    def __init__(
        self,
        client: VaultClient,
        source: VaultSource,
        ca_cert: crypto.Certificate,
        pending: set[str],
    ) -> None:
        self.client = client
        self.source = source
        self.ca_cert = ca_cert
        #: Serials (hex) whose revocation Vault has not confirmed yet: sent again on each
        #: revocation and each load of the issuer until it does.
        self.pending = pending

    async def sign(
        self,
        key: crypto.PrivateKey,
        *,
        spiffe_id: str,
        dns_names: Sequence[str],
        ttl: dt.timedelta,
    ) -> tuple[crypto.Certificate, tuple[crypto.Certificate, ...]]:
        csr = crypto.build_csr(key, spiffe_id=spiffe_id, dns_names=dns_names)
        signed = await self.client.sign(
            self.source.pki_mount,
            self.source.pki_role,
            csr.decode(),
            uri_sans=[spiffe_id],
            dns_names=list(dns_names),
            ttl_seconds=max(1, int(ttl.total_seconds())),
        )
        cert = crypto.load_cert_chain(signed.certificate)[0]
        crypto.check_signed(cert, key, self.ca_cert, spiffe_id=spiffe_id, dns_names=dns_names)
        chain = crypto.load_cert_chain("\n".join(signed.chain)) if signed.chain else []
        intermediates, _ = crypto.split_chain(chain)
        return cert, intermediates

    async def revoke(self, serials: Sequence[int]) -> str:
        """Revoke ``serials`` with Vault and return its CRL (PEM); IssuerNotReady when Vault
        cannot now (they stay pending and are sent again at the issuer's next load)."""
        self.pending.update(crypto.serial_hex(s) for s in serials)
        try:
            await self.flush()
            return await self.client.crl(self.source.pki_mount)
        except VaultError as err:
            raise IssuerNotReady(
                err.reason,
                f"spec.vault: {err.message}; {len(self.pending)} revocation(s) are sent again "
                f"when the server answers",
            ) from None

    def unconfirmed(self) -> list[str]:
        return sorted(self.pending)

    async def flush(self) -> None:
        """Send the pending revocations; those Vault refused stay pending (VaultError)."""
        for serial in sorted(self.pending):
            try:
                await self.client.revoke(self.source.pki_mount, serial)
            except VaultError as err:
                if "already expired" in err.detail or "not found" in err.detail.lower():
                    # Nothing left to revoke: an expired certificate is not listed.
                    self.pending.discard(serial)
                    continue
                raise
            self.pending.discard(serial)


class _Connection:
    def __init__(self, fingerprint: str, client: VaultClient) -> None:
        self.fingerprint = fingerprint
        self.client = client
        self.signing: VaultSigning | None = None


class VaultCA(CASourceStrategy):
    field = "spec.vault"

    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        operator_namespace: str,
        secrets: SecretWatch,
        pool: VaultPool,
        *,
        token_file: Path = SERVICE_ACCOUNT_TOKEN,
    ) -> None:
        super().__init__(api, events, operator_namespace, secrets)
        self.pool = pool
        self.token_file = token_file
        self._connections: dict[IssuerKey, _Connection] = {}
        self._pending: dict[IssuerKey, set[str]] = {}  # kept across a reconnection

    def forget(self, key: IssuerKey) -> None:
        conn = self._connections.pop(key, None)
        if conn is not None:
            conn.client.close()
        self._pending.pop(key, None)

    def defer(self, key: IssuerKey, body: Mapping[str, Any], serials: Sequence[str]) -> list[str]:
        """Keep serials to revoke while the issuer cannot reach its server; they are sent at
        its next load. Returns every serial waiting, for the issuer's status."""
        pending = self._pending_of(key, body)
        pending.update(serials)
        return sorted(pending)

    def _pending_of(self, key: IssuerKey, body: Mapping[str, Any]) -> set[str]:
        pending = self._pending.get(key)
        if pending is None:
            # Revocations the server had not confirmed when the operator last ran.
            pending = self._pending[key] = recorded_revocations(body)
        return pending

    async def load(self, req: LoadRequest) -> RemoteLoaded | IssuerOutcome:
        issuer, body, current = req.issuer, req.body, req.current
        source = issuer.source
        assert isinstance(source, VaultSource)
        pending = self._pending_of(issuer.key, body)
        refs = {issuer.secret_ref(r, self.operator_namespace) for r in source.secret_refs()}
        self.secrets.track(issuer.key, refs)
        try:
            login, material = await self._login(issuer, source)
        except AuthMaterialMissing as err:
            return IssuerOutcome(
                False,
                VaultReason.AUTH_MATERIAL,
                err.message,
                stalled=True,
                retry=True,
                vault=_where(source, pending),
            )
        conn = self._connect(issuer, source, login, material)
        try:
            return await self._read(issuer, body, source, conn, current)
        except VaultError as err:
            return IssuerOutcome(
                False,
                err.reason,
                f"spec.vault: {err.message}",
                retry=True,
                backoff=err.retryable,
                stalled=not err.retryable,
                vault=_where(source, pending),
            )

    async def _read(
        self,
        issuer: Issuer,
        body: Mapping[str, Any],
        source: VaultSource,
        conn: _Connection,
        current: crypto.Certificate | None,
    ) -> RemoteLoaded | IssuerOutcome:
        client = conn.client
        pending = self._pending.setdefault(issuer.key, set())
        chain_pem = await client.ca_chain(source.pki_mount)
        try:
            chain = crypto.load_cert_chain(chain_pem)
        except crypto.CryptoError:
            chain = []
        if not chain:
            return IssuerOutcome(
                False,
                IssuerReason.CA_SECRET_INVALID,
                f"spec.vault.pki.mount: {source.address} has no CA certificate at "
                f"{source.pki_mount}/ca_chain; generate or import one in the PKI engine",
                retry=True,
                vault=_where(source, pending),
            )
        ca_cert = chain[0]
        signing = self._signing(issuer, source, conn, ca_cert)
        await signing.flush()
        role = await client.role(source.pki_mount, source.pki_role)
        crl_pem = await client.crl(source.pki_mount)
        if current is not None and crypto.fingerprint_sha256(current) != crypto.fingerprint_sha256(
            ca_cert
        ):
            await self.events.normal(
                body,
                IssuerReason.CA_CHANGED,
                f"the CA of {source.address} {source.pki_mount} changed: "
                f"{crypto.fingerprint_sha256(current)} -> {crypto.fingerprint_sha256(ca_cert)}",
            )
        intermediates, roots = crypto.split_chain(chain)
        status, note = _described(source, role, pending)
        return RemoteLoaded(
            ca=RemoteCA(ca_cert, signing),
            chain=tuple(c for c in intermediates if c is not ca_cert),
            roots=roots,
            crl_pem=crl_pem,
            vault=status,
            note=note,
        )

    def _signing(
        self, issuer: Issuer, source: VaultSource, conn: _Connection, ca_cert: crypto.Certificate
    ) -> VaultSigning:
        """The connection's signer, kept while Vault's CA stays; a new one for a new CA (with
        the serials still to revoke, kept across it)."""
        signing = conn.signing
        if signing is None or crypto.fingerprint_sha256(
            signing.ca_cert
        ) != crypto.fingerprint_sha256(ca_cert):
            signing = VaultSigning(
                conn.client, source, ca_cert, self._pending.setdefault(issuer.key, set())
            )
            conn.signing = signing
        return signing

    def _connect(
        self, issuer: Issuer, source: VaultSource, login: Login, material: str
    ) -> _Connection:
        """The issuer's client: kept while its server, CA bundle, auth and material stay."""
        fingerprint = hashlib.sha256(
            repr((source.address, source.ca_bundle, source.auth, material)).encode()
        ).hexdigest()
        conn = self._connections.get(issuer.key)
        if conn is not None and conn.fingerprint == fingerprint:
            return conn
        if conn is not None:
            conn.client.close()
        client = VaultClient(source.address, login, self.pool, ca_pem=source.ca_bundle)
        conn = _Connection(fingerprint, client)
        self._connections[issuer.key] = conn
        return conn

    async def _login(self, issuer: Issuer, source: VaultSource) -> tuple[Login, str]:
        """How to log in, and a digest of the material (a change makes a new client)."""
        auth = source.auth
        if isinstance(auth, VaultTokenAuth):
            token = await self._secret_value(issuer, auth.token, "tokenSecretRef")
            return TokenLogin(token), _digest(token)
        if isinstance(auth, VaultAppRoleAuth):
            secret_id = await self._secret_value(
                issuer, auth.secret_id, "appRole.secretIdSecretRef"
            )
            return AppRoleLogin(auth.role_id, secret_id, auth.mount), _digest(secret_id)
        assert isinstance(auth, VaultKubernetesAuth)
        kube = auth

        async def jwt() -> str:
            return await self._service_account_token(issuer, kube)

        if kube.service_account is None and not self.token_file.exists():
            raise AuthMaterialMissing(
                f"spec.vault.auth.kubernetes: the operator's ServiceAccount token "
                f"({self.token_file}) is not mounted; mount it, or set serviceAccountName to "
                f"log in with a token the operator requests"
            )
        return KubernetesLogin(kube.role, jwt, kube.mount), ""

    async def _service_account_token(self, issuer: Issuer, auth: VaultKubernetesAuth) -> str:
        if auth.service_account is None:
            # Read at each login: the kubelet rotates the projected token.
            return (await asyncio.to_thread(self.token_file.read_text)).strip()
        namespace = issuer.home_namespace(self.operator_namespace)
        # Never the API server's audience: the token is useless against Kubernetes.
        spec: dict[str, Any] = {
            "expirationSeconds": REQUESTED_TOKEN_SECONDS,
            "audiences": [auth.audience],
        }
        try:
            answer = await self.api.create(
                "ServiceAccount",
                namespace,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                name=auth.service_account,
                subresource="token",
            )
        except ApiError as err:
            raise VaultError(
                issuer_address(issuer),
                f"login (a token for ServiceAccount {namespace}/{auth.service_account})",
                None,
                f"the TokenRequest answered HTTP {err.status}",
                reason=VaultReason.AUTH_MATERIAL,
            ) from None
        return str(answer["status"]["token"])

    async def _secret_value(self, issuer: Issuer, ref: SecretKeyRef, field: str) -> str:
        """The value at ``ref`` (a Secret of the issuer's home namespace, for an
        IdentityIssuer: the model refuses any other)."""
        namespace, name = issuer.secret_ref(ref, self.operator_namespace)
        key = ref.key
        where = f"spec.vault.auth.{field}: Secret {namespace}/{name}"
        secret = await self.api.get("Secret", namespace, name)
        if secret is None:
            raise AuthMaterialMissing(f"{where} was not found")
        raw = (secret.get("data") or {}).get(key)
        if not raw:
            raise AuthMaterialMissing(f"{where} has no key {key}")
        try:
            value = base64.b64decode(raw).decode().strip()
        except (ValueError, UnicodeDecodeError):
            raise AuthMaterialMissing(f"{where}: key {key} is not UTF-8 text") from None
        if not value:
            raise AuthMaterialMissing(f"{where}: key {key} is empty")
        return value


def issuer_address(issuer: Issuer) -> str:
    source = issuer.source
    return source.address if isinstance(source, VaultSource) else ""


def _where(source: VaultSource, pending: set[str]) -> dict[str, Any]:
    """status.vault before anything is known of the role: the server, its CRL, and the
    revocations it has not confirmed yet (kept there so that a restart sends them again)."""
    status: dict[str, Any] = {"address": source.address, "crlURL": source.crl_url}
    if pending:
        status[PENDING] = sorted(pending)[:MAX_RECORDED_REVOCATIONS]
    return status


def recorded_revocations(body: Mapping[str, Any]) -> set[str]:
    """The serials ``status.vault.pendingRevocations`` of an issuer lists (anything else in
    that list is ignored: the status is the operator's, but it is read with care)."""
    vault = (body.get("status") or {}).get("vault")
    listed = vault.get(PENDING) if isinstance(vault, Mapping) else None
    serials: set[str] = set()
    for item in listed[:MAX_RECORDED_REVOCATIONS] if isinstance(listed, list) else []:
        try:
            serials.add(crypto.serial_hex(crypto.parse_serial_hex(item)))
        except crypto.CryptoError:
            continue
    return serials


def _described(
    source: VaultSource, role: Mapping[str, Any], pending: set[str]
) -> tuple[dict[str, Any], str]:
    """status.vault once the role is read, and the note of how the issuer signs (the role's
    cap on a certificate's lifetime, if any)."""
    status = _where(source, pending)
    note = f"signed by {source.address} {source.pki_mount}/sign/{source.pki_role}"
    max_ttl = _seconds(role.get("max_ttl"))
    if max_ttl:
        status["maxTTL"] = f"{max_ttl}s"
        note = (
            f"{note}; the role caps certificates at {max_ttl}s (a credential asking for a "
            f"longer ttl gets {max_ttl}s)"
        )
    return status, note


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _seconds(value: Any) -> int:
    """A role's ``max_ttl`` in seconds (Vault answers a number; 0: the mount's default)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
