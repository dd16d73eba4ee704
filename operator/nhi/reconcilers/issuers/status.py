"""An issuer's status: what one reconcile found, the status it leads to, and writing it.

The status is computed by a pure function and patched only when it differs from the stored
one; a Warning Event and log line are posted when the issuer becomes not Ready for a new
reason. The issuer gauges are set on every reconcile.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi import API_VERSION, metrics
from nhi.crypto import Certificate, fingerprint_sha256
from nhi.k8s.client import Api, ApiError, NotFound
from nhi.k8s.events import EventRecorder
from nhi.models import conditions as cond
from nhi.models.duration import rfc3339
from nhi.models.issuer import Issuer

# The logger name the issuer's log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.issuer")

#: Unconfirmed revocations kept in ``status.vault.pendingRevocations`` at most (a serial is
#: about 40 bytes: 400 kB of the object's 1.5 MB); more stay in memory only.
MAX_RECORDED_REVOCATIONS = 10_000
#: status.vault's list of serials the server has not confirmed as revoked.
PENDING = "pendingRevocations"


@dataclass
class IssuerOutcome:
    """What one reconcile found; the status is computed from it."""

    ready: bool
    reason: str
    message: str
    stalled: bool = False
    retry: bool = False  # waiting on something outside the spec: look again soon
    cert: Certificate | None = None
    crl_number: int | None = None
    revoked_count: int | None = None
    next_due: dt.datetime | None = None  # the next time-based action (rotation, CRL re-sign)
    vault: dict[str, Any] | None = None  # status.vault of a vault source
    #: The server failed (Vault unreachable, sealed...): retried with the queue's backoff.
    backoff: bool = False


@dataclass(frozen=True)
class Result:
    """What :meth:`IssuerController.reconcile` did, and when to look at the issuer again."""

    outcome: IssuerOutcome | None = None  # None: the issuer is gone or being deleted
    requeue_at: dt.datetime | None = None  # None: only when something changes
    retry: bool = False  # the next look is a retry (it keeps the failure backoff)


def compute_status(
    old: Mapping[str, Any], generation: int, outcome: IssuerOutcome, now: dt.datetime
) -> dict[str, Any]:
    """The status an outcome leads to, keeping transition times that did not change.

    ``caFingerprint`` and ``notAfter`` are removed (None in a merge patch) when no CA
    certificate could be read; ``crlNumber`` and ``revokedCount`` keep their last values.
    """
    conds: Sequence[Mapping[str, Any]] = old.get("conditions") or []
    gen = generation
    conds = cond.kstatus_conditions(
        conds,
        ready=outcome.ready,
        stalled=outcome.stalled,
        reason=outcome.reason,
        message=outcome.message,
        generation=gen,
        now=now,
    )
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conds,
        "caFingerprint": fingerprint_sha256(outcome.cert) if outcome.cert else None,
        "notAfter": rfc3339(outcome.cert.not_valid_after_utc) if outcome.cert else None,
    }
    if outcome.crl_number is not None:
        status["crlNumber"] = outcome.crl_number
    if outcome.revoked_count is not None:
        status["revokedCount"] = outcome.revoked_count
    if outcome.vault is not None or old.get("vault") is not None:
        # None removes it (the source is no longer vault).
        status["vault"] = _confirmed(old.get("vault"), outcome.vault)
    return status


def _confirmed(old: Any, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """``new``, removing the pending revocations ``old`` listed once none is left (a merge
    patch keeps a key it does not name)."""
    if new is None or not isinstance(old, Mapping) or PENDING not in old or PENDING in new:
        return new
    return {**new, PENDING: None}


def event_ref(issuer: Issuer) -> dict[str, Any]:
    """Enough of an issuer's body to post an Event about it."""
    meta: dict[str, Any] = {"name": issuer.name, "uid": issuer.uid}
    if issuer.namespace:
        meta["namespace"] = issuer.namespace
    return {"apiVersion": API_VERSION, "kind": issuer.kind, "metadata": meta}


class StatusWriter:
    def __init__(self, api: Api, events: EventRecorder, clock: Callable[[], dt.datetime]) -> None:
        self.api = api
        self.events = events
        self.clock = clock

    async def write(
        self,
        body: Mapping[str, Any],
        generation: int,
        outcome: IssuerOutcome,
        crl: tuple[int, int] | None = None,
    ) -> None:
        """Patch the status if it changed; ``crl``: the (number, listed) last published, for
        an outcome that says nothing about the CRL."""
        meta = body.get("metadata") or {}
        kind = str(body.get("kind") or "")
        namespace, name = meta.get("namespace") or None, str(meta.get("name") or "")
        old: Mapping[str, Any] = body.get("status") or {}
        if crl is not None and outcome.crl_number is None:
            outcome.crl_number, outcome.revoked_count = crl
        status = compute_status(old, generation, outcome, self.clock())
        if cond.status_changed(old, status):
            try:
                await self.api.patch(
                    kind, namespace, name, {"status": status}, subresource="status"
                )
            except NotFound:
                return
            await self._report(body, old, outcome)
        labels = (kind, namespace or "", name)
        metrics.issuer_ready.labels(*labels).set(1 if outcome.ready else 0)
        if outcome.cert is not None:
            metrics.issuer_ca_expiration.labels(*labels).set(
                outcome.cert.not_valid_after_utc.timestamp()
            )

    async def record_unconfirmed(self, issuer: Issuer, serials: Sequence[str]) -> None:
        """Keep the serials the server has not confirmed as revoked in the issuer's status
        (``status.vault.pendingRevocations``), so a restart sends them again."""
        if len(serials) > MAX_RECORDED_REVOCATIONS:
            log.error(
                "too many unconfirmed revocations to keep in the issuer's status",
                extra={"issuer": issuer.ref, "unconfirmed": len(serials),
                       "kept": MAX_RECORDED_REVOCATIONS},
            )  # fmt: skip
        listed = list(serials[:MAX_RECORDED_REVOCATIONS])
        patch = {"status": {"vault": {PENDING: listed or None}}}
        try:
            await self.api.patch(
                issuer.kind, issuer.namespace or None, issuer.name, patch, subresource="status"
            )
        except NotFound:
            return
        except ApiError as err:
            # Still held in memory and in the next status written: the revocation goes on.
            log.warning(
                "could not record unconfirmed revocations",
                extra={"issuer": issuer.ref, "error": str(err)},
            )

    async def _report(
        self, body: Mapping[str, Any], old: Mapping[str, Any], outcome: IssuerOutcome
    ) -> None:
        """A Warning Event and log line when the issuer is not Ready for a new reason."""
        ready = cond.get_condition(old.get("conditions") or [], cond.READY)
        same = bool(
            ready
            and ready.get("reason") == outcome.reason
            and ready.get("message") == outcome.message
        )
        if outcome.ready or same:
            return
        meta = body.get("metadata") or {}
        await self.events.warning(body, outcome.reason, outcome.message)
        log.warning(
            "issuer not ready",
            extra={
                "issuer": f"{body.get('kind') or ''}/{meta.get('name') or ''}",
                "namespace": meta.get("namespace") or "",
                "reason": outcome.reason,
                "detail": outcome.message,
            },
        )
