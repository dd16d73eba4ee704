"""``nhi rightsize NAME``: the smallest ``spec.permissions`` covering the observed use, as a
unified diff against the spec (docs/usage.md).

The usage is the operator's record of the identity's ServiceAccount (a ConfigMap in the
operator's namespace, :mod:`nhi.reconcilers.usage`); the narrowing is
:func:`nhi.policies.usage.rightsize`, which never widens a rule. ``roleRefs`` are kept as they
are: what they grant is defined elsewhere.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from nhi.cli.errors import CliError
from nhi.k8s.client import Api
from nhi.models.identity import MachineIdentity, PolicyRule
from nhi.models.usage import UsageBook
from nhi.policies.usage import rightsize as narrow
from nhi.reconcilers.usage import book_of, configmap_name


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


async def rightsize(api: Api, namespace: str | None, name: str, operator_namespace: str) -> int:
    if namespace is None:
        raise CliError("rightsize needs a namespace: use -n NAMESPACE")
    body = await api.get("MachineIdentity", namespace, name)
    if body is None:
        raise CliError(f"MachineIdentity {namespace}/{name} not found")
    identity = MachineIdentity.from_body(body)
    sa = identity.spec.service_account
    cm = await api.get("ConfigMap", operator_namespace, configmap_name(namespace, sa))
    book = book_of(cm) if cm is not None else None
    if book is None or (book.namespace, book.service_account) != (namespace, sa):
        raise CliError(
            f"no usage recorded for ServiceAccount {namespace}/{sa} in namespace "
            f"{operator_namespace}: is the operator's usage endpoint set up (docs/usage.md)?"
        )
    since = (identity.status.get("usage") or {}).get("observedSince")
    text = diff(identity, (body.get("spec") or {}).get("permissions") or {}, book)
    if not text:
        print(f"# {namespace}/{name}: spec.permissions already matches the observed use")
        return 0
    if since:
        print(f"# usage observed since {since}; rules unused since then are dropped")
    print(text, end="")
    return 0
