"""``nhi inventory`` and ``nhi report``: the inventory computed live from the API server.

The objects are listed (as the operator's discovery watches them: ServiceAccounts,
workloads, RBAC, namespaces, MachineIdentities, and Secrets of the legacy-token and TLS
types only), reduced to the same records at once (a TLS Secret to its certificate's
metadata), and handed to the same pure rules (:mod:`nhi.policies`). Nothing is written. No
Secret value is printed nor kept: the records hold none.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.cli.render import dump, render_table
from nhi.cli.report_html import TIMING_LABELS, used_text
from nhi.cli.timings import Timing
from nhi.cli.timings import read as read_timings
from nhi.crypto.metadata import tls_secret_certificate
from nhi.k8s.client import Api, path_for
from nhi.models.discovered import Identity
from nhi.models.duration import rfc3339
from nhi.models.inventory import (
    OPAQUE_TYPE,
    SEVERITIES,
    TLS_TYPE,
    TOKEN_TYPE,
    Finding,
    TlsSecretInfo,
    managed_identity_from_body,
    meta_from_body,
    opaque_secret_from_body,
    service_account_from_body,
    token_secret_from_body,
    workload_from_body,
)
from nhi.models.inventory_config import InventoryConfig
from nhi.models.inventory_rbac import binding_from_body, role_from_body
from nhi.models.workload import WORKLOAD_KINDS
from nhi.policies.findings import evaluate
from nhi.policies.inventory import Inventory, Observed, build
from nhi.policies.kpis import Kpis, compute
from nhi.runtime.informer import METADATA_LIST


async def _list(
    api: Api,
    kind: str,
    namespace: str | None,
    field_selector: str = "",
    metadata_only: bool = False,
) -> list[dict[str, Any]]:
    params = {"limit": "500"}
    if field_selector:
        params["fieldSelector"] = field_selector
    accept = METADATA_LIST if metadata_only else None
    items: list[dict[str, Any]] = []
    while True:
        page = await api.request(
            "GET", path_for(kind, namespace), params=params, accept=accept, kind=kind
        )
        items += page.get("items") or []
        cont = (page.get("metadata") or {}).get("continue")
        if not cont:
            return items
        params["continue"] = str(cont)


def _tls(obj: Mapping[str, Any]) -> TlsSecretInfo:
    cert, problem = tls_secret_certificate(obj.get("data"))
    return TlsSecretInfo(meta=meta_from_body(obj), certificate=cert, problem=problem)


async def gather(api: Api, namespace: str | None) -> Observed:
    """List what the inventory needs, in ``namespace`` (None: every namespace)."""
    kinds = ("ServiceAccount", "Role", "RoleBinding", *WORKLOAD_KINDS)
    lists = await asyncio.gather(
        *(_list(api, k, namespace) for k in kinds),
        _list(api, "ClusterRole", None),
        _list(api, "ClusterRoleBinding", None),
        _list(api, "Secret", namespace, f"type={TOKEN_TYPE}"),
        _list(api, "Secret", namespace, f"type={TLS_TYPE}"),
        _list(api, "Namespace", None),
        _identities(api, namespace),
        # Metadata only: no value of an Opaque Secret is read.
        _list(api, "Secret", namespace, f"type={OPAQUE_TYPE}", metadata_only=True),
    )
    got = dict(zip((*kinds, "ClusterRole", "ClusterRoleBinding"), lists, strict=False))
    tokens, tls, namespaces, identities, opaque = lists[len(kinds) + 2 :]
    workloads = [w for k in WORKLOAD_KINDS for w in (workload_from_body(k, b) for b in got[k]) if w]
    bindings = [
        b
        for k in ("RoleBinding", "ClusterRoleBinding")
        for b in (binding_from_body(k, o) for o in got[k])
        if b
    ]
    roles = [role_from_body(k, o) for k in ("Role", "ClusterRole") for o in got[k]]
    sas = [service_account_from_body(o) for o in got["ServiceAccount"]]
    return Observed(
        service_accounts={(s.meta.namespace, s.meta.name): s for s in sas},
        workloads=workloads,
        tokens=[token_secret_from_body(o) for o in tokens],
        tls=[_tls(o) for o in tls],
        secrets=[opaque_secret_from_body(o) for o in opaque],
        roles={r.ref: r for r in roles},
        bindings=bindings,
        namespaces={m.name: m for m in (meta_from_body(o) for o in namespaces)},
        identities=[managed_identity_from_body(o) for o in identities],
        scope=(namespace,) if namespace else (),
    )


async def _identities(api: Api, namespace: str | None) -> list[dict[str, Any]]:
    from nhi.k8s.client import NotFound

    try:
        return await _list(api, "MachineIdentity", namespace)
    except NotFound:  # the CRDs are not installed: every identity is unmanaged
        return []


@dataclass(frozen=True)
class Result:
    inventory: Inventory
    findings: tuple[Finding, ...]
    kpis: Kpis


def compute_all(observed: Observed, config: InventoryConfig, now: dt.datetime) -> Result:
    inv = build(observed, config)
    findings = evaluate(inv, config, now)
    return Result(inv, findings, compute(inv, findings, now))


# ------------------------------------------------------------------------------ inventory


def _findings_of(ident: Identity, findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if ident.ref in f.objects]


def identity_dict(ident: Identity, findings: Sequence[Finding]) -> dict[str, Any]:
    return {
        "namespace": ident.namespace,
        "name": ident.name,
        "state": ident.state,
        "owner": ident.owner,
        "ownerSource": ident.owner_source,
        "managedBy": str(ident.managed_by) if ident.managed_by else "",
        "created": rfc3339(ident.created) if ident.created else "",
        "workloads": [str(w.ref) for w in ident.workloads],
        "bindings": [
            {
                "binding": str(g.binding),
                "role": str(g.role),
                "scope": g.namespace or "cluster",
                **({"group": g.group} if g.group else {}),
                **({"roleMissing": True} if not g.role_found else {}),
            }
            for g in ident.grants
        ],
        "permissions": [
            {
                "scope": ns or "cluster",
                "verbs": list(r.verbs),
                **({"apiGroups": list(r.api_groups)} if r.api_groups else {}),
                **({"resources": list(r.resources)} if r.resources else {}),
                **({"resourceNames": list(r.resource_names)} if r.resource_names else {}),
                **({"nonResourceURLs": list(r.non_resource_urls)} if r.non_resource_urls else {}),
            }
            for ns, r in ident.permissions()
        ],
        "legacyTokens": [
            {
                "secret": t.meta.name,
                "created": rfc3339(t.meta.created) if t.meta.created else "",
                "lastUsed": t.last_used.isoformat() if t.last_used else "",
            }
            for t in ident.tokens
        ],
        "findings": [finding_dict(f) for f in _findings_of(ident, findings)],
    }


def finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "risk": f.risk,
        "severity": f.severity,
        "namespace": f.namespace,
        "objects": [str(o) for o in f.objects],
        "message": f.message,
        "fix": f.fix,
    }


def select(
    result: Result, state: str | None, owner: str | None, risk: str | None
) -> list[Identity]:
    out = []
    for ident in result.inventory.identities:
        if state and ident.state != state:
            continue
        if owner and ident.owner != owner:
            continue
        if risk and not any(f.risk == risk for f in _findings_of(ident, result.findings)):
            continue
        out.append(ident)
    return out


def _worst(findings: Sequence[Finding]) -> str:
    if not findings:
        return "-"
    worst = min(findings, key=lambda f: SEVERITIES.index(f.severity))
    return f"{len(findings)} ({worst.severity})"


def render_inventory(result: Result, identities: Sequence[Identity], fmt: str) -> str:
    if fmt != "table":
        return dump([identity_dict(i, result.findings) for i in identities], fmt)
    rows = [
        [
            i.namespace,
            i.name,
            i.state,
            i.owner,
            str(len(i.workloads)),
            ",".join(sorted({g.role.name for g in i.grants})) or "-",
            str(len(i.tokens)),
            _worst(_findings_of(i, result.findings)),
        ]
        for i in identities
    ]
    headers = ("NAMESPACE", "SERVICEACCOUNT", "STATE", "OWNER", "WORKLOADS", "ROLES", "TOKENS")
    return render_table((*headers, "FINDINGS"), rows)


# ------------------------------------------------------------------------------ report


def kpi_dict(k: Kpis) -> dict[str, Any]:
    return {
        "identities": k.identities,
        "coverage": round(k.coverage, 4),
        "inUse": k.in_use,
        "managedInUse": k.managed_in_use,
        "ownerCoverage": round(k.owner_coverage, 4),
        "permissionsUsed": None if k.permissions_used is None else round(k.permissions_used, 4),
        "rulesWeighed": k.rules_weighed,
        "rulesUsed": k.rules_used,
        "credentialAges": dict(k.credential_ages),
        "findingsByRisk": k.findings_by_risk,
        "findingsBySeverity": k.findings_by_severity,
    }


def filter_findings(
    findings: Sequence[Finding], risk: str | None, severity: str | None
) -> list[Finding]:
    return [
        f
        for f in findings
        if (not risk or f.risk == risk) and (not severity or f.severity == severity)
    ]


def render_report(
    result: Result,
    findings: Sequence[Finding],
    fmt: str,
    now: dt.datetime,
    timings: Mapping[str, Timing] | None = None,
) -> str:
    """``timings``: time-to-rotate and time-to-revoke read from Prometheus (--prometheus)."""
    if fmt in ("json", "yaml"):
        kpis = kpi_dict(result.kpis)
        for name, timing in (timings or {}).items():
            kpis[name] = timing.as_dict()
        data = {
            "generated": rfc3339(now),
            "kpis": kpis,
            "findings": [finding_dict(f) for f in findings],
        }
        return dump(data, fmt)
    if fmt == "html":
        from nhi.cli.report_html import render_html

        return render_html(result.kpis, findings, now, timings)
    k = result.kpis
    lines = [
        f"Identities: {k.identities}   coverage: {k.coverage:.0%} "
        f"({k.managed_in_use}/{k.in_use} used ServiceAccounts managed)   "
        f"owner coverage: {k.owner_coverage:.0%}   permissions used: {used_text(k)}",
        "Credential ages: " + ", ".join(f"{b}: {n}" for b, n in k.credential_ages),
        *(f"{TIMING_LABELS[name]}: {timing.text()}" for name, timing in (timings or {}).items()),
        "Open findings by risk: "
        + (", ".join(f"{r}: {n}" for r, n in k.findings_by_risk.items()) or "none"),
        "",
    ]
    rows = [
        [f.severity, f.risk, f.rule, f.namespace or "(cluster)", str(f.subject), f.message]
        for f in sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f))
    ]
    headers = ("SEVERITY", "RISK", "RULE", "NAMESPACE", "OBJECT", "MESSAGE")
    return "\n".join(lines) + render_table(headers, rows)


# ------------------------------------------------------------------------------ commands


def load_config(path: str | None) -> InventoryConfig:
    """The inventory's settings from a YAML file (the operator's --inventory-config)."""
    if not path:
        return InventoryConfig()
    import yaml

    from nhi.cli.errors import CliError
    from nhi.models.fields import SpecError
    from nhi.models.inventory_config import parse_config

    try:
        with open(path, encoding="utf-8") as f:
            return parse_config(yaml.safe_load(f))
    except (OSError, yaml.YAMLError, SpecError) as err:
        raise CliError(f"--config {path}: {err}") from None


async def inventory(
    api: Api,
    namespace: str | None,
    state: str | None,
    owner: str | None,
    risk: str | None,
    output: str,
    config: str | None,
) -> int:
    now = dt.datetime.now(dt.UTC)
    result = compute_all(await gather(api, namespace), load_config(config), now)
    print(render_inventory(result, select(result, state, owner, risk), output))
    return 0


async def report(
    api: Api,
    namespace: str | None,
    risk: str | None,
    severity: str | None,
    output: str,
    config: str | None,
    prometheus: str | None = None,
    window: str = "7d",
) -> int:
    now = dt.datetime.now(dt.UTC)
    timings = await read_timings(prometheus, window) if prometheus else None
    result = compute_all(await gather(api, namespace), load_config(config), now)
    findings = filter_findings(result.findings, risk, severity)
    print(render_report(result, findings, output, now, timings))
    return 0
