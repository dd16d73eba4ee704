"""``nhi rightsize NAME``: the smallest ``spec.permissions`` covering the observed use, as a
unified diff against the spec (docs/usage.md). For a ServiceAccount no MachineIdentity
manages, the MachineIdentity that adopts it (``nhi adopt``'s), with its permissions cut down
to the observed use.

The usage is the operator's record of the identity's ServiceAccount (a ConfigMap in the
operator's namespace, :mod:`nhi.builders.usage`); the narrowing is
:func:`nhi.policies.usage.rightsize`, which never widens a rule. ``roleRefs`` are kept as they
are: what they grant is defined elsewhere.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from nhi.builders.usage import book_of, configmap_name
from nhi.cli.errors import CliError
from nhi.k8s.client import Api
from nhi.models.discovered import UNKNOWN
from nhi.models.identity import MachineIdentity, PolicyRule
from nhi.models.usage import UsageBook
from nhi.policies.usage import rightsize as narrow


def proposed(
    raw: Mapping[str, Any], rules: Sequence[PolicyRule], cluster: Sequence[PolicyRule]
) -> dict[str, Any]:
    """``spec.permissions`` with the right-sized rules, in the spec's order (roleRefs
    untouched); a field left empty goes."""
    sized = {"rules": [r.to_k8s() for r in rules], "clusterRules": [r.to_k8s() for r in cluster]}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[key] = sized.pop(key) if key in sized else value
    out.update(sized)
    return {k: v for k, v in out.items() if v or k not in ("rules", "clusterRules")}


def _yaml(permissions: Mapping[str, Any]) -> list[str]:
    text = yaml.safe_dump({"permissions": json.loads(json.dumps(permissions))}, sort_keys=False)
    return text.splitlines(keepends=True)


def diff(identity: MachineIdentity, raw: Mapping[str, Any], book: UsageBook) -> str:
    """The unified diff from the declared permissions to the right-sized ones ('' if none)."""
    rules, cluster = narrow(
        identity.spec.rules, identity.spec.cluster_rules, identity.namespace, book.entries
    )
    new = proposed(raw, rules, cluster)
    where = f"machineidentity/{identity.name} -n {identity.namespace}"
    return "".join(
        difflib.unified_diff(
            _yaml(raw), _yaml(new), f"{where} spec (declared)", f"{where} spec (observed use)"
        )
    )


def adoption(manifest: dict[str, Any], book: UsageBook) -> dict[str, Any]:
    """The adoption manifest with its rules and clusterRules cut down to the observed use."""
    identity = MachineIdentity.from_body(manifest)
    raw = (manifest.get("spec") or {}).get("permissions") or {}
    rules, cluster = narrow(
        identity.spec.rules, identity.spec.cluster_rules, identity.namespace, book.entries
    )
    out: dict[str, Any] = json.loads(json.dumps(manifest))
    permissions = proposed(raw, rules, cluster)
    if permissions:
        out["spec"]["permissions"] = permissions
    else:
        out["spec"].pop("permissions", None)
    return out


async def _book(api: Api, operator_namespace: str, namespace: str, sa: str) -> UsageBook:
    cm = await api.get("ConfigMap", operator_namespace, configmap_name(namespace, sa))
    book = book_of(cm) if cm is not None else None
    if book is None or (book.namespace, book.service_account) != (namespace, sa):
        raise CliError(
            f"no usage recorded for ServiceAccount {namespace}/{sa} in namespace "
            f"{operator_namespace}: is the operator's usage endpoint set up (docs/usage.md)?"
        )
    return book


async def _adopt(api: Api, namespace: str, name: str, operator_namespace: str) -> int:
    """No MachineIdentity NAME: the right-sized one that adopts the ServiceAccount NAME."""
    from nhi.builders.adoption import adoption_manifest
    from nhi.cli.inventory import compute_all, gather, load_config
    from nhi.cli.render import dump

    now = dt.datetime.now(dt.UTC)
    result = compute_all(await gather(api, namespace), load_config(None), now)
    ident = result.inventory.by_key().get((namespace, name))
    if ident is None or ident.state == "managed":
        raise CliError(f"MachineIdentity {namespace}/{name} not found")
    book = await _book(api, operator_namespace, namespace, name)
    owner = ident.owner if ident.owner and ident.owner != UNKNOWN else "unknown"
    manifest = adoption(adoption_manifest(ident, owner), book)
    print(
        f"# ServiceAccount {namespace}/{name} is not managed: the MachineIdentity that adopts it,"
    )
    print("# with only the permissions it was seen using (set spec.owner before applying)")
    print(dump(manifest, "yaml"))
    return 0


async def rightsize(api: Api, namespace: str | None, name: str, operator_namespace: str) -> int:
    if namespace is None:
        raise CliError("rightsize needs a namespace: use -n NAMESPACE")
    body = await api.get("MachineIdentity", namespace, name)
    if body is None:
        return await _adopt(api, namespace, name, operator_namespace)
    identity = MachineIdentity.from_body(body)
    book = await _book(api, operator_namespace, namespace, identity.spec.service_account)
    since = (identity.status.get("usage") or {}).get("observedSince")
    text = diff(identity, (body.get("spec") or {}).get("permissions") or {}, book)
    if not text:
        print(f"# {namespace}/{name}: spec.permissions already matches the observed use")
        return 0
    if since:
        print(f"# usage observed since {since}; rules unused since then are dropped")
    print(text, end="")
    return 0
