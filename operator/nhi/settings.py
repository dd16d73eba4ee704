"""Operator settings: command-line flags with environment-variable fallbacks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nhi.models.inventory_config import InventoryConfig


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
    workers: int = field(default_factory=lambda: int(os.environ.get("NHI_WORKERS", "32")))
    peering: bool = field(default_factory=lambda: _env_bool("NHI_PEERING", False))
    peering_name: str = field(
        default_factory=lambda: os.environ.get("NHI_PEERING_NAME", "nhi-operator")
    )
    operator_namespace: str = field(
        default_factory=lambda: os.environ.get("NHI_NAMESPACE", "nhi-system")
    )
    peering_priority: int = 0
    #: This replica's identity in kopf's peering objects (given to kopf, so both agree).
    peering_identity: str = ""
    peering_lifetime: int = 20
    # The IdentityPolicy admission webhook (disabled when the port is 0).
    webhook_port: int = field(default_factory=lambda: int(os.environ.get("NHI_WEBHOOK_PORT", "0")))
    #: The host the API server connects to (URL and certificate SAN) when no Service is set.
    webhook_host: str = field(
        default_factory=lambda: os.environ.get("NHI_WEBHOOK_HOST", "127.0.0.1")
    )
    #: The address to listen on; empty: the host (URL mode) or every interface (Service mode).
    webhook_address: str = field(default_factory=lambda: os.environ.get("NHI_WEBHOOK_ADDRESS", ""))
    #: A Service in the operator's namespace that routes to the webhook port (in-cluster).
    webhook_service: str = field(default_factory=lambda: os.environ.get("NHI_WEBHOOK_SERVICE", ""))
    webhook_service_port: int = field(
        default_factory=lambda: int(os.environ.get("NHI_WEBHOOK_SERVICE_PORT", "443"))
    )
    webhook_configuration: str = field(
        default_factory=lambda: os.environ.get("NHI_WEBHOOK_CONFIGURATION", "nhi-operator")
    )
    webhook_secret: str = field(
        default_factory=lambda: os.environ.get("NHI_WEBHOOK_SECRET", "nhi-operator-webhook-tls")
    )
    #: Lifetime of the serving certificate; renewed after two thirds of it.
    webhook_cert_ttl: str = field(
        default_factory=lambda: os.environ.get("NHI_WEBHOOK_CERT_TTL", "720h")
    )
    #: How long after a MachineIdentity or namespace changed the IdentityPolicies' status is
    #: recomputed (changes meanwhile fold into the same run); 0 disables the status.
    policy_status_interval: float = field(
        default_factory=lambda: float(os.environ.get("NHI_POLICY_STATUS_INTERVAL", "5"))
    )

    #: Seconds between checks that each credential's KV copy in Vault is the one the operator
    #: wrote (a version deleted or overwritten by someone else is restored).
    vault_kv_check_interval: float = field(
        default_factory=lambda: float(os.environ.get("NHI_VAULT_KV_CHECK_INTERVAL", "600"))
    )

    #: Discovery and inventory of every ServiceAccount, its bindings, legacy tokens and TLS
    #: Secrets (off: nothing is watched nor written for it).
    discovery: bool = field(default_factory=lambda: _env_bool("NHI_DISCOVERY", False))
    #: The namespaces discovered (globs); empty: every namespace.
    discovery_namespaces: list[str] = field(
        default_factory=lambda: [
            n for n in os.environ.get("NHI_DISCOVERY_NAMESPACES", "").split(",") if n.strip()
        ]
    )
    #: How long after a change the inventory is computed again (changes meanwhile fold in).
    discovery_interval: float = field(
        default_factory=lambda: float(os.environ.get("NHI_DISCOVERY_INTERVAL", "1"))
    )
    inventory: InventoryConfig = field(default_factory=InventoryConfig)
    #: Serve AccessGrants (just-in-time permissions); off for a cluster without their CRD.
    access_grants: bool = field(default_factory=lambda: _env_bool("NHI_ACCESS_GRANTS", True))
    #: How long an expired, revoked or denied AccessGrant is kept as the record (a duration).
    grant_retention: str = field(
        default_factory=lambda: os.environ.get("NHI_GRANT_RETENTION", "24h")
    )

    # Usage from the API server's audit webhook (disabled when the port is 0): docs/usage.md.
    usage_port: int = field(default_factory=lambda: int(os.environ.get("NHI_USAGE_PORT", "0")))
    usage_address: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_ADDRESS", "0.0.0.0")  # noqa: S104
    )
    usage_tls_cert_file: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_TLS_CERT_FILE", "")
    )
    usage_tls_key_file: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_TLS_KEY_FILE", "")
    )
    #: The CA that signed the API server's audit client certificate; empty: no certificates.
    usage_client_ca_file: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_CLIENT_CA_FILE", "")
    )
    #: Common names a client certificate must carry (comma-separated); empty: any the CA signed.
    usage_client_names: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_CLIENT_NAMES", "")
    )
    #: A Secret in the operator's namespace whose ``token`` key is the accepted bearer token.
    usage_token_secret: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_TOKEN_SECRET", "")
    )
    usage_max_body: int = field(
        default_factory=lambda: int(os.environ.get("NHI_USAGE_MAX_BODY", str(4 * 1024 * 1024)))
    )
    #: Seconds between two writes of the usage ConfigMaps: what a restart may lose.
    usage_flush_interval: float = field(
        default_factory=lambda: float(os.environ.get("NHI_USAGE_FLUSH_INTERVAL", "60"))
    )
    #: Unused this long, a declared rule is reported (a duration).
    usage_unused_after: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_UNUSED_AFTER", "720h")
    )

    #: How long a ServiceAccount's behaviour is learnt before a new one is reported.
    usage_learning_window: str = field(
        default_factory=lambda: os.environ.get("NHI_USAGE_LEARNING_WINDOW", "168h")
    )

    #: Also read kube-apiserver's audit log (JSON lines) at this path; empty: no.
    usage_audit_log: str = field(default_factory=lambda: os.environ.get("NHI_USAGE_AUDIT_LOG", ""))

    @property
    def usage_enabled(self) -> bool:
        return self.usage_port > 0 or bool(self.usage_audit_log)

    @property
    def webhook_enabled(self) -> bool:
        return self.webhook_port > 0


_current = Settings()


def current() -> Settings:
    return _current


def set_current(settings: Settings) -> None:
    global _current
    _current = settings
