"""Which cluster and namespace the ``nhi`` CLI talks to: kubeconfig, context, in-cluster.

Resolution follows kubectl: ``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``,
else the in-cluster ServiceAccount. The default namespace is the context's namespace, or
``default``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhi.cli.errors import CliError
from nhi.k8s.client import Connection, load_connection

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Target:
    connection: Connection
    namespace: str


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def context_namespace(contexts: list[dict[str, Any]], name: str | None) -> str | None:
    """The namespace of the context called ``name``; None when there is no such context."""
    for ctx in contexts:
        if ctx.get("name") == name:
            return str((ctx.get("context") or {}).get("namespace") or DEFAULT_NAMESPACE)
    return None


def resolve(kubeconfig: str | None, context: str | None) -> Target:
    """Load the connection settings and the default namespace, or raise :class:`CliError`."""
    from kubernetes.config import ConfigException, list_kube_config_contexts

    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise CliError(f"kubeconfig {kubeconfig} not found")
    try:
        contexts, active = list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (ConfigException, OSError, TypeError, ValueError) as err:
        if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise CliError(
                f"no usable kubeconfig ({where}: {_one_line(err)}); "
                "pass --kubeconfig or set KUBECONFIG"
            ) from None
        # In a Pod: the ServiceAccount's token and namespace.
        if context:
            raise CliError(f"--context {context} needs a kubeconfig; none was found") from None
        try:
            connection = load_connection(None, None)
        except Exception as exc:
            raise CliError(f"cannot load in-cluster configuration: {_one_line(exc)}") from None
        try:
            in_cluster = IN_CLUSTER_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
        except OSError:
            in_cluster = DEFAULT_NAMESPACE
        return Target(connection, in_cluster)
    name = context or (active or {}).get("name")
    namespace = context_namespace(list(contexts or []), name)
    if namespace is None:
        if context:
            raise CliError(f"context {context} not found in the kubeconfig")
        raise CliError("the kubeconfig has no current context; pass --context")
    try:
        connection = load_connection(kubeconfig, name)
    except Exception as err:
        raise CliError(f"cannot load the kubeconfig: {_one_line(err)}") from None
    return Target(connection, namespace)
