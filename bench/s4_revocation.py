"""Scenario 4: revocation latency, from a workload's deletion to its token failing review.

Measured only when the tree handles revocation (``nhi.dev/revoke`` in
operator/nhi/reconcilers/*.py). N identities, each with a bound token and one Deployment
matching spec.workloads.selector, revocation.gracePeriod "0s". The bench deletes the
Deployments one at a time at a fixed interval (so the numbers are latencies, not a queue
draining) and, every 0.2 s, sends a TokenReview for every token whose Deployment is gone and
lists the credential Secrets. Reported: deletion -> Secret gone (the operator's part) and
deletion -> TokenReview unauthenticated (what a relying party sees: it includes the API
server's token-authentication cache, 10 s for successful reviews by default).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any

from bench import manifests as m
from bench.env import RECONCILES, ROOT, Env, gather_limited
from bench.result import Check, Result, percentile
from nhi.models.meta import CREDENTIAL_LABEL

NS = "b4-rev"
#: The issue's target: p99 of deletion -> failing TokenReview, in seconds.
P99_TARGET = 2.0
AUDIENCE = m.token_credential("x")["audiences"][0]


def revocation_supported() -> tuple[bool, str]:
    found = []
    for path in sorted((ROOT / "operator" / "nhi" / "reconcilers").glob("*.py")):
        text = path.read_text()
        if re.search(r"nhi\.dev/revoke|REVOKE_ANNOTATION", text):
            found.append(path.relative_to(ROOT).as_posix())
    if found:
        return True, f"revocation handled in {', '.join(found)}"
    return False, "no nhi.dev/revoke handling in operator/nhi/reconcilers/*.py"


async def _reconciles(env: Env) -> float:
    return await env.operator.metric(RECONCILES) if env.operator is not None else 0.0


async def _workloads_seen(env: Env, n: int) -> int:
    items = await env.api.list("MachineIdentity", NS)
    return sum(
        1
        for i in items
        if m.is_ready(i) and ((i.get("status") or {}).get("workloads") or {}).get("count", 0) >= 1
    )


async def run(env: Env, n: int, interval: float) -> Result:
    res = Result("4", "Revocation latency (workload deleted, gracePeriod 0s)")
    ok, why = revocation_supported()
    res.details["detected"] = why
    if not ok:
        res.status = "skipped"
        res.notes.append(f"SKIPPED: {why}.")
        return res
    res.details["n"] = n
    res.details["interval_seconds"] = interval
    await env.ensure_namespace(NS, {"nhi.dev/bench-scenario": "4"})
    await env.ensure_operator()
    await env.wait_quiet(quiet=3.0, limit=600)
    names = [f"rev-{i:04d}" for i in range(n)]
    revocation = {"onWorkloadDeletion": "Revoke", "gracePeriod": "0s"}
    await gather_limited(
        [
            m.identity(NS, nm, x509=False, selector={"app": nm}, revocation=revocation)
            for nm in names
        ],
        env.api.apply,
        32,
    )
    await env.wait_quiet(quiet=3.0, limit=300)
    r0 = await _reconciles(env)
    deployments = [m.deployment(NS, nm, {"app": nm}, nm) for nm in names]
    await gather_limited(deployments, env.api.apply, 32)
    deadline = time.monotonic() + 120 + n
    while await _workloads_seen(env, n) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{NS}: identities never saw their workloads\n{env.operator_log()}")
        await asyncio.sleep(0.5)
    await env.wait_quiet(quiet=3.0, limit=300)
    r1 = await _reconciles(env)
    res.details["reconciles_per_workload_created"] = round((r1 - r0) / n, 1)

    async def token_of(nm: str) -> str:
        secret = await env.api.get("Secret", NS, f"{nm}-token")
        return base64.b64decode(((secret or {}).get("data") or {})["token"]).decode()

    async def review(token: str) -> dict[str, Any]:
        return await env.api.token_review(token, [AUDIENCE])

    tokens = dict(zip(names, await gather_limited(names, token_of, 16), strict=True))
    valid = await gather_limited(names, lambda nm: review(tokens[nm]), 16)
    res.details["tokens_valid_before"] = sum(1 for v in valid if v.get("authenticated"))
    if res.details["tokens_valid_before"] < n:
        raise RuntimeError(f"only {res.details['tokens_valid_before']} of {n} tokens pass review")
    # Let the API server's cache of those successful reviews expire before the clock starts.
    await asyncio.sleep(11.0)

    deleted: dict[str, float] = {}
    secret_gone: dict[str, float] = {}
    review_failed: dict[str, float] = {}
    stop = asyncio.Event()

    async def watcher() -> None:
        while not stop.is_set():
            pending = [nm for nm in deleted if nm not in review_failed or nm not in secret_gone]
            if pending:
                present = {
                    s["metadata"]["name"]
                    for s in await env.api.list("Secret", NS, label_selector=CREDENTIAL_LABEL)
                }
                now = time.monotonic()
                for nm in pending:
                    if nm not in secret_gone and f"{nm}-token" not in present:
                        secret_gone[nm] = now
                todo = [nm for nm in pending if nm not in review_failed]
                answers = await gather_limited(todo, lambda nm: review(tokens[nm]), 16)
                now = time.monotonic()
                for nm, answer in zip(todo, answers, strict=True):
                    if not answer.get("authenticated"):
                        review_failed[nm] = now
            await asyncio.sleep(0.2)

    r2 = await _reconciles(env)
    task = asyncio.create_task(watcher())
    try:
        for nm in names:
            await env.api.delete("Deployment", NS, nm)
            deleted[nm] = time.monotonic()
            await asyncio.sleep(interval)
        for _ in range(300):  # at most 60 s more
            if len(review_failed) >= n and len(secret_gone) >= n:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task
    await env.wait_quiet(quiet=3.0, limit=120)
    res.details["reconciles_per_workload_deleted"] = round((await _reconciles(env) - r2) / n, 1)
    res.notes.append(
        "A workload's event re-queues only the identities of its namespace whose selector "
        "matches it (before or after the change) or whose ServiceAccount it runs as "
        "(nhi.handlers.identity_cache.IdentityCache.requeue_for); reconciles_per_workload_* count "
        "the reconciles per workload with all N identities in one namespace."
    )
    gone = [secret_gone[nm] - deleted[nm] for nm in names if nm in secret_gone]
    failed = [review_failed[nm] - deleted[nm] for nm in names if nm in review_failed]
    res.details["secret_gone"] = len(gone)
    res.details["review_failed"] = len(failed)
    for label, vals in (
        ("deletion -> Secret gone", gone),
        ("deletion -> TokenReview fails", failed),
    ):
        res.checks.append(
            Check(f"{label} p50", "s", [round(percentile(vals, 50), 3)], "informational")
        )
    res.checks.append(
        Check(
            "deletion -> Secret gone p99",
            "s",
            [round(percentile(gone, 99), 3)],
            "informational (the operator's part)",
        )
    )
    # The target; a token that never failed review fails it.
    p99 = round(percentile(failed, 99), 3) if failed else 0.0
    res.checks.append(
        Check(
            "deletion -> TokenReview fails p99",
            "s",
            [p99],
            f"<= {P99_TARGET:g} s",
            ok=len(failed) == n and p99 <= P99_TARGET,
        )
    )
    if len(failed) < n:
        res.notes.append(f"{n - len(failed)} of {n} tokens still passed review 60 s after.")
    return res
