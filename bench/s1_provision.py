"""Scenario 1: provision N identities applied at once, until all are Ready, vs a plain client.

Each identity: a ServiceAccount, one rule (Role + RoleBinding), a bound token credential and,
when issuers work in this tree, an ECDSA-P256 X509 credential from a selfSigned
ClusterIdentityIssuer. The bench applies the N MachineIdentities with concurrency 32 and
follows them (a list, then a watch) until all are Ready. The floor (bench.floor) creates the same
objects with the same concurrency and the same cryptography, with no operator running.

The floor runs come first, with no operator running. Then one operator process serves every
operator run. Every run, the floor's and the operator's, starts from the same cluster: its
namespace is deleted after it (the operator's with the operator running, which runs each
identity's clean-up) and the bench waits until the operator is quiet before the next.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import manifests as m
from bench.env import Env, by_verb_resource, delta, gather_limited, minus, non_watch
from bench.floor import Floor
from bench.objects import apply_all, purge_namespace, wait_ready
from bench.result import Check, Result, ratio_check, stats

OP_PREFIX = "b1-op-"
FLOOR_PREFIX = "b1-floor-"


async def operator_run(env: Env, run: int, n: int, x509: bool) -> dict[str, Any]:
    ns = f"{OP_PREFIX}{run}"
    await env.ensure_namespace(ns, {"nhi.dev/bench-scenario": "1"})
    await env.ensure_operator()
    await env.wait_quiet(quiet=3.0, limit=600)
    items = [m.identity(ns, f"id-{i:05d}", x509=x509) for i in range(n)]
    before, own0 = await env.request_totals(), env.own()
    t0 = time.monotonic()
    applying = asyncio.create_task(apply_all(env, items, 32))
    t_ready = await wait_ready(env, ns, n, limit=120 + n * 1.0)
    await applying
    after_ready, own1 = await env.request_totals(), env.own()
    settled = await env.wait_quiet(quiet=3.0, limit=300)
    after, own2 = await env.request_totals(), env.own()
    if t_ready is None:
        raise RuntimeError(f"{ns}: not all {n} identities became Ready\n{env.operator_log()}")
    reqs = minus(delta(after, before), own2 - own0)
    rss = env.operator.rss() if env.operator else (0.0, 0.0)
    gone = await env.delete_namespace(ns, limit=600)
    return {
        "namespace": ns,
        "seconds": round(t_ready - t0, 3),
        "trailing_seconds": round(max(0.0, settled - t_ready), 3),
        "requests_until_ready": non_watch(minus(delta(after_ready, before), own1 - own0)),
        "requests": non_watch(reqs),
        "requests_by_verb_resource_per_identity": by_verb_resource(reqs, per=n),
        "operator_rss_mb": round(rss[0], 1),
        "namespace_delete_seconds": round(gone, 1),
    }


async def floor_run(env: Env, floor: Floor, run: int, n: int, x509: bool) -> dict[str, Any]:
    await env.stop_operator()
    ns = f"{FLOOR_PREFIX}{run}"
    await env.ensure_namespace(ns, {"nhi.dev/bench-scenario": "1"})
    items = [m.identity(ns, f"id-{i:05d}", x509=x509) for i in range(n)]
    before, own0 = await env.request_totals(), env.api.counts.copy()
    t0 = time.monotonic()
    if x509:
        await floor.trust_bundle(ns)
    await gather_limited(items, floor.provision, 32)
    seconds = time.monotonic() - t0
    after = await env.request_totals()
    # Everything the API server saw but the bench's own (non-floor) requests, as for the
    # operator: the floor's requests plus what the controller-manager did in reaction.
    reqs = minus(delta(after, before), env.api.counts - own0)
    gone = await purge_namespace(env, ns)
    return {
        "namespace": ns,
        "seconds": round(seconds, 3),
        "requests": non_watch(reqs),
        "requests_by_verb_resource_per_identity": by_verb_resource(reqs, per=n),
        "namespace_delete_seconds": round(gone, 1),
    }


async def floor_phase(env: Env, n: int, runs: int) -> list[dict[str, Any]]:
    floor = Floor(env.floor_api)
    return [await floor_run(env, floor, r, n, env.issuers_work) for r in range(runs)]


async def operator_phase(env: Env, n: int, runs: int, profile: bool) -> list[dict[str, Any]]:
    if profile:
        await env.stop_operator()
        await env.start_operator(profile="s1-operator")
    out = [await operator_run(env, r, n, env.issuers_work) for r in range(runs)]
    if profile:
        await env.stop_operator()  # pyinstrument writes its report when the process exits
    return out


def result(
    env: Env, n: int, floor_runs: list[dict[str, Any]], op_runs: list[dict[str, Any]]
) -> Result:
    res = Result("1", f"Provision {n} identities applied at once")
    x509 = env.issuers_work
    res.details["n"] = n
    res.details["x509"] = x509
    res.details["concurrency"] = 32
    res.details["operator_workers"] = "32 (the operator's default, NHI_WORKERS)"
    if not x509:
        res.notes.append(
            "The selfSigned ClusterIdentityIssuer did not become Ready in this tree, so the "
            "identities carry a token credential only."
        )
    res.notes.append(
        "Floor runs first (no operator running), then every operator run with one operator "
        "process; each run's namespace is deleted after it, so every run starts from the same "
        "cluster."
    )
    res.details["operator_runs"] = op_runs
    res.details["floor_runs"] = floor_runs
    res.checks.append(
        ratio_check(
            "time until all Ready",
            "s",
            [r["seconds"] for r in op_runs],
            [r["seconds"] for r in floor_runs],
            1.5,
        )
    )
    op_req = stats([r["requests"] / n for r in op_runs])["median"]
    fl_req = stats([r["requests"] / n for r in floor_runs])["median"]
    res.checks.append(
        Check(
            name="API requests per identity (non-watch)",
            unit="requests",
            values=[r["requests"] / n for r in op_runs],
            floor_values=[r["requests"] / n for r in floor_runs],
            ratio=round(op_req / fl_req, 3) if fl_req else None,
            target="informational",
        )
    )
    return res
