"""Scenario 9: discovery and inventory at scale.

A cluster with N namespaces, each with 10 ServiceAccounts, 10 RoleBindings (one per
ServiceAccount), 25 Secrets (2.5 legacy token Secrets, 2.5 TLS Secrets and 20 Opaque ones on
average); the issue's size is N = 2,000 (20,000 ServiceAccounts, 50,000 Secrets of which 5,000
legacy tokens and 5,000 TLS, 20,000 RoleBindings). The operator starts with ``--discovery``
over those namespaces, with the MachineIdentities already there (scenario 2's, when it ran).

Measured: the seconds from the operator's start to its first complete inventory (every
ServiceAccount counted in ``nhi_inventory_identities``); then, once the first reports are
written and the API server is quiet, the seconds from a change (cluster-admin bound to one
ServiceAccount) to its finding in that namespace's PolicyReport; the operator's peak RSS.
Targets: 60 s, 5 s, 400 MB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from bench.env import Env, gather_limited
from bench.result import Check, Result
from nhi.crypto import build_self_signed_ca, cert_pem, generate_key

PREFIX = "nhi-inv-"
SA_PER_NS = 10
TARGET_FIRST = 60.0
TARGET_CHANGE = 5.0
TARGET_RSS = 400.0


def _objects(ns: str, i: int, crt: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j in range(SA_PER_NS):
        sa = f"sa-{j}"
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": ns},
            }
        )
        out.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"rb-{j}", "namespace": ns},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "view",
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
            }
        )
    # 2 or 3 of each kind of credential Secret (2.5 on average), 20 Opaque ones.
    creds = 3 if i % 2 else 2
    for j in range(creds):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "name": f"legacy-{j}",
                    "namespace": ns,
                    "annotations": {"kubernetes.io/service-account.name": f"sa-{j}"},
                },
            }
        )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": f"tls-{j}", "namespace": ns},
                "data": {"tls.crt": crt, "tls.key": "bm90LWEta2V5"},
            }
        )
    for j in range(20):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": f"opaque-{j}", "namespace": ns},
                "stringData": {"v": "x"},
            }
        )
    return out


async def _populate(env: Env, namespaces: int) -> float:
    import base64

    cert = build_self_signed_ca(
        "bench", generate_key(), dt.datetime.now(dt.UTC), dt.timedelta(days=800)
    )
    crt = base64.b64encode(cert_pem(cert)).decode()
    started = time.monotonic()
    names = [f"{PREFIX}{i}" for i in range(namespaces)]
    await gather_limited(names, env.ensure_namespace, 32)
    objs = [o for i, ns in enumerate(names) for o in _objects(ns, i, crt)]
    await gather_limited(objs, env.api.apply, 32)
    return time.monotonic() - started


async def _finding(env: Env, ns: str, rule: str, limit: float) -> float | None:
    """Monotonic time the report of ``ns`` first held ``rule``, polled every 0.1 s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = await env.api.get("PolicyReport", ns, "nhi-inventory")
        if any(r.get("rule") == rule for r in (body or {}).get("results") or []):
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


async def run(env: Env, namespaces: int) -> Result:
    res = Result("9", f"Inventory of {namespaces} namespaces")
    env.control_plane.install_report_crds()
    res.details["populate_seconds"] = round(await _populate(env, namespaces), 1)
    expected = namespaces * (SA_PER_NS + 1)  # and each namespace's default
    res.details["objects"] = {
        "namespaces": namespaces,
        "service_accounts": expected,
        "role_bindings": namespaces * SA_PER_NS,
        "secrets": namespaces * 25,
    }
    await env.stop_operator()
    started = time.monotonic()
    op = await env.start_operator("--discovery", f"--discovery-namespace={PREFIX}*")
    first = None
    while time.monotonic() - started < 600:
        counted = await op.metric("nhi_inventory_identities")
        if counted >= expected and await op.metric("nhi_inventory_last_run_timestamp_seconds"):
            first = time.monotonic() - started
            break
        op.rss()
        await asyncio.sleep(0.2)
    res.details["identities_counted"] = await op.metric("nhi_inventory_identities")
    # The first run writes one report per namespace: the change is measured once they are
    # written (steady state), as a user would see it.
    settled = await env.wait_quiet(quiet=2.0, limit=600)
    res.details["reports_written_seconds"] = round(settled - started, 1)
    # A change: cluster-admin bound to one ServiceAccount.
    ns = f"{PREFIX}{namespaces // 2}"
    await env.api.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{ns}-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "sa-1", "namespace": ns}],
        }
    )
    changed = time.monotonic()
    seen = await _finding(env, ns, "cluster-admin-binding", 120)
    change = None if seen is None else seen - changed
    rss, _ = op.rss()
    res.details["operator_rss_mb"] = round(rss, 1)
    res.details["operator_peak_rss_mb"] = round(op.peak_rss_mb, 1)
    res.checks.append(
        Check(
            "first complete inventory after start",
            "s",
            [round(first, 2)] if first is not None else [],
            f"<= {TARGET_FIRST:g} s",
            ok=first is not None and first <= TARGET_FIRST,
        )
    )
    res.checks.append(
        Check(
            "a change reflected in its finding",
            "s",
            [round(change, 2)] if change is not None else [],
            f"<= {TARGET_CHANGE:g} s",
            ok=change is not None and change <= TARGET_CHANGE,
        )
    )
    res.checks.append(
        Check(
            "operator peak RSS",
            "MB",
            [round(op.peak_rss_mb, 1)],
            f"<= {TARGET_RSS:g} MB",
            ok=op.peak_rss_mb <= TARGET_RSS,
        )
    )
    await env.api.delete("ClusterRoleBinding", None, f"{ns}-admin")
    await env.stop_operator()
    if namespaces < 2000:
        res.notes.append("Smaller than the issue's 2,000 namespaces: --n9 2000 runs them.")
    return res
