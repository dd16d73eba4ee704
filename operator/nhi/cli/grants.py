"""``nhi grant``: list, show, approve, deny and revoke AccessGrants.

Approving and denying set ``spec.approval``; the API server records who decided and refuses
the requester and anyone without the ``approve`` verb on ``accessgrants/approval`` (its
message is shown as it is). Revoking sets ``spec.revoked``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.cli.errors import CliError
from nhi.cli.render import ago, dump, expires_in, parse_moment, pick, render_kv, render_table
from nhi.k8s.client import Api, path_for

KIND = "AccessGrant"


def _out(text: str) -> None:
    print(text, file=sys.stdout)


async def _get(api: Api, namespace: str, name: str) -> dict[str, Any]:
    obj = await api.get(KIND, namespace, name)
    if obj is None:
        raise CliError(f'accessgrant "{name}" not found in namespace {namespace}')
    return obj


async def decide(api: Api, namespace: str, name: str, decision: str, message: str) -> int:
    """Approve or deny: one merge patch of ``spec.approval``."""
    grant = await _get(api, namespace, name)
    phase = pick(grant, "status", "phase") or ""
    if phase in ("Expired", "Revoked"):
        raise CliError(f"accessgrant {namespace}/{name} is {phase}: ask for a new grant")
    approval: dict[str, Any] = {"decision": decision}
    if message:
        approval["message"] = message
    await api.patch(KIND, namespace, name, {"spec": {"approval": approval}})
    _out(f"accessgrant {namespace}/{name} {decision.lower()}")
    return 0


async def revoke(api: Api, namespace: str, name: str) -> int:
    await _get(api, namespace, name)
    await api.patch(KIND, namespace, name, {"spec": {"revoked": True}})
    _out(f"accessgrant {namespace}/{name} revoked: its permissions go now")
    return 0


def rows(items: Sequence[Mapping[str, Any]], now: dt.datetime, all_ns: bool) -> list[list[str]]:
    out = []
    for g in sorted(
        items,
        key=lambda g: (pick(g, "metadata", "namespace") or "", pick(g, "metadata", "name") or ""),
    ):
        phase = str(pick(g, "status", "phase") or "Pending")
        expires = parse_moment(pick(g, "status", "expiresAt"))
        row = [
            str(pick(g, "metadata", "name") or ""),
            str(pick(g, "spec", "identityRef", "name") or ""),
            phase,
            expires_in(expires, now) if phase == "Active" else "-",
            str(pick(g, "spec", "requester") or "-"),
            str(pick(g, "status", "approvedBy") or "-"),
            ago(parse_moment(pick(g, "metadata", "creationTimestamp")), now),
        ]
        if all_ns:
            row.insert(0, str(pick(g, "metadata", "namespace") or ""))
        out.append(row)
    return out


HEADERS = ["NAME", "IDENTITY", "PHASE", "EXPIRES", "REQUESTER", "APPROVER", "AGE"]


async def list_grants(api: Api, namespace: str | None, output: str) -> int:
    page = await api.request("GET", path_for(KIND, namespace), kind=KIND)
    items = list(page.get("items") or [])
    if output != "table":
        _out(dump([summary(g) for g in items], output))
        return 0
    if not items:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        _out(f"No AccessGrants in {where}.")
        return 0
    headers = (["NAMESPACE"] if namespace is None else []) + HEADERS
    _out(render_table(headers, rows(items, dt.datetime.now(dt.UTC), namespace is None)))
    return 0


def summary(g: Mapping[str, Any]) -> dict[str, Any]:
    """What a person checks about a grant: who, what, for how long, who decided, when."""
    spec = g.get("spec") or {}
    status = g.get("status") or {}
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
    )
    return {
        "name": pick(g, "metadata", "name"),
        "namespace": pick(g, "metadata", "namespace"),
        "identity": pick(spec, "identityRef", "name"),
        "phase": status.get("phase") or "Pending",
        "reason": spec.get("reason"),
        "requester": spec.get("requester"),
        "duration": spec.get("duration"),
        "startAt": spec.get("startAt"),
        "rules": spec.get("rules") or [],
        "roleRefs": spec.get("roleRefs") or [],
        "decision": pick(spec, "approval", "decision"),
        "approvedBy": status.get("approvedBy"),
        "approvedAt": status.get("approvedAt"),
        "activatedAt": status.get("activatedAt"),
        "expiresAt": status.get("expiresAt"),
        "endedAt": status.get("endedAt"),
        "why": ready.get("message"),
    }


async def show(api: Api, namespace: str, name: str, output: str) -> int:
    data = summary(await _get(api, namespace, name))
    if output != "table":
        _out(dump(data, output))
        return 0
    pairs = [(k, v) for k, v in data.items() if v not in (None, [], "")]
    pairs = [(k, json.dumps(v) if isinstance(v, list) else v) for k, v in pairs]
    _out(render_kv(pairs))
    return 0
