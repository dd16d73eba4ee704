"""Operator settings: command-line flags with environment-variable fallbacks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    log_format: str = field(default_factory=lambda: os.environ.get("NHI_LOG_FORMAT", "json"))
    log_level: str = field(default_factory=lambda: os.environ.get("NHI_LOG_LEVEL", "INFO"))
    metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("NHI_METRICS_PORT", "9090"))
    )
    health_port: int = field(default_factory=lambda: int(os.environ.get("NHI_HEALTH_PORT", "8080")))
    workers: int = field(default_factory=lambda: int(os.environ.get("NHI_WORKERS", "16")))
    peering: bool = field(default_factory=lambda: _env_bool("NHI_PEERING", False))
    peering_name: str = field(
        default_factory=lambda: os.environ.get("NHI_PEERING_NAME", "nhi-operator")
    )
    operator_namespace: str = field(
        default_factory=lambda: os.environ.get("NHI_NAMESPACE", "nhi-system")
    )
    peering_priority: int = 0
    peering_lifetime: int = 60


_current = Settings()


def current() -> Settings:
    return _current


def set_current(settings: Settings) -> None:
    global _current
    _current = settings
