"""Revoking a MachineIdentity: every credential and permission taken away, the record kept.

Runs when revocation rules say so (nhi.policies.revocation: workloads gone, JIT window over,
the nhi.dev/revoke annotation) and when the identity is deleted (its finalizer's clean-up).
Only objects the identity owns are touched; an adopted ServiceAccount is given back.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nhi import metrics
from nhi.builders.rbac import ChildKey
from nhi.crypto import (
    CryptoError,
    load_cert_chain,
    parse_serial_hex,
    serial_hex,
    spiffe_id,
    spiffe_id_of,
    trust_domain_of,
)
from nhi.k8s.client import ApiError
from nhi.k8s.events import EventBatch, EventRecorder
from nhi.models.duration import parse_time, rfc3339
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import A_FINGERPRINT, A_ISSUER, A_SERIAL
from nhi.models.meta import CREDENTIAL_LABEL, REVOKE_ANNOTATION, Phase
from nhi.policies.revocation import (
    EXPIRED,
    IDENTITY_DELETED,
    MANUAL,
    REVOKED_PHASES,
    WORKLOAD_DELETED,
)
from nhi.reconcilers.identity_plan import Outcome, event_ref, owned_children
from nhi.reconcilers.issuers import IssuerNotReady, IssuerService
from nhi.reconcilers.owned import OwnedWriter
from nhi.reconcilers.vault_access import VaultAccess
from nhi.reconcilers.vault_storage import KVStore
from nhi.vault import VaultError, VaultReason

log = logging.getLogger("nhi.reconcilers.identity")

#: How soon a revoked identity's Vault clean-up (KV copies, role and policy) is tried again
#: while its server cannot serve.
VAULT_RETRY = dt.timedelta(seconds=30)
#: Issuer reasons that mean its Vault server cannot serve now (see waits_for_vault).
VAULT_TRANSIENT = frozenset(
    {
        VaultReason.UNREACHABLE,
        VaultReason.TIMEOUT,
        VaultReason.SEALED,
        VaultReason.SERVER_ERROR,
        VaultReason.FORBIDDEN,
        VaultReason.UNAUTHORIZED,
    }
)

#: Tokens and bindings go first on revocation: they are what an attacker could use right now.
REVOKE_ORDER = {
    "Secret": 0,
    "RoleBinding": 1,
    "ClusterRoleBinding": 1,
    "Role": 2,
    "ClusterRole": 2,
    "ServiceAccount": 3,
}
REVOCATION_MESSAGES = {
    MANUAL: f"revoked by the {REVOKE_ANNOTATION} annotation",
    EXPIRED: "the lifetime.validFor window ended",
    WORKLOAD_DELETED: "no matching workload for spec.revocation.gracePeriod",
}

Children = Callable[[str, str], dict[ChildKey, dict[str, Any]]]


class Revoker:
    def __init__(
        self,
        children_of: Children,
        events: EventRecorder,
        issuers: IssuerService,
        writer: OwnedWriter,
        clock: Callable[[], dt.datetime],
        access: VaultAccess | None = None,
        kv: KVStore | None = None,
    ) -> None:
        self.children_of = children_of
        self.events = events
        self.issuers = issuers
        self.writer = writer
        self.clock = clock
        self.kv = kv or KVStore(issuers)
        self.access = access or VaultAccess(issuers)

    def owned(self, identity: MachineIdentity) -> dict[ChildKey, Mapping[str, Any]]:
        children = self.children_of(identity.namespace, identity.name)
        return owned_children(children, identity.uid, identity.namespace, identity.name)

    async def revoke(self, identity: MachineIdentity, reason: str, now: dt.datetime) -> Outcome:
        """Take every credential and permission away; keep the MachineIdentity as the record."""
        status = identity.status
        phase = Phase.EXPIRED if reason == EXPIRED else Phase.REVOKED
        first = status.get("phase") not in REVOKED_PHASES
        revoked_at = rfc3339(now) if first else status.get("revokedAt") or rfc3339(now)
        revoked = list(status.get("revoked") or [])
        batch = EventBatch(self.events, event_ref(identity))
        waiting: str | None = None
        try:
            taken, waiting = await self.take_away(identity, reason, revoked_at, batch)
            revoked += taken
            if first:
                metrics.revocations.labels(reason).inc()
                if reason == WORKLOAD_DELETED:
                    metrics.time_to_revoke.observe(_since_gone(status, now))
                batch.warning(
                    phase, f"identity revoked ({reason}): credentials and permissions removed"
                )
                log.info(
                    "revoked identity",
                    extra={"namespace": identity.namespace, "identity": identity.name,
                           "reason": reason},
                )  # fmt: skip
        finally:
            batch.flush()
        metrics.forget_identity(identity.namespace, identity.name)
        message = REVOCATION_MESSAGES.get(reason, reason)
        if waiting:
            message = f"{message}; Vault clean-up is tried again: {waiting}"
        return Outcome(
            False,
            phase,
            message,
            settled=True,
            phase=phase,
            next_check=now + VAULT_RETRY if waiting else None,
            extra={
                "revokedAt": revoked_at,
                "revocationReason": reason,
                "revoked": revoked[-1000:],
                "credentials": [],
                "nextRenewalTime": None,
            },
        )

    async def take_away(
        self, identity: MachineIdentity, reason: str, revoked_at: str, batch: EventBatch
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Remove every object the identity owns, tokens and bindings first (what an attacker
        could use right now), then its Vault access and copies. Returns the revoked
        credentials, for the record, and why Vault's part waits (None when it is done)."""
        children = self.owned(identity)
        revoked = []
        account = _service_account_uid(children)
        for key in sorted(children, key=lambda k: (REVOKE_ORDER.get(k.kind, 9), k.name)):
            obj = children[key]
            if key.kind == "Secret":
                entry = await self._revoke_secret(identity, obj, revoked_at)
                if entry is not None:
                    revoked.append(entry)
            verb = await self.writer.remove(identity.uid, key, obj)
            if verb:
                batch.normal("Revoked", f"{verb.lower()} {key} ({reason})")
        try:
            # The workload's Vault access first (no new login, its tokens stop working),
            # then the copies it could read.
            for what in await self.remove_access(identity, account):
                batch.normal("Revoked", f"removed Vault {what} ({reason})")
            for path in await self.destroy_kv(identity, revoked):
                batch.normal("Revoked", f"destroyed Vault KV {path} ({reason})")
        except (VaultError, IssuerNotReady) as err:
            # Kubernetes' part is done; Vault's is tried again (VAULT_RETRY) until it is.
            log.warning(
                "Vault clean-up of a revoked identity waits",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "error": err.message},
            )  # fmt: skip
            return revoked, err.message
        return revoked, None

    async def remove_access(self, identity: MachineIdentity, account_uid: str) -> list[str]:
        """The workload's Vault role, policy and entity (spec.vault.access); a VaultError is
        raised so the revocation or clean-up runs again."""
        try:
            return await self.access.remove(identity, account_uid)
        except IssuerNotReady as err:
            if waits_for_vault(err):
                raise
            log.warning(
                "could not remove Vault access",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "error": err.message},
            )  # fmt: skip
            return []

    async def destroy_kv(
        self, identity: MachineIdentity, revoked: list[dict[str, Any]] | None = None
    ) -> list[str]:
        """Destroy every version and the metadata of the identity's KV copies (after its
        Secrets are gone: a Vault that cannot now does not delay that). A VaultError is
        raised, so the revocation or clean-up runs again; paths already gone are skipped.
        ``revoked`` gets the record of each credential kept in Vault only."""
        destroyed = []
        for cred in identity.spec.credentials:
            if cred.kv is None:
                continue
            try:
                if cred.kv.vault_only:
                    # No Secret recorded it: the copy's metadata says what to put on the CRL.
                    await self._revoke_vault_only(identity, cred, revoked)
                path = await self.kv.destroy(identity, cred)
            except IssuerNotReady as err:
                if waits_for_vault(err):
                    raise
                log.warning(
                    "could not destroy a credential in Vault",
                    extra={"namespace": identity.namespace, "identity": identity.name,
                           "credential": cred.name, "error": err.message},
                )  # fmt: skip
                continue
            if path:
                destroyed.append(path)
        return destroyed

    async def _revoke_vault_only(
        self, identity: MachineIdentity, cred: Credential, revoked: list[dict[str, Any]] | None
    ) -> None:
        issued = await self.kv.state(identity, cred)
        if issued is None:
            return
        now = self.clock()
        entry: dict[str, Any] = {"credential": cred.name, "revokedAt": rfc3339(now)}
        if issued.fingerprint:
            entry["fingerprint"] = issued.fingerprint
        if issued.serial and issued.issuer:
            entry["serialNumber"] = issued.serial
            await self._add_to_crl(identity, issued.issuer, issued.serial, now)
        if revoked is not None:
            revoked.append(entry)

    async def _revoke_secret(
        self, identity: MachineIdentity, obj: Mapping[str, Any], revoked_at: str
    ) -> dict[str, Any] | None:
        """Record a credential Secret's value as revoked; X509 serials go on the CRL."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        cred = labels.get(CREDENTIAL_LABEL)
        if not cred:
            return None
        entry: dict[str, Any] = {"credential": cred, "revokedAt": revoked_at}
        if ann.get(A_FINGERPRINT):
            entry["fingerprint"] = ann[A_FINGERPRINT]
        issuer = ann.get(A_ISSUER)
        if not (ann.get(A_SERIAL) and issuer):
            return entry
        # The serial is the certificate's, not the annotation's (nor the status', made from
        # it): whoever may edit the Secret could name another identity's certificate there.
        serial = await self._held_serial(identity, obj)
        if serial:
            entry["serialNumber"] = serial
            await self._add_to_crl(identity, issuer, serial, parse_time(revoked_at))
        return entry

    async def _held_serial(self, identity: MachineIdentity, obj: Mapping[str, Any]) -> str | None:
        """The serial of the certificate the credential Secret holds, if it is this
        identity's: its SPIFFE ID names the identity's namespace and ServiceAccount."""
        meta = obj.get("metadata") or {}
        secret = await self.writer.api.get("Secret", identity.namespace, str(meta.get("name")))
        if secret is None or (secret.get("metadata") or {}).get("uid") != meta.get("uid"):
            return None
        pem = (secret.get("data") or {}).get("tls.crt")
        if not pem:
            return None
        try:
            leaf = load_cert_chain(base64.b64decode(pem).decode())[0]
            held = spiffe_id_of(leaf) or ""
            own = held == spiffe_id(
                trust_domain_of(held), identity.namespace, identity.spec.service_account
            )
        except (CryptoError, ValueError, IndexError):
            own = False
        if not own:
            log.warning(
                "left a certificate that is not the identity's off the CRL",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "secret_name": meta.get("name")},
            )  # fmt: skip
            return None
        return serial_hex(leaf)

    async def _add_to_crl(
        self, identity: MachineIdentity, issuer: str, serial: str, when: dt.datetime
    ) -> None:
        kind, _, name = issuer.partition("/")
        number = parse_serial_hex(serial)
        try:
            signer = await self.issuers.signer(kind, name, identity.namespace)
            await self.issuers.revoke(signer, [(number, when)])
        except IssuerNotReady as err:
            # A Vault issuer whose server cannot now keeps the serial (in its status too)
            # and sends it when the server answers again.
            kept = await self.issuers.revoke_later(kind, name, identity.namespace, [number])
            log.warning(
                "kept a serial to revoke when the issuer's server answers"
                if kept
                else "could not add a serial to the CRL",
                extra={
                    "namespace": identity.namespace,
                    "identity": identity.name,
                    "issuer": issuer,
                    "serial": serial,
                    "error": err.message,
                },
            )

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        """Remove every object the identity created, cluster-scoped ones included."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        removed = []
        uid = str(meta.get("uid") or "")
        children = owned_children(self.children_of(namespace, name), uid, namespace, name)
        try:
            identity: MachineIdentity | None = MachineIdentity.from_body(body)
        except ValueError:
            identity = None  # an invalid spec: its objects go all the same
        if identity is not None and (body.get("status") or {}).get("phase") not in REVOKED_PHASES:
            revoked_at = rfc3339(self.clock())
            for key, obj in children.items():
                if key.kind == "Secret":
                    try:
                        await self._revoke_secret(identity, obj, revoked_at)
                    except ApiError:
                        raise  # transient: the clean-up is tried again
                    except Exception as err:
                        # Trying again would fail again and keep the identity (and its
                        # namespace) from ever being deleted: say so, and go on.
                        log.error(
                            "could not record a credential as revoked",
                            extra={
                                "namespace": namespace,
                                "identity": name,
                                "secret_name": key.name,
                                "error": repr(err),
                            },
                        )
            metrics.revocations.labels(IDENTITY_DELETED).inc()
        for key in sorted(children):
            if await self.writer.remove(uid, key, children[key]):
                removed.append(str(key))
        if identity is not None:
            account = _service_account_uid(children)
            # Access first, then the copies; one refused for good does not keep the other.
            removed += await self._vault_step(identity, self.remove_access(identity, account))
            removed += await self._vault_step(identity, self.destroy_kv(identity))
        metrics.forget_identity(namespace, name)
        return removed

    async def _vault_step(self, identity: MachineIdentity, step: Awaitable[list[str]]) -> list[str]:
        """One step of a deleted identity's Vault clean-up: what it removed. A server that
        cannot now raises (IssuerNotReady, a retryable VaultError: the clean-up is tried
        again); a refusal for good is logged."""
        try:
            return [f"vault:{what}" for what in await step]
        except VaultError as err:
            if err.retryable:
                raise  # transient: the clean-up is tried again
            log.error(
                "could not remove an identity's Vault copies or access",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "error": err.message},
            )  # fmt: skip
            return []


def waits_for_vault(err: IssuerNotReady) -> bool:
    """Whether the issuer cannot serve because its Vault server cannot now (unreachable,
    sealed, failing, refusing the operator's login): what waits on it is tried again. An
    issuer that is gone or misconfigured is not waited for: its Vault cannot be addressed."""
    return err.reason in VAULT_TRANSIENT


def _service_account_uid(children: Mapping[ChildKey, Mapping[str, Any]]) -> str:
    """The UID of the identity's ServiceAccount among its children ('' without one)."""
    for key, obj in children.items():
        if key.kind == "ServiceAccount":
            return str((obj.get("metadata") or {}).get("uid") or "")
    return ""


def _since_gone(status: Mapping[str, Any], now: dt.datetime) -> float:
    """Seconds since the identity's last workload went (0 when it went in this pass, before
    any status recorded it)."""
    gone = (status.get("workloads") or {}).get("goneSince")
    try:
        return max((now - parse_time(gone)).total_seconds(), 0.0) if gone else 0.0
    except ValueError:
        return 0.0
