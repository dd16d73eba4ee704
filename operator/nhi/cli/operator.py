"""``nhi-operator``: run the operator (kopf under the hood)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys

from nhi import __version__
from nhi import logging as nhi_logging
from nhi.settings import Settings, set_current


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(
        prog="nhi-operator",
        description="Run nhi-operator: reconciles MachineIdentities into ServiceAccounts, "
        "least-privilege RBAC and short-lived credentials.",
    )
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
    s = Settings()
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
    p.add_argument(
        "--peering",
        action="store_true",
        default=s.peering,
        help="run with kopf peering so only one of several replicas is active",
    )
    p.add_argument("--peering-name", default=s.peering_name)
    p.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        help="this replica's peering priority (default: random, so replicas never tie: "
        "kopf freezes every replica that shares the highest priority)",
    )
    p.add_argument("--version", action="version", version=f"nhi-operator {__version__}")
    a = p.parse_args(argv)
    return Settings(
        namespaces=list(a.namespace),
        log_format=a.log_format,
        log_level=a.log_level,
        metrics_port=a.metrics_port,
        health_port=a.health_port,
        workers=a.workers,
        peering=a.peering,
        peering_name=a.peering_name,
        peering_priority=(
            a.peering_priority
            if a.peering_priority is not None
            else secrets.randbelow(1_000_000) + 1
        ),
    )


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
