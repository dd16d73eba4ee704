"""Scenario 5: idle cost. N Ready identities, nothing due, for T minutes.

Counted from the API server's ``apiserver_request_total``: every request but watches and
other long-running ones (WATCH, WATCHLIST, CONNECT), less the bench's own, per minute. The
control plane's own lease heartbeats are shown apart and left out of the figure compared
with the target. The audit log (Metadata level, which names each request's User-Agent)
splits the same window by client as a cross-check.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from bench.env import (
    BACKGROUND_RESOURCES,
    BENCH_AGENT,
    FLOOR_AGENT,
    Env,
    by_verb_resource,
    delta,
    minus,
    non_watch,
)
from bench.objects import ready_count
from bench.result import Check, Result


def agent_family(agent: str) -> str:
    if agent.startswith((BENCH_AGENT.split("/")[0], FLOOR_AGENT.split("/")[0])):
        return "bench"
    if agent.startswith(("kopf/", "Python/")):
        return "operator"
    for name in ("kube-controller-manager", "kube-apiserver", "kubectl"):
        if agent.startswith(name):
            return name
    return "other"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def audit_counts(path: Path, offset: int) -> tuple[Counter[str], Counter[str]]:
    """Non-watch requests completed after ``offset`` in the audit log, by client family,
    and the operator's by verb and resource."""
    families: Counter[str] = Counter()
    operator: Counter[str] = Counter()
    if not path.exists():
        return families, operator
    with path.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") != "ResponseComplete" or ev.get("verb") == "watch":
                continue
            fam = agent_family(str(ev.get("userAgent", "")))
            families[fam] += 1
            if fam == "operator":
                ref = ev.get("objectRef") or {}
                res = ref.get("resource", "") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                operator[f"{ev.get('verb')} {res or ev.get('requestURI', '')}"] += 1
    return families, operator


async def run(env: Env, minutes: float) -> Result:
    res = Result("5", f"Idle cost over {minutes:g} min")
    await env.ensure_operator()
    await env.wait_quiet(quiet=5.0, limit=900, expect=await env.identities())
    ready, total = await ready_count(env, None)
    res.details["identities_ready"] = ready
    res.details["identities_total"] = total
    audit = Path(env.control_plane.audit_log)
    offset = _size(audit)
    before, own0 = await env.request_totals(), env.own()
    t0 = time.monotonic()
    rss = []
    while time.monotonic() - t0 < minutes * 60:
        await asyncio.sleep(min(5.0, minutes * 60 - (time.monotonic() - t0)))
        if env.operator is not None:
            rss.append(env.operator.rss()[0])
    elapsed_min = (time.monotonic() - t0) / 60
    after = await env.request_totals()
    reqs = minus(delta(after, before), env.own() - own0)
    background = {k: v for k, v in reqs.items() if k[1].split("/")[0] in BACKGROUND_RESOURCES}
    counted = {k: v for k, v in reqs.items() if k not in background}
    per_min = non_watch(counted) / elapsed_min
    fams, op_reqs = audit_counts(audit, offset)
    rotated = _size(audit) < offset
    res.details["requests_per_minute_by_verb_resource"] = by_verb_resource(counted, per=elapsed_min)
    res.details["lease_heartbeats_per_minute"] = round(non_watch(background) / elapsed_min, 2)
    res.details["audit_non_watch_per_minute_by_client"] = {
        k: round(v / elapsed_min, 2) for k, v in fams.most_common()
    }
    res.details["audit_operator_requests"] = dict(op_reqs.most_common())
    res.details["operator_rss_mb"] = round(max(rss), 1) if rss else None
    if rotated:
        res.notes.append("The audit log rotated during the window: its split is incomplete.")
    res.checks.append(
        Check(
            "apiserver requests per minute beyond watches",
            "req/min",
            [round(per_min, 2)],
            "<= 5 /min",
            ok=per_min <= 5.0,
        )
    )
    res.notes.append(
        "Leases (the control plane's own heartbeats) are excluded; everything else the API "
        "server served in the window, but the bench's own requests, is counted."
    )
    return res
