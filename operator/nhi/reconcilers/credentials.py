"""Issue, rotate and store an identity's credentials.

For each declared credential the stored Secret's annotations say what it holds; a pure
decision (nhi.policies.rotation) says whether to issue. Issuing writes the new value before
the old one expires, and the old one stays valid until its own expiry (tokens, certificates)
or through the overlap window (StaticSecret ``previous``). Values never leave this module
except into the Secret: logs, Events and status carry serials and fingerprints only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nhi import crypto, metrics
from nhi.builders.secrets import build_credential_secret
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventBatch
from nhi.models.duration import rfc3339
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import Issued
from nhi.models.meta import RENEW_ANNOTATION, Reason
from nhi.models.vault_storage import kv_path
from nhi.policies import rotation
from nhi.policies.ownership import Claim, OwnershipConflict
from nhi.reconcilers.issuance import Minter
from nhi.reconcilers.issuers import IssuerNotReady, IssuerService, Signer
from nhi.reconcilers.owned import OwnedWriter
from nhi.reconcilers.vault_storage import (
    DEFAULT_KV_CHECK_INTERVAL,
    VAULT_COPY_CHANGED,
    KVStore,
)
from nhi.vault import VaultError

log = logging.getLogger("nhi.reconcilers.credentials")

T = TypeVar("T")

#: How soon to try again when an issuer cannot sign (it also re-queues its identities as soon
#: as it is Ready again, so recovery does not wait for this).
ISSUER_RETRY = dt.timedelta(seconds=10)


@dataclass
class CredentialResult:
    """What the credentials of one identity look like after a pass."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)  # names issued again (not first issuance)
    issued: list[str] = field(default_factory=list)  # names issued for the first time
    next_due: dt.datetime | None = None
    not_ready: tuple[str, str] | None = None  # (reason, message) when a credential is missing
    #: Secrets named by the spec that the identity does not own (left untouched).
    conflicts: list[Claim] = field(default_factory=list)
    #: A credential cannot be issued until the spec changes (see :func:`permanent`).
    stalled: bool = False

    def due(self, when: dt.datetime) -> None:
        if self.next_due is None or when < self.next_due:
            self.next_due = when


