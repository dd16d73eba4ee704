"""Scenario 10: N AccessGrants expiring in the same second, all removed within 5 seconds.

An IdentityPolicy approves read-only grants automatically in the scenario's namespace. N
grants (spread over N/50 identities) are scheduled with the same ``startAt`` (a whole second)
and the same duration, so their windows open and close together however long activating
them takes. Measured: from the second they expire to the moment the last of their Roles and
RoleBindings is gone, polled every 0.1 s; then the time until every grant says Expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from bench import manifests as m
from bench.env import Env, gather_limited
from bench.result import Check, Result

NS = "b10-grants"
#: The issue's target: every permission of grants expiring together gone within this.
TARGET_SECONDS = 5.0
PER_IDENTITY = 50
READ = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
POLICY = "bench-grants"


def policy() -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {"nhi.dev/bench-scenario": "10"}},
            "requireOwner": False,
            "grants": {"autoApprove": {"maxDuration": "1h", "verbs": ["get"]}},
        },
    }


def grant(name: str, identity: str, start: dt.datetime, duration: str) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "AccessGrant",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "identityRef": {"name": identity},
            "rules": [READ],
            "duration": duration,
            "startAt": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": "benchmark",
        },
    }


async def _children(env: Env) -> int:
    roles, bindings = await asyncio.gather(
        env.api.list("Role", NS, label_selector="nhi.dev/grant"),
        env.api.list("RoleBinding", NS, label_selector="nhi.dev/grant"),
    )
    return len(roles) + len(bindings)


async def _phases(env: Env) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in await env.api.list("AccessGrant", NS):
        phase = str((g.get("status") or {}).get("phase") or "")
        out[phase] = out.get(phase, 0) + 1
    return out


async def run(env: Env, n: int, small: bool) -> Result:
    res = Result("10", f"{n} AccessGrants expiring in the same second")
    res.details["n"] = n
    # As the chart installs them: who asked for each grant is recorded at admission.
    await asyncio.to_thread(env.control_plane.install_grant_policies)
    await env.ensure_namespace(NS, {"nhi.dev/bench-scenario": "10"})
    await env.ensure_operator()
    await env.api.apply(policy())
    identities = [f"jit-{i:03d}" for i in range(max(1, n // PER_IDENTITY))]
    await gather_limited(
        [m.identity(NS, name, token=False, x509=False) for name in identities], env.api.apply, 32
    )
    await env.wait_quiet(quiet=3.0, limit=300)
    # Time to create them all and see them approved, then the window opens for everyone.
    lead = 15 if small else 60
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)).replace(microsecond=0)
    duration = 60 if small else 120
    expiry = start + dt.timedelta(seconds=duration)
    grants = [
        grant(f"g-{i:04d}", identities[i % len(identities)], start, f"{duration}s")
        for i in range(n)
    ]
    t_create = time.monotonic()
    await gather_limited(grants, env.api.apply, 32)
    res.details["create_seconds"] = round(time.monotonic() - t_create, 1)
    # Wait until every grant is Active and every Role and RoleBinding exists.
    while True:
        phases = await _phases(env)
        if phases.get("Active", 0) == n and await _children(env) == 2 * n:
            break
        if dt.datetime.now(dt.UTC) > expiry - dt.timedelta(seconds=5):
            raise RuntimeError(f"grants not all Active before their expiry: {phases}")
        await asyncio.sleep(0.5)
    res.details["all_active_after_start_seconds"] = round(
        (dt.datetime.now(dt.UTC) - start).total_seconds(), 1
    )
    # From the expiry second: poll until nothing is left.
    await asyncio.sleep(max(0.0, (expiry - dt.datetime.now(dt.UTC)).total_seconds()))
    gone = None
    expired = None
    deadline = time.monotonic() + 120
    while (gone is None or expired is None) and time.monotonic() < deadline:
        elapsed = (dt.datetime.now(dt.UTC) - expiry).total_seconds()
        if gone is None and await _children(env) == 0:
            gone = elapsed
        if expired is None and (await _phases(env)).get("Expired", 0) == n:
            expired = elapsed
        await asyncio.sleep(0.1)
    if gone is None:
        raise RuntimeError(f"{await _children(env)} Roles/RoleBindings left 120 s after expiry")
    res.checks.append(
        Check(
            "expiry -> every Role and RoleBinding gone",
            "s",
            [round(gone, 2)],
            f"<= {TARGET_SECONDS:g} s",
            ok=gone <= TARGET_SECONDS,
        )
    )
    if expired is not None:
        res.checks.append(
            Check("expiry -> every grant Expired", "s", [round(expired, 2)], "informational")
        )
    await env.api.delete("IdentityPolicy", None, POLICY)
    await env.delete_namespace(NS)
    return res
