"""Scenario 2: restart the operator with M Ready identities.

Targets (absolute, from the issue): zero credentials re-issued (every credential Secret's
``nhi.dev/fingerprint`` annotation compared before and after), steady state within 30 s of
the process start (the last apiserver write request, leases aside, and the last reconcile the
operator's own metric counted), and an operator RSS of at most 250 MB (VmRSS / VmHWM from
/proc, sampled every 0.5 s).

The M identities are the operator's own: scenario 1's are reused, the rest are provisioned
here (that provisioning is timed too, as throughput at scale, for information).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import manifests as m
from bench.env import RECONCILES, Env, by_verb_resource, delta, minus, writes
from bench.objects import apply_all, fingerprints, ready_count
from bench.result import Check, Result

PREFIX = "b2-"
CHUNK = 1000  # identities per namespace


async def ensure_identities(env: Env, m_total: int) -> dict[str, Any]:
    """At least ``m_total`` Ready identities made by the operator; provision what is missing."""
    await env.ensure_operator()
    ready, total = await ready_count(env, None)
    missing = max(0, m_total - total)
    info: dict[str, Any] = {"reused": total, "provisioned": missing}
    if missing:
        t0 = time.monotonic()
        k = 0
        while missing > 0:
            ns = f"{PREFIX}{k}"
            have = len(await env.api.list("MachineIdentity", ns))
            take = min(CHUNK - have, missing)
            if take > 0:
                await env.ensure_namespace(ns, {"nhi.dev/bench-scenario": "2"})
                items = [
                    m.identity(ns, f"id-{i:05d}", x509=env.issuers_work)
                    for i in range(have, have + take)
                ]
                await apply_all(env, items, 32)
                missing -= take
            k += 1
        want = ready + info["provisioned"]  # revoked identities (scenario 4) stay not Ready
        ready, total = await ready_count(env, None)
        deadline = time.monotonic() + 120 + m_total * 0.5
        while ready < want and time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            ready, total = await ready_count(env, None)
        secs = time.monotonic() - t0
        info["provision_seconds"] = round(secs, 1)
        info["provision_per_second"] = round(info["provisioned"] / secs, 1)
    info["ready"], info["total"] = ready, total
    await env.wait_quiet(quiet=5.0, limit=900)
    return info


async def restart_once(env: Env, quiet: float, limit: float) -> dict[str, Any]:
    await env.stop_operator()
    await asyncio.sleep(1.0)
    expect = await env.identities()
    before, own0 = await env.request_totals(), env.own()
    op = await env.start_operator()
    t0 = op.started_at
    healthy = time.monotonic() - t0
    last_write = last_rec = t0
    first_rec: float | None = None
    steady = False
    prev_w, prev_r = -1, -1.0
    rss_samples = []
    while True:
        totals = await env.request_totals()
        w = writes(minus(delta(totals, before), env.own() - own0))
        r = await op.metric(RECONCILES)
        rss, hwm = op.rss()
        rss_samples.append(rss)
        now = time.monotonic()
        if w != prev_w:
            last_write, prev_w = now, w
        if r != prev_r:
            last_rec, prev_r = now, r
            if first_rec is None and r > 0:
                first_rec = now
        if now - max(last_write, last_rec) >= quiet and r >= expect:
            steady = True
            break
        if now - t0 > limit:
            break
        await asyncio.sleep(0.5)
    after = await env.request_totals()
    reqs = minus(delta(after, before), env.own() - own0)
    _, hwm = op.rss()
    return {
        "healthy_seconds": round(healthy, 2),
        "first_reconcile_seconds": round(first_rec - t0, 2) if first_rec else None,
        "steady_reached": steady,
        "cap_seconds": limit,
        "last_write_seconds": round(last_write - t0, 2) if prev_w > 0 else 0.0,
        "last_reconcile_seconds": round(last_rec - t0, 2),
        "steady_seconds": round(max(last_write, last_rec) - t0, 2),
        "writes": writes(reqs),
        "reconciles": r,
        "identities": expect,
        "rss_mb_end": round(rss_samples[-1], 1),
        "rss_mb_peak": round(max([*rss_samples, hwm]), 1),
        "requests_by_verb_resource": by_verb_resource(reqs),
        "observed_seconds": round(time.monotonic() - t0, 1),
    }


async def run(env: Env, m_total: int, runs: int, small: bool) -> Result:
    res = Result("2", f"Restart the operator with {m_total} Ready identities")
    res.details["m"] = m_total
    res.details["setup"] = await ensure_identities(env, m_total)
    fp_before = await fingerprints(env)
    res.details["credential_secrets"] = len(fp_before)
    restarts = []
    quiet = 8.0 if small else 15.0
    for _ in range(runs):
        restarts.append(await restart_once(env, quiet=quiet, limit=60.0 if small else 150.0))
    fp_after = await fingerprints(env)
    reissued = sorted(k for k, v in fp_before.items() if fp_after.get(k) != v)
    res.details["restarts"] = restarts
    res.details["reissued_examples"] = reissued[:10]
    res.checks.append(
        Check("credentials re-issued", "", [float(len(reissued))], "0", ok=len(reissued) == 0)
    )
    # A restart that never settled within the cap counts as the cap (a lower bound).
    steady = [r["steady_seconds"] if r["steady_reached"] else r["cap_seconds"] for r in restarts]
    settled = all(r["steady_reached"] for r in restarts)
    res.checks.append(
        Check(
            "steady state after process start" + ("" if settled else " (>= cap: not reached)"),
            "s",
            [float(s) for s in steady],
            "<= 30 s",
            ok=sorted(steady)[len(steady) // 2] <= 30.0 and settled,
        )
    )
    firsts = [r["first_reconcile_seconds"] for r in restarts]
    res.checks.append(
        Check(
            "first reconcile after process start",
            "s",
            [
                float(f) if f is not None else float(r["cap_seconds"])
                for f, r in zip(firsts, restarts, strict=True)
            ],
            "informational",
        )
    )
    if not settled:
        res.notes.append(
            "Some restart had not reconciled every identity when the observation window "
            "ended (cap_seconds): its steady-state time is recorded as the cap, a lower bound."
        )
    peaks = [r["rss_mb_peak"] for r in restarts]
    res.checks.append(
        Check("operator RSS (peak)", "MB", peaks, "<= 250 MB", ok=max(peaks) <= 250.0)
    )
    res.notes.append(
        "Steady state: the last apiserver write request (leases aside) or the last reconcile "
        "counted by nhi_reconcile_duration_seconds, after which nothing happened for "
        f"{quiet:.0f} s."
    )
    return res
