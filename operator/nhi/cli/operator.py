"""``nhi-operator``: run the operator (kopf under the hood)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from typing import Any, cast

import yaml

from nhi import __version__
from nhi import logging as nhi_logging
from nhi.models.duration import parse_duration
from nhi.models.fields import SpecError
from nhi.models.inventory_config import InventoryConfig, parse_config
from nhi.runtime.peering import own_identity
from nhi.settings import Settings, set_current


def _scope_options(p: argparse.ArgumentParser) -> None:
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs allowed)",
    )


def _runtime_options(p: argparse.ArgumentParser, s: Settings) -> None:
    """Logging, metrics, health and concurrency."""
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=s.log_format,
        help="json (default) for collectors, text for a terminal",
    )
    p.add_argument(
        "--log-level", default=s.log_level, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=s.metrics_port,
        help="Prometheus metrics port, 0 to disable (default %(default)s)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=s.health_port,
        help="liveness endpoint port (/healthz) (default %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=s.workers, help="concurrent reconciles (default %(default)s)"
    )


def _peering_options(p: argparse.ArgumentParser, s: Settings) -> None:
    p.add_argument(
        "--peering",
        action="store_true",
        default=s.peering,
        help="run with kopf peering so only one of several replicas is active",
    )
    p.add_argument("--peering-name", default=s.peering_name)
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=20,
        help="seconds a replica counts as alive after its last keep-alive; a standby takes "
        "over at most this long after the active replica dies (default %(default)s; "
        "keep-alives are sent every lifetime-10..lifetime-5 seconds)",
    )
    p.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        help="this replica's peering priority (default: random, so replicas never tie: "
        "kopf freezes every replica that shares the highest priority)",
    )


def _webhook_options(p: argparse.ArgumentParser, s: Settings) -> None:
    hook = p.add_argument_group(
        "admission webhook",
        "The IdentityPolicy validating webhook (off unless --webhook-port is set). It serves "
        "TLS with a certificate kept in a Secret in the operator's namespace (NHI_NAMESPACE) "
        "and registers itself in a ValidatingWebhookConfiguration with failurePolicy Ignore.",
    )
    hook.add_argument(
        "--webhook-port",
        type=int,
        default=s.webhook_port,
        help="serve the admission webhook on this port, 0 to disable (default %(default)s)",
    )
    hook.add_argument(
        "--webhook-host",
        default=s.webhook_host,
        help="host name or IP the API server uses to reach the webhook when no Service is set "
        "(the URL and the certificate's SAN) (default %(default)s)",
    )
    hook.add_argument(
        "--webhook-address",
        default=s.webhook_address,
        help="address to listen on (default: the webhook host, or every interface with "
        "--webhook-service)",
    )
    hook.add_argument(
        "--webhook-service",
        default=s.webhook_service,
        help="reach the webhook through this Service in the operator's namespace (in-cluster)",
    )
    hook.add_argument(
        "--webhook-service-port",
        type=int,
        default=s.webhook_service_port,
        help="the Service's port (default %(default)s)",
    )
    hook.add_argument(
        "--webhook-configuration",
        default=s.webhook_configuration,
        help="name of the ValidatingWebhookConfiguration (default %(default)s)",
    )
    hook.add_argument(
        "--webhook-secret",
        default=s.webhook_secret,
        help="Secret holding the webhook's CA and serving certificate (default %(default)s)",
    )
    hook.add_argument(
        "--webhook-cert-ttl",
        default=s.webhook_cert_ttl,
        help="lifetime of the serving certificate, renewed after two thirds of it "
        "(default %(default)s)",
    )


def _usage_options(p: argparse.ArgumentParser, s: Settings) -> None:
    u = p.add_argument_group(
        "usage",
        "Usage from kube-apiserver's audit webhook backend (off unless --usage-port is set): "
        "an HTTPS endpoint at /audit taking audit.k8s.io/v1 EventList batches, authenticated "
        "by a client certificate or a bearer token. See docs/usage.md.",
    )
    _usage_endpoint_options(u, s)
    _usage_keeping_options(u, s)


def _usage_endpoint_options(u: argparse._ArgumentGroup, s: Settings) -> None:
    """Where the usage endpoint listens, its TLS, who may post to it and how much."""
    u.add_argument(
        "--usage-port",
        type=int,
        default=s.usage_port,
        help="serve the usage endpoint on this port, 0 to disable (default %(default)s)",
    )
    u.add_argument(
        "--usage-address",
        default=s.usage_address,
        help="address to listen on (default %(default)s)",
    )
    u.add_argument(
        "--usage-tls-cert-file",
        default=s.usage_tls_cert_file,
        help="the endpoint's serving certificate (PEM)",
    )
    u.add_argument(
        "--usage-tls-key-file",
        default=s.usage_tls_key_file,
        help="the serving certificate's key (PEM)",
    )
    u.add_argument(
        "--usage-client-ca-file",
        default=s.usage_client_ca_file,
        help="accept client certificates signed by this CA (PEM)",
    )
    u.add_argument(
        "--usage-client-names",
        default=s.usage_client_names,
        help="comma-separated common names a client certificate must carry "
        "(default: any the CA signed)",
    )
    u.add_argument(
        "--usage-token-secret",
        default=s.usage_token_secret,
        help="accept the bearer token in the key `token` of this Secret in the "
        "operator's namespace",
    )
    u.add_argument(
        "--usage-max-body",
        type=int,
        default=s.usage_max_body,
        help="largest batch accepted, in bytes (default %(default)s)",
    )


def _usage_keeping_options(u: argparse._ArgumentGroup, s: Settings) -> None:
    """How the usage is kept and weighed: persisted, read from the audit log, judged unused."""
    u.add_argument(
        "--usage-flush-interval",
        type=float,
        default=s.usage_flush_interval,
        help="seconds between writes of the usage ConfigMaps: what a restart may "
        "lose (default %(default)s)",
    )
    u.add_argument(
        "--usage-unused-after",
        default=s.usage_unused_after,
        help="report a declared rule unused for this long (default %(default)s)",
    )
    u.add_argument(
        "--usage-audit-log",
        default=s.usage_audit_log,
        help="also read kube-apiserver's audit log (JSON lines, --audit-log-path) at this "
        "path, from where it stopped before a restart",
    )
    u.add_argument(
        "--usage-learning-window",
        default=s.usage_learning_window,
        help="after this long since a ServiceAccount was first seen, a verb and resource it "
        "never used raise a NewBehaviour Event and metric (default %(default)s)",
    )


def _discovery_options(p: argparse.ArgumentParser, s: Settings) -> None:
    d = p.add_argument_group("discovery", "inventory of every non-human identity (opt-in)")
    d.add_argument(
        "--discovery",
        action=argparse.BooleanOptionalAction,
        default=s.discovery,
        help="discover every ServiceAccount, binding, legacy token and TLS Secret, write "
        "PolicyReports and inventory metrics (env NHI_DISCOVERY; default off)",
    )
    d.add_argument(
        "--discovery-namespace",
        action="append",
        default=list(s.discovery_namespaces),
        help="discover only this namespace (repeatable; globs allowed; default: all; env "
        "NHI_DISCOVERY_NAMESPACES, comma-separated)",
    )
    d.add_argument(
        "--discovery-interval",
        type=float,
        default=s.discovery_interval,
        help="seconds between a change and the inventory's next run (default %(default)s)",
    )
    d.add_argument(
        "--inventory-config",
        default=os.environ.get("NHI_INVENTORY_CONFIG", ""),
        help="YAML file of the inventory's rules, bounds, exemptions and owner keys "
        "(docs/inventory.md; env NHI_INVENTORY_CONFIG)",
    )


def _inventory_config(p: argparse.ArgumentParser, path: str) -> InventoryConfig:
    if not path:
        return InventoryConfig()
    try:
        with open(path, encoding="utf-8") as f:
            return parse_config(yaml.safe_load(f))
    except (OSError, yaml.YAMLError, SpecError) as err:
        p.error(f"--inventory-config: {err}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nhi-operator",
        description="Run nhi-operator: reconciles MachineIdentities into ServiceAccounts, "
        "least-privilege RBAC and short-lived credentials.",
    )
    _scope_options(p)
    s = Settings()
    _runtime_options(p, s)
    _peering_options(p, s)
    _webhook_options(p, s)
    _usage_options(p, s)
    _discovery_options(p, s)
    p.add_argument(
        "--policy-status-interval",
        type=float,
        default=s.policy_status_interval,
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--vault-kv-check-interval",
        type=float,
        default=s.vault_kv_check_interval,
        help="seconds between checks that each credential's copy in Vault's KV is the one "
        "the operator wrote; a deleted or overwritten one is restored (default: %(default)s, "
        "env NHI_VAULT_KV_CHECK_INTERVAL)",
    )
    p.add_argument("--version", action="version", version=f"nhi-operator {__version__}")
    return p


USAGE_OPTIONS = (
    "port", "address", "tls_cert_file", "tls_key_file", "client_ca_file", "client_names",
    "token_secret", "max_body", "flush_interval", "unused_after", "learning_window", "audit_log",
)  # fmt: skip


def _settings(a: argparse.Namespace, inventory: InventoryConfig | None = None) -> Settings:
    return Settings(
        namespaces=list(a.namespace),
        log_format=a.log_format,
        log_level=a.log_level,
        metrics_port=a.metrics_port,
        health_port=a.health_port,
        workers=a.workers,
        peering=a.peering,
        peering_name=a.peering_name,
        peering_lifetime=a.peering_lifetime,
        peering_priority=(
            a.peering_priority
            if a.peering_priority is not None
            else secrets.randbelow(1_000_000) + 1
        ),
        peering_identity=own_identity(),
        webhook_port=a.webhook_port,
        webhook_host=a.webhook_host,
        webhook_address=a.webhook_address,
        webhook_service=a.webhook_service,
        webhook_service_port=a.webhook_service_port,
        webhook_configuration=a.webhook_configuration,
        webhook_secret=a.webhook_secret,
        webhook_cert_ttl=a.webhook_cert_ttl,
        policy_status_interval=a.policy_status_interval,
        vault_kv_check_interval=a.vault_kv_check_interval,
        **{f"usage_{k}": getattr(a, f"usage_{k}") for k in USAGE_OPTIONS},
        discovery=a.discovery,
        discovery_namespaces=list(a.discovery_namespace),
        discovery_interval=a.discovery_interval,
        inventory=inventory or InventoryConfig(),
    )


def parse_args(argv: list[str] | None = None) -> Settings:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        parse_duration(a.webhook_cert_ttl)
    except ValueError as err:
        p.error(f"--webhook-cert-ttl: {err}")
    for flag in ("unused_after", "learning_window"):
        try:
            parse_duration(getattr(a, f"usage_{flag}"))
        except ValueError as err:
            p.error(f"--usage-{flag.replace('_', '-')}: {err}")
    if a.usage_port and not (a.usage_tls_cert_file and a.usage_tls_key_file):
        p.error("--usage-port needs --usage-tls-cert-file and --usage-tls-key-file")
    if a.usage_port and not (a.usage_client_ca_file or a.usage_token_secret):
        p.error("--usage-port needs --usage-client-ca-file or --usage-token-secret")
    return _settings(a, _inventory_config(p, a.inventory_config))


async def run(settings: Settings) -> None:
    import kopf

    import nhi.handlers  # noqa: F401  - registers the handlers
    from nhi import metrics

    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    await kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        standalone=not settings.peering,
        peering_name=settings.peering_name if settings.peering else None,
        priority=settings.peering_priority,
        # kopf's Identity is a NewType of str (not exported): ours, so the gate and kopf agree.
        identity=cast(Any, settings.peering_identity) if settings.peering else None,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    set_current(settings)
    nhi_logging.setup(settings.log_format, settings.log_level)
    log = logging.getLogger("nhi.operator")
    log.info(
        "starting nhi-operator",
        extra={"version": __version__, "namespaces": settings.namespaces or "all"},
    )
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
