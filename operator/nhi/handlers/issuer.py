"""kopf entry point of the issuers: make the provenance key at start-up.

The issuers themselves are reconciled by a :class:`~nhi.runtime.controller.Controller` fed by
the runtime's watch caches (:mod:`nhi.handlers.runtime`, :mod:`nhi.reconcilers.issuers`).
"""

from __future__ import annotations

from typing import Any

import kopf

from nhi.handlers import runtime
from nhi.k8s.client import ApiError
from nhi.reconcilers.issuers.provenance import ProvenanceError


@kopf.on.startup(id="nhi_issuers_start")
async def load_provenance_key(logger: kopf.Logger, **_: Any) -> None:
    # Made now rather than at the first publication: ConfigMaps created before the key may
    # be adopted as an earlier version's (nhi.policies.provenance.configmap_origin).
    try:
        await runtime.get().issuers.provenance.get()
    except (ApiError, ProvenanceError) as err:
        logger.warning("could not load the provenance key yet", extra={"error": str(err)})