class CredentialManager:
    def __init__(
        self,
        api: Api,
        issuers: IssuerService,
        clock: Callable[[], dt.datetime],
        writer: OwnedWriter | None = None,
        kv_check_interval: float = DEFAULT_KV_CHECK_INTERVAL,
        kv: KVStore | None = None,
    ) -> None:
        #: Writes only Secrets the identity owns, and tells the caches about each write.
        self.writer = writer or OwnedWriter(api)
        self.kv = kv or KVStore(issuers, api, check_interval=kv_check_interval)
        self.minter = Minter(api, self.writer, self.kv)
        self.api = api
        self.issuers = issuers
        self.clock = clock

    async def ensure(
        self,
        identity: MachineIdentity,
        secrets: Mapping[str, Mapping[str, Any]],
        batch: EventBatch,
        taken: Collection[str] = (),
    ) -> CredentialResult:
        """Bring every declared credential up to date. ``secrets``: the identity's own, by
        name; ``taken``: Secret names already found to belong to someone else (skipped).

        Credentials do not depend on each other: those due are issued at the same time.
        Results are merged in declaration order. A failure of one does not stop the others;
        it is raised once all are done, after the others' results have been reported (their
        Secrets are recorded as each is written).
        """
        result = CredentialResult()
        renew_request = identity.annotations.get(RENEW_ANNOTATION) or None
        labels = [_labels(identity, c) for c in identity.spec.credentials]
        metrics.sync_credentials(identity.namespace, identity.name, labels)
        # Checking is in memory (an issuer's first use aside); only issuing makes requests.
        checked: list[tuple[int, _Pass | _Due | Exception]] = []
        for index, cred in enumerate(identity.spec.credentials):
            if cred.secret_name in taken:
                continue
            vault_only = cred.kv is not None and cred.kv.vault_only
            stored = None if vault_only else secrets.get(cred.secret_name)
            try:
                checked.append(
                    (index, await self._check(identity, index, cred, stored, renew_request))
                )
            except Exception as err:
                checked.append((index, err))
        work = [c for _, c in checked if isinstance(c, _Due)]
        done = iter(await settle([self._act(identity, due) for due in work]))
        failures: list[BaseException] = []
        for index, one in checked:
            outcome = next(done) if isinstance(one, _Due) else one
            if isinstance(outcome, OwnershipConflict):
                result.conflicts.append(outcome.claim)
                continue
            if isinstance(outcome, BaseException) and permanent(outcome):
                outcome = self._refused(identity, index, outcome)
            if isinstance(outcome, BaseException):
                failures.append(outcome)
                continue
            if outcome.stalled:
                result.stalled = True
            if outcome.not_ready is not None and result.not_ready is None:
                result.not_ready = outcome.not_ready
            if outcome.status is not None:
                result.statuses.append(outcome.status)
            if outcome.due is not None:
                result.due(outcome.due)
            if outcome.issued is not None:
                names = result.rotated if outcome.issued == "Rotated" else result.issued
                names.append(outcome.name)
                batch.normal(outcome.issued, outcome.message)
        raise_first(failures, "could not issue a credential", identity)
        return result

    def _refused(self, identity: MachineIdentity, index: int, err: BaseException) -> _Pass:
        """A credential that cannot be issued as specified: Stalled, naming it, not retried."""
        cred = identity.spec.credentials[index]
        metrics.rotated(_labels(identity, cred), "failure")
        log.warning(
            "could not issue a credential as specified",
            extra={
                "namespace": identity.namespace,
                "identity": identity.name,
                "credential": cred.name,
                "error": str(err),
            },
        )
        return _Pass(
            cred.name,
            not_ready=(
                Reason.INVALID_SPEC,
                f"spec.credentials[{index}] ({cred.name}): cannot be issued as specified: {err}",
            ),
            stalled=True,
        )

    def anchors(
        self, identity: MachineIdentity, secrets: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The Secrets, without a value, of tokens not issued yet.

        A token is bound to the Secret that holds it, so that Secret must exist (have a uid)
        before the token is requested. Written by the caller together with the identity's
        other objects, they spare the token's issuance one request in a row.
        """
        return [
            build_credential_secret(identity, cred, None, {})
            for cred in identity.spec.credentials
            if cred.type == "ServiceAccountToken"
            and (cred.kv is None or not cred.kv.vault_only)
            and not ((secrets.get(cred.secret_name) or {}).get("metadata") or {}).get("uid")
        ]

    async def _check(
        self,
        identity: MachineIdentity,
        index: int,
        cred: Credential,
        stored: Mapping[str, Any] | None,
        renew_request: str | None,
    ) -> _Pass | _Due:
        """What one credential needs: nothing (its status), or issuing / tidying (``_Due``)."""
        ann = ((stored or {}).get("metadata") or {}).get("annotations") or {}
        issued = Issued.from_annotations(ann) if stored is not None else None
        if cred.kv is not None and cred.kv.vault_only:
            # No Secret: what was issued is read back from the copy's metadata.
            try:
                issued = await self.kv.state(identity, cred)
            except (VaultError, IssuerNotReady) as err:
                message = f"spec.credentials[{index}] ({cred.name}) is kept in Vault only: {err}"
                return _Pass(
                    cred.name, not_ready=(err.reason, message), due=self.clock() + ISSUER_RETRY
                )
        signer: Signer | None = None
        if cred.type == "X509":
            assert cred.issuer_ref is not None
            try:
                signer = await self.issuers.signer(
                    cred.issuer_ref.kind, cred.issuer_ref.name, identity.namespace
                )
                await self.issuers.publish_trust_bundle(signer, identity.namespace)
            except IssuerNotReady as err:
                return self._issuer_failed(identity, index, cred, issued, err)
        now = self.clock()
        reason = rotation.reason_to_issue(
            cred,
            issued,
            current_spec_hash=rotation.spec_hash(cred, identity.spec.service_account),
            now=now,
            renew_request=renew_request,
            ca_fingerprint=signer.ca.fingerprint if signer else None,
        )
        if reason is None and self.kv.changed(identity, cred):
            reason = VAULT_COPY_CHANGED  # kept in Vault only: a new value replaces it
        held = rotation.held_until(issued, reason, now) if issued and reason else None
        if reason is None or held is not None:
            assert issued is not None
            if issued.previous_not_after is not None and issued.previous_not_after <= now:
                return _Due(cred, issued, stored, signer, now, None, renew_request or "")
            return await self._current(identity, cred, stored, issued, now, held)
        return _Due(cred, issued, stored, signer, now, reason, renew_request or "")

    def _issuer_failed(
        self,
        identity: MachineIdentity,
        index: int,
        cred: Credential,
        issued: Issued | None,
        err: IssuerNotReady,
    ) -> _Pass:
        """The credential's issuer cannot sign: not ready, its current value (if any) kept and
        looked at again at its renewal, or soon."""
        assert cred.issuer_ref is not None
        msg = (
            f"spec.credentials[{index}].issuerRef: {cred.issuer_ref.kind}/"
            f"{cred.issuer_ref.name} cannot issue: {err.message}"
        )
        failed = _Pass(cred.name, not_ready=(err.reason, msg))
        if issued is not None:
            failed.status = _status(identity, cred, issued)
            now = self.clock()
            failed.due = max(rotation.next_due(issued, now), now + ISSUER_RETRY)
        self._failed(
            identity,
            cred,
            issued,
            due=issued is not None and self.clock() >= issued.renewal_time,
        )
        return failed

    async def _current(
        self,
        identity: MachineIdentity,
        cred: Credential,
        stored: Mapping[str, Any] | None,
        issued: Issued,
        now: dt.datetime,
        held: dt.datetime | None,
    ) -> _Pass:
        """Nothing to issue: the credential's status, and when to look again (its renewal, the
        end of a hold, the next check of its copy in Vault)."""
        self._observe(identity, cred, issued)
        due = rotation.next_due(issued, now)
        if held is not None:
            due = min(due, held)
        if cred.kv is not None:
            # Is the copy in Vault still the one written? Restored from the Secret if not
            # (a credential kept in Vault only is issued anew).
            due = min(due, await self.kv.check(identity, cred, stored, issued, now))
        return _Pass(cred.name, status=_status(identity, cred, issued), due=due)

    async def _act(self, identity: MachineIdentity, due: _Due) -> _Pass:
        """Issue a credential (or drop a StaticSecret's expired ``previous``)."""
        cred, issued, now, reason = due.cred, due.issued, due.now, due.reason
        if reason is None:
            assert issued is not None
            kept = await self.minter.drop_previous(identity, cred, issued, due.stored)
            self._observe(identity, cred, kept)
            return _Pass(
                cred.name, status=_status(identity, cred, kept), due=rotation.next_due(kept, now)
            )
        new = await self.minter.issue(
            identity, cred, issued, due.stored, due.signer, now, reason, due.renew_handled
        )
        self._observe(identity, cred, new)
        metrics.rotated(_labels(identity, cred), "success")
        if issued is not None and now >= issued.renewal_time:
            metrics.time_to_rotate.observe((now - issued.renewal_time).total_seconds())
        verb = "Issued" if issued is None else "Rotated"
        ident = f"serial {new.serial}" if new.serial else f"fingerprint {new.fingerprint}"
        log.info(
            "%s credential",
            verb.lower(),
            extra={
                "namespace": identity.namespace,
                "identity": identity.name,
                "credential": cred.name,
                "type": cred.type,
                "reason": reason,
                "serial": new.serial,
                "fingerprint": new.fingerprint,
                "not_after": rfc3339(new.not_after),
            },
        )
        return _Pass(
            cred.name,
            status=_status(identity, cred, new),
            due=rotation.next_due(new, now),
            issued=verb,
            message=(
                f"{verb.lower()} credential {cred.name} ({cred.type}, {ident}, "
                f"not after {rfc3339(new.not_after)}, reason {reason})"
            ),
        )

    # ------------------------------------------------------------------ metrics

    def _observe(self, identity: MachineIdentity, cred: Credential, issued: Issued) -> None:
        metrics.observe_credential(
            _labels(identity, cred),
            not_before=issued.not_before.timestamp(),
            not_after=issued.not_after.timestamp(),
            renewal=issued.renewal_time.timestamp(),
        )

    def _failed(
        self, identity: MachineIdentity, cred: Credential, issued: Issued | None, due: bool
    ) -> None:
        if issued is not None:
            self._observe(identity, cred, issued)
        if due or issued is None:
            metrics.rotated(_labels(identity, cred), "failure")


def permanent(err: BaseException) -> bool:
    """An error that trying again cannot cure: an input the crypto layer refuses, or a
    request the API server refuses as malformed or invalid (400, 422)."""
    if isinstance(err, crypto.CryptoError):
        return True
    if isinstance(err, VaultError):
        return not err.retryable  # Vault refused the request itself (its role forbids it)
    return isinstance(err, ApiError) and err.status in (400, 422)


async def settle(aws: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Await all of ``aws`` at the same time; each one's result or exception, in order.

    One awaitable alone is awaited directly, without the cost of a task (and none, at once).
    """
    if len(aws) <= 1:
        try:
            return [await aw for aw in aws]
        except Exception as err:
            return [err]
    return list(await asyncio.gather(*aws, return_exceptions=True))


@dataclass(frozen=True)
class _Due:
    """A credential to issue (``reason``), or whose expired ``previous`` to drop (None)."""

    cred: Credential
    issued: Issued | None
    stored: Mapping[str, Any] | None
    signer: Signer | None
    now: dt.datetime
    reason: str | None
    renew_handled: str


@dataclass
class _Pass:
    """What checking one credential came to: its status, when to look again, what it issued."""

    name: str
    status: dict[str, Any] | None = None
    due: dt.datetime | None = None
    not_ready: tuple[str, str] | None = None
    stalled: bool = False
    #: "Issued" or "Rotated" when a value was issued, with the Event message saying so.
    issued: str | None = None
    message: str = ""


def _labels(identity: MachineIdentity, cred: Credential) -> tuple[str, str, str, str, str]:
    issuer = f"{cred.issuer_ref.kind}/{cred.issuer_ref.name}" if cred.issuer_ref else ""
    return (identity.namespace, identity.name, cred.name, cred.type, issuer)


def _status(identity: MachineIdentity, cred: Credential, issued: Issued) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": cred.name,
        "type": cred.type,
        "notBefore": rfc3339(issued.not_before),
        "notAfter": rfc3339(issued.not_after),
        "renewalTime": rfc3339(issued.renewal_time),
        "lastRotationTime": rfc3339(issued.issued_at),
        "rotationCount": issued.rotation_count,
    }
    if issued.serial:
        out["serialNumber"] = issued.serial
    if issued.fingerprint:
        out["fingerprint"] = issued.fingerprint
    if issued.credential_id:
        out["credentialID"] = issued.credential_id
    if issued.issuer:
        out["issuer"] = issued.issuer
    if cred.kv is None or not cred.kv.vault_only:
        out["secretName"] = cred.secret_name
    if cred.kv is not None:
        out["vaultPath"] = f"{cred.kv.mount}/data/{kv_path(identity.namespace, cred.kv)}"
    return out


def raise_first(failures: list[BaseException], what: str, identity: MachineIdentity) -> None:
    """Raise the first of ``failures`` (plan order); log the others, which would be lost."""
    if not failures:
        return
    for other in failures[1:]:
        log.warning(
            what,
            extra={"namespace": identity.namespace, "identity": identity.name, "error": str(other)},
        )
    raise failures[0]
