"""Scenario 3: N certificates due at once, until all are rotated, vs a plain client.

N identities with one X509 credential (ttl 1h). Certificates issued one after another do
not fall due together (the issue's ttl 10m with renewBefore 9m50s makes each due ~10 s after
its own issuance, while N of them take longer than that to issue, and would keep them
rotating through the later scenarios), so the bench makes them due together: with the
operator running it sets every credential Secret's ``nhi.dev/renewal-time`` annotation (the
operator's only record of when to renew) to the same instant T a little in the future. The
operator re-reads the Secrets from its watch and schedules all N renewals for T. The clock
runs from T until every Secret's ``nhi.dev/fingerprint`` changed (a list, then a watch).
rotation.renewBefore is 2m, so no natural renewal happens during the bench; the identities
stay for scenario 2.

Floor: the same N rotations by a plain client (key, certificate, Secret, status) with
concurrency 32.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from bench import manifests as m
from bench.env import Env, by_verb_resource, delta, gather_limited, minus, non_watch
from bench.floor import Floor
from bench.objects import FINGERPRINT, fingerprints, follow_until, purge_namespace, wait_ready
from bench.result import Result, ratio_check
from nhi.models.duration import rfc3339
from nhi.models.meta import CREDENTIAL_LABEL

OP_NS = "b3-op"
FLOOR_NS = "b3-floor"
ROTATION = {"renewBefore": "2m"}
RENEWAL = "nhi.dev/renewal-time"


def items(ns: str, n: int) -> list[dict[str, Any]]:
    return [
        m.identity(ns, f"cert-{i:05d}", token=False, x509=True, x509_ttl="1h", rotation=ROTATION)
        for i in range(n)
    ]


async def operator_phase(env: Env, n: int, runs: int) -> list[dict[str, Any]]:
    if not env.issuers_work:
        return []
    await env.ensure_namespace(OP_NS, {"nhi.dev/bench-scenario": "3"})
    await env.ensure_operator()
    await env.wait_quiet(quiet=3.0, limit=600)
    await gather_limited(items(OP_NS, n), env.api.apply, 32)
    if await wait_ready(env, OP_NS, n, limit=120 + n) is None:
        raise RuntimeError(f"{OP_NS}: identities never became Ready\n{env.operator_log()}")
    await env.wait_quiet(quiet=3.0, limit=300)
    out = []
    for _ in range(runs):
        fp0 = await fingerprints(env, OP_NS)
        lead = 6.0 + n * 0.025
        due = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)).replace(microsecond=0)
        due += dt.timedelta(seconds=1)
        stamp = rfc3339(due)

        async def make_due(key: str, stamp: str = stamp) -> None:
            ns, name = key.split("/", 1)
            patch = {"metadata": {"annotations": {RENEWAL: stamp}}}
            await env.api.patch("Secret", ns, name, patch)

        t_patch = time.monotonic()
        await gather_limited(list(fp0), make_due, 32)
        patch_seconds = time.monotonic() - t_patch
        await env.wait_quiet(quiet=2.0, limit=lead)
        wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
        late = wait < 0
        if wait > 0:
            await asyncio.sleep(wait)
        before, own0 = await env.request_totals(), env.own()
        t0 = time.monotonic()
        done_at = await follow_until(
            env,
            "Secret",
            OP_NS,
            lambda s: ((s.get("metadata") or {}).get("annotations") or {}).get(FINGERPRINT),
            _all_changed(fp0),
            120 + n,
            label_selector=CREDENTIAL_LABEL,
            metadata_only=True,
        )
        if done_at is None:
            raise RuntimeError(f"{OP_NS}: not every certificate rotated\n{env.operator_log()}")
        await env.wait_quiet(quiet=3.0, limit=300)
        after = await env.request_totals()
        reqs = minus(delta(after, before), env.own() - own0)
        out.append(
            {
                "seconds": round(done_at - t0, 3),
                "patch_seconds": round(patch_seconds, 2),
                "due_passed_before_patches_settled": late,
                "requests": non_watch(reqs),
                "requests_by_verb_resource_per_rotation": by_verb_resource(reqs, per=n),
            }
        )
    return out


async def floor_phase(env: Env, n: int, runs: int) -> list[dict[str, Any]]:
    if not env.issuers_work:
        return []
    floor = Floor(env.floor_api)
    await env.stop_operator()
    await env.ensure_namespace(FLOOR_NS, {"nhi.dev/bench-scenario": "3"})
    await floor.trust_bundle(FLOOR_NS)
    await gather_limited(items(FLOOR_NS, n), floor.provision, 32)
    bodies = await env.api.list("MachineIdentity", FLOOR_NS)
    out = []
    for _ in range(runs):
        before, own0 = await env.request_totals(), env.api.counts.copy()
        t0 = time.monotonic()
        await gather_limited(bodies, floor.rotate_x509, 32)
        seconds = time.monotonic() - t0
        after = await env.request_totals()
        reqs = minus(delta(after, before), env.api.counts - own0)
        out.append(
            {
                "seconds": round(seconds, 3),
                "requests": non_watch(reqs),
                "requests_by_verb_resource_per_rotation": by_verb_resource(reqs, per=n),
            }
        )
    await purge_namespace(env, FLOOR_NS)
    return out


def result(env: Env, n: int, floors: list[dict[str, Any]], ops: list[dict[str, Any]]) -> Result:
    res = Result("3", f"{n} certificates due at once")
    if not env.issuers_work:
        res.status = "skipped"
        res.notes.append("Not measured: no selfSigned ClusterIdentityIssuer became Ready.")
        return res
    res.details["n"] = n
    res.details["operator_runs"] = ops
    res.details["floor_runs"] = floors
    res.checks.append(
        ratio_check(
            "time until all rotated",
            "s",
            [r["seconds"] for r in ops],
            [r["seconds"] for r in floors],
            1.5,
        )
    )
    if any(r["due_passed_before_patches_settled"] for r in ops):
        res.notes.append(
            "In some run the due time passed before the operator had re-read all Secrets."
        )
    res.notes.append(
        "Due together by setting each Secret's nhi.dev/renewal-time to one instant T while the "
        "operator runs; the clock starts at T."
    )
    return res


def _all_changed(before: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """Has every Secret of ``before`` a new fingerprint?"""

    def done(now: dict[str, Any]) -> bool:
        return all(now.get(k) not in (None, v) for k, v in before.items())

    return done
