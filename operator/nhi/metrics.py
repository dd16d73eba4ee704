"""Prometheus metrics. Labels carry names only, never a secret; one series per credential."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from nhi.policies import revocation

# No `<counter>_created` series: in the text format Prometheus stores each as a gauge of its
# own, which doubles the series of every counter (one per credential for the rotations).
_disable_created: Callable[[], object] = prometheus_client.disable_created_metrics
_disable_created()

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
# Every reason is exported from the start, at 0: rate() and increase() then see the first
# revocation of each kind (a counter series that appears at 1 is invisible to them).
REVOCATION_REASONS = (
    revocation.MANUAL,
    revocation.EXPIRED,
    revocation.WORKLOAD_DELETED,
    revocation.IDENTITY_DELETED,
)
for _reason in REVOCATION_REASONS:
    revocations.labels(_reason)
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
RESULTS = ("success", "failure")

CredentialLabels = tuple[str, str, str, str, str]  # CREDENTIAL_LABELS, in that order

# Every metric that carries the credential labels: dropped together when a credential goes.
_CREDENTIAL_GAUGES = (credential_expiration, credential_not_before, credential_renewal)

# Label values last set per identity, so a phase or owner change drops the old series.
_info_labels: dict[tuple[str, str], tuple[str, str]] = {}
# The credential label sets declared per identity (sync_credentials), so that a credential
# removed from the spec, or whose type or issuer changed, loses its series.
_declared: dict[tuple[str, str], set[CredentialLabels]] = {}


def observe_identity(
    namespace: str, identity: str, owner: str, phase: str, conditions: dict[str, bool]
) -> None:
    old = _info_labels.get((namespace, identity))
    if old is not None and old != (owner, phase):
        _remove(identity_info, namespace, identity, *old)
    identity_info.labels(namespace, identity, owner, phase).set(1)
    _info_labels[(namespace, identity)] = (owner, phase)
    for cond in CONDITIONS:
        identity_ready.labels(namespace, identity, cond).set(1 if conditions.get(cond) else 0)


def sync_credentials(namespace: str, identity: str, declared: Iterable[CredentialLabels]) -> None:
    """The identity's spec declares exactly these credentials (label tuples, CREDENTIAL_LABELS).

    Called once per reconcile, before the credentials are issued or observed:

    - a credential seen for the first time gets both ``result`` series of
      ``nhi_credential_rotations_total`` at 0, so ``rate()``/``increase()`` see its first
      failure or success (a counter series that appears at 1 is invisible to them);
    - the series of a credential no longer declared (removed from the spec, or whose type or
      issuer changed, which changes its labels) are dropped, so one credential has exactly one
      series per metric and a removed credential raises no stale-timestamp alert.
    """
    key = (namespace, identity)
    wanted = {_label_tuple(labels) for labels in declared}
    old = _declared.get(key, set())
    for labels in old - wanted:
        _forget_credential(labels)
    for labels in wanted - old:
        for result in RESULTS:
            rotations.labels(*labels, result)  # creates the series at 0
    _declared[key] = wanted


def forget_identity(namespace: str, identity: str) -> None:
    """Drop every series of a deleted identity."""
    old = _info_labels.pop((namespace, identity), None)
    if old is not None:
        _remove(identity_info, namespace, identity, *old)
    _declared.pop((namespace, identity), None)
    selector = {"namespace": namespace, "identity": identity}
    for metric in (identity_info, identity_ready, *_CREDENTIAL_GAUGES, rotations):
        _remove_matching(metric, selector)


def _label_tuple(labels: Iterable[str]) -> CredentialLabels:
    values = [str(v) for v in labels]
    if len(values) != len(CREDENTIAL_LABELS):
        raise ValueError(f"expected {len(CREDENTIAL_LABELS)} credential labels, got {values}")
    namespace, identity, credential, type_, issuer = values
    return (namespace, identity, credential, type_, issuer)


def _forget_credential(labels: CredentialLabels) -> None:
    for gauge in _CREDENTIAL_GAUGES:
        _remove(gauge, *labels)
    for result in RESULTS:
        _remove(rotations, *labels, result)


def _remove(metric: Any, *labels: str) -> None:
    """Remove one series; a series that does not exist is not an error."""
    try:
        metric.remove(*labels)
    except KeyError:  # prometheus-client < 0.17 raised on unknown label sets
        pass


def _remove_matching(metric: Any, selector: Mapping[str, str]) -> None:
    """Remove every series of ``metric`` whose labels include ``selector``."""
    by_labels = getattr(metric, "remove_by_labels", None)
    if by_labels is not None:  # prometheus-client >= 0.22: no sample is generated
        by_labels(dict(selector))
        return
    names: tuple[str, ...] = tuple(metric._labelnames)
    for labels in _series_of(metric, names, selector):
        _remove(metric, *labels)


def _series_of(
    metric: Any, names: tuple[str, ...], selector: Mapping[str, str]
) -> list[tuple[str, ...]]:
    """The label value tuples (in ``names`` order) of the series matching ``selector``."""
    out: dict[tuple[str, ...], None] = {}
    for family in metric.collect():
        for sample in family.samples:
            lbl = sample.labels
            if all(lbl.get(k) == v for k, v in selector.items()) and all(n in lbl for n in names):
                out[tuple(lbl[n] for n in names)] = None
    return list(out)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod IP
    start_http_server(port, addr=addr, registry=REGISTRY)
