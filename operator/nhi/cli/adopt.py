"""``nhi adopt serviceaccount/NAME``: the MachineIdentity that takes over an unmanaged
ServiceAccount, printed, or applied with ``--apply``.

The identity holds everything the ServiceAccount holds today (:mod:`nhi.builders.adoption`),
so no workload loses a permission while the operator takes over: the old bindings stay, and
are listed with the commands that remove them once the identity is Ready.
"""

from __future__ import annotations

import datetime as dt
import sys

from nhi.builders.adoption import adoption_manifest, old_bindings
from nhi.cli.errors import CliError
from nhi.cli.inventory import compute_all, gather, load_config
from nhi.cli.render import dump
from nhi.k8s.client import Api, path_for
from nhi.models.discovered import UNKNOWN

FIELD_MANAGER = "nhi-cli"


def parse_target(target: str) -> str:
    kind, _, name = target.partition("/")
    if kind.lower() not in ("serviceaccount", "serviceaccounts", "sa") or not name:
        raise CliError(f"expected serviceaccount/NAME, got {target!r}")
    return name


async def adopt(
    api: Api,
    namespace: str | None,
    target: str,
    owner: str | None,
    apply: bool,
    output: str,
    config: str | None,
) -> int:
    name = parse_target(target)
    if namespace is None:
        raise CliError("a ServiceAccount needs a namespace: use -n NAMESPACE")
    now = dt.datetime.now(dt.UTC)
    result = compute_all(await gather(api, namespace), load_config(config), now)
    ident = result.inventory.by_key().get((namespace, name))
    if ident is None:
        raise CliError(f'serviceaccount "{name}" not found in namespace {namespace}')
    if ident.state == "managed":
        raise CliError(f"serviceaccount {namespace}/{name} is managed already ({ident.managed_by})")
    who = owner or (ident.owner if ident.owner != UNKNOWN else "")
    if not who:
        raise CliError("no owner could be attributed to it: pass --owner")
    manifest = adoption_manifest(ident, who)
    old = old_bindings(ident)
    if not apply:
        print(dump(manifest, output))
    else:
        await api.request(
            "PATCH",
            path_for("MachineIdentity", namespace, name),
            body=manifest,
            params={"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"},
            content_type="application/apply-patch+yaml",
            kind="MachineIdentity",
            name=name,
        )
        print(f"machineidentity.nhi.dev/{name} applied in namespace {namespace}")
    if old:
        print(
            "The bindings that grant it its permissions today are left in place; once the "
            "identity is Ready, remove them with:",
            file=sys.stderr,
        )
        for ref in old:
            where = f" -n {ref.namespace}" if ref.namespace else ""
            print(f"  kubectl delete {ref.kind.lower()} {ref.name}{where}", file=sys.stderr)
    return 0
