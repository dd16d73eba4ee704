"""kopf handlers for IdentityIssuer and ClusterIdentityIssuer: turn events into queued work.

The issuers have their own work queue, in the issuer controller
(:mod:`nhi.reconcilers.issuers.controller`, reached through ``runtime.get().issuers``). A CA
Secret an issuer reads is re-checked on its watch event (the runtime watches every Secret's
metadata, never its data), and in any case on a timer: every 10 s while the issuer is not
Ready, every minute when it is.
"""

from __future__ import annotations

from typing import Any

import kopf

from nhi import GROUP, VERSION
from nhi.handlers import runtime
from nhi.k8s.client import ApiError
from nhi.models.issuer import CLUSTER_ISSUER_KIND, ISSUER_KIND, IssuerKey
from nhi.reconcilers.issuers import CLUSTER_ISSUER_INDEX, ISSUER_INDEX, IssuerService
from nhi.reconcilers.issuers.provenance import ProvenanceError

_started: IssuerService | None = None


def _service(kwargs: dict[str, Any] | None = None) -> IssuerService:
    svc = runtime.get().issuers
    if kwargs is not None:
        svc.capture(kwargs)
    svc.start()
    return svc


def _body(body: kopf.Body, kind: str) -> dict[str, Any]:
    out = dict(body)
    out.setdefault("kind", kind)
    return out


# ------------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, "identityissuers", id=ISSUER_INDEX)
def nhi_identityissuers(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[IssuerKey, dict[str, Any]]:
    return {(ISSUER_KIND, namespace or "", name): _body(body, ISSUER_KIND)}


@kopf.index(GROUP, VERSION, "clusteridentityissuers", id=CLUSTER_ISSUER_INDEX)
def nhi_clusteridentityissuers(
    name: str, body: kopf.Body, **_: Any
) -> dict[IssuerKey, dict[str, Any]]:
    return {(CLUSTER_ISSUER_KIND, "", name): _body(body, CLUSTER_ISSUER_KIND)}


# -------------------------------------------------------------------------------- events


@kopf.on.event(GROUP, VERSION, "identityissuers", id="nhi_identityissuer_event")
async def issuer_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    _service(kwargs).observed(str(event.get("type") or ""), _body(body, ISSUER_KIND))


@kopf.on.event(GROUP, VERSION, "clusteridentityissuers", id="nhi_clusteridentityissuer_event")
async def cluster_issuer_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    _service(kwargs).observed(str(event.get("type") or ""), _body(body, CLUSTER_ISSUER_KIND))


@kopf.on.delete(GROUP, VERSION, "clusteridentityissuers", id="nhi_clusteridentityissuer_cleanup")
async def cluster_issuer_deleted(body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
    """Remove the root Secret, CRL and trust bundles of a deleted ClusterIdentityIssuer.

    (A namespaced issuer's objects carry an owner reference: the garbage collector removes
    them, so it needs no finalizer.)
    """
    svc = _service(kwargs)
    try:
        removed = await svc.cleanup(_body(body, CLUSTER_ISSUER_KIND))
    except ApiError as err:
        raise kopf.TemporaryError(f"could not remove the issuer's objects: {err}", delay=5) from err
    logger.info("removed the issuer's objects", extra={"removed": removed})


# ----------------------------------------------------------------------------- lifecycle


@kopf.on.startup(id="nhi_issuers_start")
async def start_issuers(logger: kopf.Logger, **_: Any) -> None:
    global _started
    _started = _service()
    # Made now rather than at the first publication: ConfigMaps created before the key may
    # be adopted as an earlier version's (nhi.policies.provenance.configmap_origin).
    try:
        await _started.provenance.get()
    except (ApiError, ProvenanceError) as err:
        logger.warning("could not load the provenance key yet", extra={"error": str(err)})


@kopf.on.cleanup(id="nhi_issuers_stop")
async def stop_issuers(**_: Any) -> None:
    global _started
    if _started is not None:
        await _started.stop()
        _started = None
