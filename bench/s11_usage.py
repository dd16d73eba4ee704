"""Scenario 11: ingesting the API server's audit events (the usage endpoint's work per batch).

Batches of 400 events (kube-apiserver's default batch size) at Metadata level, from 10,000
ServiceAccounts (each with about 20 distinct accesses, several credentials). What the endpoint
does with a batch once authenticated: ``json.loads`` + :func:`nhi.models.usage.parse_batch`
(the whole batch checked before anything is counted) + :meth:`UsageStore.ingest` (dedupe by
auditID, the per-ServiceAccount books); against a floor of ``json.loads`` of the same bytes.
Both alternate batch by batch and are timed with the bench thread's CPU clock. The usage's
memory for the 10,000 ServiceAccounts is measured with tracemalloc once every book is full.
Not measured here: TLS and HTTP (aiohttp), and the once-a-minute ConfigMap writes.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import tracemalloc
from typing import Any

from bench.result import Check, Result, ratio_check
from nhi.models.usage import parse_batch
from nhi.reconcilers.usage import UsageStore

BATCH = 400
IDENTITIES = 10_000
ACCESSES = 20
#: Events per run (full, small): the full size fills every book (10,000 x 20 accesses).
EVENTS = (400_000, 40_000)
RESOURCES = [("", "configmaps"), ("", "secrets"), ("apps", "deployments"), ("", "pods"),
             ("batch", "jobs"), ("", "services"), ("coordination.k8s.io", "leases")]  # fmt: skip
VERBS = ["get", "list", "watch", "update", "patch", "create"]


def _event(i: int, rng: random.Random, at: str) -> dict[str, Any]:
    sa = rng.randrange(IDENTITIES)
    ns, name = f"team-{sa % 500}", f"app-{sa}"
    k = rng.randrange(ACCESSES)
    group, resource = RESOURCES[k % len(RESOURCES)]
    verb = VERBS[k % len(VERBS)]
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"{i:08x}-4c1f-4b7e-9d3a-{rng.getrandbits(48):012x}",
        "stage": "ResponseComplete",
        "requestURI": f"/apis/{group or 'v1'}/namespaces/{ns}/{resource}/obj-{k}",
        "verb": verb,
        "user": {
            "username": f"system:serviceaccount:{ns}:{name}",
            "uid": f"{sa:08x}-0000-4000-8000-000000000000",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{ns}",
                "system:authenticated",
            ],
            "extra": {
                "authentication.kubernetes.io/credential-id": [f"JTI={sa:x}-{k % 3}"],
                "authentication.kubernetes.io/pod-name": [f"{name}-0"],
                "authentication.kubernetes.io/pod-uid": ["0f8e4a5c-0000-4000-8000-000000000000"],
            },
        },
        "sourceIPs": ["10.0.3.17"],
        "userAgent": "app/v1.2.3 (linux/amd64) kubernetes/v1.37",
        "objectRef": {
            "resource": resource,
            "namespace": ns,
            "name": f"obj-{k}" if verb not in ("list", "watch", "create") else "",
            "apiGroup": group,
            "apiVersion": "v1",
        },
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": at,
        "stageTimestamp": at,
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": f'RBAC: allowed by RoleBinding "nhi-{name}/{ns}"',
        },
    }


def batches(events: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for b in range(events // BATCH):
        items = [_event(b * BATCH + j, rng, at) for j in range(BATCH)]
        body = {
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "metadata": {},
            "items": items,
        }
        out.append(json.dumps(body).encode())
    return out


def _store() -> UsageStore:
    return UsageStore(None, "nhi-system", lambda: dt.datetime.now(dt.UTC))  # type: ignore[arg-type]


def run(runs: int, small: bool) -> Result:
    res = Result("11", "Usage: audit event batches ingested")
    events = EVENTS[1] if small else EVENTS[0]
    rates, floor_rates, bytes_per_event = [], [], 0.0
    for r in range(runs):
        raw = batches(events, seed=r)
        bytes_per_event = sum(map(len, raw)) / events
        store = _store()
        spent = floor_spent = 0.0
        for body in raw:
            t = time.thread_time()
            json.loads(body)
            floor_spent += time.thread_time() - t
            t = time.thread_time()
            batch = parse_batch(json.loads(body))
            store.ingest(batch.observations, batch.mints)
            spent += time.thread_time() - t
        rates.append(events / spent)
        floor_rates.append(events / floor_spent)
    # Memory: every book filled (the same batches again), measured on its own.
    raw = batches(events, seed=runs)
    tracemalloc.start()
    store = _store()
    for body in raw:
        batch = parse_batch(json.loads(body))
        store.ingest(batch.observations, batch.mints)
    total_mb = tracemalloc.get_traced_memory()[0] / 1e6
    remembered = len(store.seen)
    store.seen.clear()  # the auditIDs remembered for replays (at most SEEN_IDS)
    store.order.clear()
    books_mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    entries = sum(len(b.entries) for b in store.books.values())
    # CPU per event, so that the floor ratio reads "times the cost of decoding only".
    per_event = [1e6 / r for r in rates]
    floor_per_event = [1e6 / r for r in floor_rates]
    res.checks = [
        Check("events per second (one core)", "events/s", [round(r) for r in rates],
              ">= 5000", ok=min(rates) >= 5000),
        ratio_check("CPU per event vs json.loads only", "µs/event", per_event, floor_per_event,
                    limit=4.0),
        Check(f"usage memory, {len(store.books)} ServiceAccounts, with the auditIDs", "MB",
              [round(total_mb, 1)], "<= 100", ok=total_mb <= 100),
    ]  # fmt: skip
    res.details = {
        "events_per_run": events,
        "batch": BATCH,
        "bytes_per_event": round(bytes_per_event),
        "service_accounts": len(store.books),
        "distinct_accesses": entries,
        "books_mb": round(books_mb, 1),
        "audit_ids_remembered": remembered,
        "floor_events_per_second": [round(r) for r in floor_rates],
    }
    res.notes.append(
        "In-process: decoding, checking and counting a batch. TLS, HTTP and the ConfigMap "
        "writes (once a minute per changed ServiceAccount) are not in these numbers."
    )
    return res
