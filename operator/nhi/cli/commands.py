"""The ``nhi`` commands that talk to the API server.

Each command reads or annotates objects through :class:`nhi.k8s.client.Api` and prints the
result; formatting is done by the pure modules (status, inspection, history, render). Problems
the user can act on are raised as :class:`CliError`.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import Any

from nhi.cli import history as hist
from nhi.cli import inspection
from nhi.cli import status as st
from nhi.cli.errors import CliError
from nhi.cli.render import dump
from nhi.k8s.client import Api, NotFound, path_for
from nhi.models.meta import RENEW_ANNOTATION, REVOKE_ANNOTATION, Phase

KIND = "MachineIdentity"
#: Field manager of the CLI's writes (annotations), distinct from the operator's.
FIELD_MANAGER = "nhi-cli"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def renew_value(now: dt.datetime) -> str:
    """The renew-requested-at value: RFC 3339 with microseconds, so every request is distinct."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _where(namespace: str | None) -> str:
    return "in any namespace" if namespace is None else f"in namespace {namespace}"


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _out(text: str) -> None:
    print(text, file=sys.stdout)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


async def get_identity(api: Api, namespace: str, name: str) -> dict[str, Any]:
    obj = await api.get(KIND, namespace, name)
    if obj is None:
        raise CliError(f'machineidentity "{name}" not found in namespace {namespace}')
    return obj


async def list_identities(
    api: Api, namespace: str | None, selector: str | None = None
) -> list[dict[str, Any]]:
    try:
        items = await api.list(KIND, namespace, label_selector=selector)
    except NotFound:
        raise CliError(
            "the MachineIdentity API (nhi.dev/v1alpha1) is not installed in this cluster"
        ) from None
    return sorted(items, key=_key)


async def _annotate(api: Api, obj: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    try:
        await api.request(
            "PATCH",
            path_for(KIND, meta.get("namespace"), name),
            body={"metadata": {"annotations": dict(annotations)}},
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/merge-patch+json",
            kind=KIND,
            name=name,
        )
    except NotFound:
        raise CliError(
            f'machineidentity "{name}" not found in namespace {meta.get("namespace")}'
        ) from None


# ------------------------------------------------------------------------------- status


async def status(
    api: Api,
    namespace: str | None,
    name: str | None,
    selector: str | None,
    output: str,
) -> int:
    now = now_utc()
    if name:
        if namespace is None:
            raise CliError("a NAME needs a namespace: use -n NAMESPACE instead of -A")
        objs = [await get_identity(api, namespace, name)]
    else:
        objs = await list_identities(api, namespace, selector)
    summaries = [st.summarize(o, now) for o in objs]
    if output != "table":
        _out(dump(summaries[0] if name else {"items": summaries}, output))
        return 0
    if not summaries:
        _note(f"No machine identities found {_where(namespace)}.")
        return 0
    _out(st.status_table(summaries, all_namespaces=namespace is None))
    notes = st.not_ready_notes(summaries)
    if notes:
        _out("\nNot ready:\n" + "\n".join(f"  {n}" for n in notes))
    return 0


# -------------------------------------------------------------------------------- renew


async def renew(
    api: Api,
    namespace: str | None,
    name: str | None,
    every: bool,
    selector: str | None,
) -> int:
    if name:
        if namespace is None:
            raise CliError("a NAME needs a namespace: use -n NAMESPACE instead of -A")
        objs = [await get_identity(api, namespace, name)]
    else:
        objs = await list_identities(api, namespace, selector if not every else None)
        if not objs:
            what = f"matching {selector} " if selector else ""
            raise CliError(f"no machine identities {what}found {_where(namespace)}")
    value = renew_value(now_utc())
    renewed = 0
    for obj in objs:
        phase = (obj.get("status") or {}).get("phase")
        if phase == Phase.REVOKED:
            if name:
                raise CliError(f"machineidentity {_key(obj)} is revoked; there is nothing to renew")
            _out(f"machineidentity {_key(obj)}: skipped (revoked)")
            continue
        await _annotate(api, obj, {RENEW_ANNOTATION: value})
        renewed += 1
        _out(f"machineidentity {_key(obj)}: renewal requested ({RENEW_ANNOTATION}={value})")
    if renewed:
        _out(
            "The operator renews every credential of "
            + ("this identity" if renewed == 1 else f"these {renewed} identities")
            + " once for this request; follow it with `nhi status` or `nhi history`."
        )
    return 0


# ------------------------------------------------------------------------------- revoke


async def revoke(api: Api, namespace: str, name: str) -> int:
    obj = await get_identity(api, namespace, name)
    status_ = obj.get("status") or {}
    if status_.get("phase") == Phase.REVOKED:
        _out(
            f"machineidentity {_key(obj)} is already revoked "
            f"(at {status_.get('revokedAt', '?')}, reason {status_.get('revocationReason', '?')})"
        )
        return 0
    await _annotate(api, obj, {REVOKE_ANNOTATION: "true"})
    _out(f"machineidentity {_key(obj)}: revocation requested ({REVOKE_ANNOTATION}=true)")
    _out(
        "The operator will revoke it: its credentials stop being valid and are not issued "
        "again. `nhi status` shows phase Revoked once done; `nhi history` shows when and why."
    )
    return 0


# ------------------------------------------------------------------------------ inspect


async def inspect_secret(api: Api, namespace: str, name: str, output: str) -> int:
    secret = await api.get("Secret", namespace, name)
    if secret is None:
        raise CliError(f'secret "{name}" not found in namespace {namespace}')
    try:
        result = inspection.inspect_secret(secret, now_utc())
    except inspection.InspectError as err:
        raise CliError(str(err)) from None
    _out(dump(result, output) if output != "table" else inspection.render_inspect(result))
    return 0


# ------------------------------------------------------------------------------ history


async def list_events(api: Api, namespace: str, name: str) -> list[dict[str, Any]]:
    """core/v1 Events whose involvedObject is the MachineIdentity ``namespace/name``."""
    params = {
        "fieldSelector": f"involvedObject.kind={KIND},involvedObject.name={name}",
        "limit": "500",
    }
    out: list[dict[str, Any]] = []
    while True:
        page = await api.request("GET", path_for("Event", namespace), params=params, kind="Event")
        out.extend(
            e
            for e in page.get("items") or []
            if str((e.get("involvedObject") or {}).get("apiVersion") or "nhi.dev/").startswith(
                "nhi.dev/"
            )
        )
        cont = (page.get("metadata") or {}).get("continue")
        if not cont:
            return out
        params["continue"] = cont


async def history(api: Api, namespace: str, name: str, output: str) -> int:
    identity = await api.get(KIND, namespace, name)
    events = await list_events(api, namespace, name)
    if identity is None and not events:
        raise CliError(f'machineidentity "{name}" not found in namespace {namespace}')
    try:
        page = await api.request("GET", path_for("AccessGrant", namespace), kind="AccessGrant")
    except NotFound:  # a cluster without the AccessGrant CRD
        page = {}
    summary = hist.summarize(namespace, name, identity, events, page.get("items") or [])
    if output != "table":
        _out(dump(summary, output))
    else:
        _out(hist.render_history(summary, now_utc()))
    return 0
