"""The issuer controller: reconcile(key) says when to look again; identities only wait for it.

Uses the in-memory API and fake clock of tests/unit/test_issuer_service.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from nhi.k8s.client import Forbidden
from nhi.reconcilers.issuers import IssuerNotReady
from tests.unit.test_issuer_service import (
    MESH,
    OPNS,
    START,
    issuer_body,
    make_service,
    named,
)

pytestmark = pytest.mark.unit

EDGE = ("ClusterIdentityIssuer", "", "edge")


async def test_reconcile_by_key_returns_when_to_look_again() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body(selfSigned={"ttl": "720h"}, crl={"validity": "24h"}))
    ready = await svc.controller.reconcile(MESH)
    assert ready.outcome is not None and ready.outcome.ready
    assert ready.outcome.next_due == START + dt.timedelta(hours=16)  # the CRL's re-sign
    assert (ready.requeue_at, ready.retry) == (START + dt.timedelta(seconds=60), False)

    api.put(named("edge", ca={"secretName": "missing"}))
    waiting = await svc.controller.reconcile(EDGE)
    assert waiting.outcome is not None and waiting.outcome.reason == "CASecretNotFound"
    assert (waiting.requeue_at, waiting.retry) == (START + dt.timedelta(seconds=10), True)

    # reconcile(key) plans nothing itself: whoever drives it does.
    assert svc.queue.scheduled() == 0

    del api.objects[("ClusterIdentityIssuer", "", "mesh")]
    gone = await svc.controller.reconcile(MESH)
    assert (gone.outcome, gone.requeue_at) == (None, None)
    assert not svc.signers.settled(MESH)


async def test_signer_waits_for_the_controller_and_never_reconciles_itself() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())
    waiting = asyncio.create_task(svc.signer("ClusterIdentityIssuer", "mesh", "ns"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert api.writes() == []  # the issuer queue does not run yet: nothing was made
    svc.start()
    try:
        signer = await asyncio.wait_for(waiting, 10)
    finally:
        await svc.stop()
    assert signer.trust_domain == "example.org"
    assert ("Secret", OPNS, "nhi-issuer-mesh") in api.objects  # the controller made the root


async def test_the_error_of_the_run_reaches_the_identity_waiting_for_it() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())

    async def refuse(obj: Any, **_: Any) -> Any:
        raise Forbidden(403, "Forbidden", "secrets is forbidden")

    api.apply = refuse  # type: ignore[method-assign]
    svc.start()
    try:
        with pytest.raises(Forbidden):
            await asyncio.wait_for(svc.signer("ClusterIdentityIssuer", "mesh", "ns"), 10)
    finally:
        await svc.stop()
    assert not svc.signers.settled(MESH)


async def test_waiting_identities_are_released_when_the_controller_stops() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())
    waiting = asyncio.create_task(svc.signer("ClusterIdentityIssuer", "mesh", "ns"))
    await asyncio.sleep(0.01)
    await svc.stop()
    with pytest.raises(IssuerNotReady) as err:
        await asyncio.wait_for(waiting, 5)
    assert err.value.reason == "ApiError"


async def test_a_cluster_issuer_is_finalized_by_its_controller() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())
    await svc.controller.reconcile(MESH)
    stored = api.objects[MESH]
    assert stored["metadata"]["finalizers"] == ["nhi.dev/finalizer"]
    assert ("Secret", OPNS, "nhi-issuer-mesh") in api.objects
    # Deleted: the root Secret and the CRL go first, then the finalizer.
    stored["metadata"]["deletionTimestamp"] = "2030-01-15T12:00:00Z"
    gone = await svc.controller.reconcile(MESH)
    assert (gone.outcome, gone.requeue_at) == (None, None)
    assert ("Secret", OPNS, "nhi-issuer-mesh") not in api.objects
    assert api.objects[MESH]["metadata"]["finalizers"] == []
    # A namespaced issuer gets none: the garbage collector removes what it owns.
    api.put(named("local", kind="IdentityIssuer", namespace="team-a"))
    local = ("IdentityIssuer", "team-a", "local")
    await svc.controller.reconcile(local)
    assert not api.objects[local]["metadata"].get("finalizers")


async def test_only_a_change_of_spec_or_finalizers_queues_a_settled_issuer() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())
    await svc.controller.reconcile(MESH)
    changed = svc.controller.changed("ClusterIdentityIssuer")
    body = api.objects[MESH]
    status_only = {**body, "status": {"conditions": []}}
    changed(("", "mesh"), body, status_only)
    assert svc.queue.pending() == 0  # its own status patch: nothing to do
    edited = {**body, "metadata": {**body["metadata"], "generation": 2}}
    changed(("", "mesh"), body, edited)
    assert svc.queue.pending() == 1
