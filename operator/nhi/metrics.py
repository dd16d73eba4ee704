"""Prometheus metrics. Labels carry names only, never a secret; one series per credential."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

CREDENTIAL_LABELS = ("namespace", "identity", "credential", "type", "issuer")

credential_expiration = Gauge(
    "nhi_credential_expiration_timestamp_seconds",
    "When the credential's current value stops being valid (Unix time).",
    CREDENTIAL_LABELS,
    registry=REGISTRY,
)
credential_not_before = Gauge(
    "nhi_credential_not_before_timestamp_seconds",
    "When the credential's current value became valid (Unix time).",
    CREDENTIAL_LABELS,
    registry=REGISTRY,
)
credential_renewal = Gauge(
    "nhi_credential_renewal_timestamp_seconds",
    "When the operator plans to renew the credential (Unix time).",
    CREDENTIAL_LABELS,
    registry=REGISTRY,
)
rotations = Counter(
    "nhi_credential_rotations_total",
    "Credential issuances and rotations, by result (success or failure).",
    (*CREDENTIAL_LABELS, "result"),
    registry=REGISTRY,
)
revocations = Counter(
    "nhi_revocations_total", "Identities revoked, by reason.", ("reason",), registry=REGISTRY
)
rollouts = Counter(
    "nhi_workload_rollouts_total",
    "Workload rollouts triggered after a rotation.",
    registry=REGISTRY,
)
identity_ready = Gauge(
    "nhi_identity_ready_status",
    "1 when the identity's condition is True, else 0.",
    ("namespace", "identity", "condition"),
    registry=REGISTRY,
)
identity_info = Gauge(
    "nhi_identity_info",
    "Always 1; labels describe the identity.",
    ("namespace", "identity", "owner", "phase"),
    registry=REGISTRY,
)
reconcile_duration = Histogram(
    "nhi_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ("kind",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
reconcile_errors = Counter(
    "nhi_reconcile_errors_total",
    "Reconciles that ended in an error, by kind.",
    ("kind",),
    registry=REGISTRY,
)
issuer_ready = Gauge(
    "nhi_issuer_ready_status",
    "1 when the issuer is Ready, else 0.",
    ("kind", "namespace", "issuer"),
    registry=REGISTRY,
)
issuer_ca_expiration = Gauge(
    "nhi_issuer_ca_expiration_timestamp_seconds",
    "When the issuer's CA certificate expires.",
    ("kind", "namespace", "issuer"),
    registry=REGISTRY,
)

CONDITIONS = ("Ready", "Reconciling", "Stalled")

# Label values last set per identity, so a phase or owner change drops the old series.
_info_labels: dict[tuple[str, str], tuple[str, str]] = {}


def observe_identity(
    namespace: str, identity: str, owner: str, phase: str, conditions: dict[str, bool]
) -> None:
    old = _info_labels.get((namespace, identity))
    if old is not None and old != (owner, phase):
        identity_info.remove(namespace, identity, *old)
    identity_info.labels(namespace, identity, owner, phase).set(1)
    _info_labels[(namespace, identity)] = (owner, phase)
    for cond in CONDITIONS:
        identity_ready.labels(namespace, identity, cond).set(1 if conditions.get(cond) else 0)


def forget_identity(namespace: str, identity: str) -> None:
    """Drop every series of a deleted identity."""
    old = _info_labels.pop((namespace, identity), None)
    if old is not None:
        identity_info.remove(namespace, identity, *old)
    for cond in CONDITIONS:
        try:
            identity_ready.remove(namespace, identity, cond)
        except KeyError:
            pass
    for gauge in (credential_expiration, credential_not_before, credential_renewal):
        for labels in _series_of(gauge, namespace, identity):
            gauge.remove(*labels)


def _series_of(metric: Gauge, namespace: str, identity: str) -> list[tuple[str, ...]]:
    out = []
    for sample_family in metric.collect():
        for sample in sample_family.samples:
            lbl = sample.labels
            if lbl.get("namespace") == namespace and lbl.get("identity") == identity:
                out.append(tuple(lbl[k] for k in CREDENTIAL_LABELS))
    return out


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod IP
    start_http_server(port, addr=addr, registry=REGISTRY)
