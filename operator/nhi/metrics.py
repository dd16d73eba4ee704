"""Prometheus metrics. Labels carry names only, never a secret; one series per credential.

The per-identity series (``nhi_identity_*`` and ``nhi_credential_*``) come from one collector,
``IdentitySeries``: it keeps a small record per identity and builds the families when
scraped. With two credentials, an identity has 14 series: as prometheus_client's labelled
children (an object, a lock and a label tuple each) they took about 10 KB; its record takes
about 650 bytes. The other metrics are ordinary prometheus_client metrics.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nhi.policies import revocation

# No `<counter>_created` series: in the text format Prometheus stores each as a gauge of its
# own, which doubles the series of every counter.
_disable_created: Callable[[], object] = prometheus_client.disable_created_metrics
_disable_created()

REGISTRY = CollectorRegistry(auto_describe=True)

CREDENTIAL_LABELS = ("namespace", "identity", "credential", "type", "issuer")
CONDITIONS = ("Ready", "Reconciling", "Stalled")
RESULTS = ("success", "failure")

CredentialLabels = tuple[str, str, str, str, str]  # CREDENTIAL_LABELS, in that order
Result = Literal["success", "failure"]


class Family:
    """A family served by ``IdentitySeries``: its name, type, help text and label names.

    The attributes have the names prometheus_client's own metrics use (``_name`` without a
    counter's ``_total``, ``_type``, ``_documentation``, ``_labelnames``), so whatever lists this
    module's metrics by them, as the metric contract tests do, finds these families too.
    """

    def __init__(
        self,
        name: str,
        type_: Literal["gauge", "counter"],
        documentation: str,
        labels: Iterable[str],
    ) -> None:
        self._name = name.removesuffix("_total") if type_ == "counter" else name
        self._type = type_
        self._documentation = documentation
        self._labelnames = tuple(labels)

    def empty(self) -> GaugeMetricFamily | CounterMetricFamily:
        """A new family without samples."""
        if self._type == "counter":
            return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)


CREDENTIAL_EXPIRATION = Family(
    "nhi_credential_expiration_timestamp_seconds",
    "gauge",
    "When the credential's current value stops being valid (Unix time).",
    CREDENTIAL_LABELS,
)
CREDENTIAL_NOT_BEFORE = Family(
    "nhi_credential_not_before_timestamp_seconds",
    "gauge",
    "When the credential's current value became valid (Unix time).",
    CREDENTIAL_LABELS,
)
CREDENTIAL_RENEWAL = Family(
    "nhi_credential_renewal_timestamp_seconds",
    "gauge",
    "When the operator plans to renew the credential (Unix time).",
    CREDENTIAL_LABELS,
)
CREDENTIAL_ROTATIONS = Family(
    "nhi_credential_rotations_total",
    "counter",
    "Credential issuances and rotations, by result (success or failure).",
    (*CREDENTIAL_LABELS, "result"),
)
IDENTITY_READY = Family(
    "nhi_identity_ready_status",
    "gauge",
    "1 when the identity's condition is True, else 0.",
    ("namespace", "identity", "condition"),
)
IDENTITY_INFO = Family(
    "nhi_identity_info",
    "gauge",
    "Always 1; labels describe the identity.",
    ("namespace", "identity", "owner", "phase"),
)
# In the order they are exposed.
IDENTITY_FAMILIES = (
    CREDENTIAL_EXPIRATION,
    CREDENTIAL_NOT_BEFORE,
    CREDENTIAL_RENEWAL,
    CREDENTIAL_ROTATIONS,
    IDENTITY_READY,
    IDENTITY_INFO,
)


class _Credential:
    """One credential of an identity: its label values, timestamps and rotation counts."""

    __slots__ = ("failure", "issuer", "name", "success", "times", "type")

    def __init__(self, name: str, type_: str, issuer: str) -> None:
        self.name = name
        self.type = type_
        self.issuer = issuer
        # (not_before, not_after, renewal), None until first observed; replaced as a whole, so
        # a scrape never mixes the timestamps of two values.
        self.times: tuple[float, float, float] | None = None
        self.success = 0
        self.failure = 0


class _Identity:
    """What is exposed about one identity."""

    __slots__ = ("credentials", "status")

    def __init__(self) -> None:
        # (owner, phase, condition bits: bit i set when CONDITIONS[i] is True), None until
        # observed; replaced as a whole, like the list below.
        self.status: tuple[str, str, int] | None = None
        # Replaced, never changed in place: a scrape iterates it without the lock.
        self.credentials: list[_Credential] = []


class IdentitySeries(Collector):
    """The per-identity series, built when scraped from one small record per identity.

    The reconcilers update the records from the event loop while the metrics server scrapes
    from a thread of its own. Updates hold ``_lock``; a scrape holds it only to copy the
    list of records, then reads each record without it: every field a scrape reads is
    replaced by a new immutable value or list, so it sees each one before or after an update,
    and the event loop never waits for a whole scrape.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _Identity] = {}

    def observe_identity(
        self, namespace: str, identity: str, owner: str, phase: str, conditions: Mapping[str, bool]
    ) -> None:
        """Set the identity's ``nhi_identity_info`` and ``nhi_identity_ready_status`` series.

        The info series of an older owner or phase goes; a condition missing from
        ``conditions`` is 0.
        """
        bits = sum(1 << i for i, c in enumerate(CONDITIONS) if conditions.get(c))
        status = (_intern(owner), _intern(phase), bits)
        with self._lock:
            self._record(namespace, identity).status = status

    def sync_credentials(
        self, namespace: str, identity: str, declared: Iterable[CredentialLabels]
    ) -> None:
        """The identity's spec declares exactly these credentials (label tuples, CREDENTIAL_LABELS).

        Called once per reconcile, before the credentials are issued or observed:

        - a credential seen for the first time gets both ``result`` series of
          ``nhi_credential_rotations_total`` at 0, so ``rate()``/``increase()`` see its first
          failure or success (a counter series that appears at 1 is invisible to them);
        - the series of a credential no longer declared (removed from the spec, or whose type
          or issuer changed, which changes its labels) are dropped, so one credential has
          exactly one series per metric and a removed credential raises no stale-timestamp
          alert.

        A label tuple naming another identity is a ValueError.
        """
        key = (_intern(namespace), str(identity))
        wanted: dict[tuple[str, str, str], None] = {}
        for labels in declared:
            ns, name, credential, type_, issuer = _label_tuple(labels)
            if (ns, name) != key:
                raise ValueError(f"credential labels {labels} do not name identity {key}")
            wanted[(credential, type_, issuer)] = None
        with self._lock:
            record = self._records.get(key)
            if record is None:
                if not wanted:
                    return
                record = self._records[key] = _Identity()
            old = record.credentials
            record.credentials = [_find(old, *w) or _Credential(*w) for w in wanted]

    def observe_credential(
        self, labels: CredentialLabels, *, not_before: float, not_after: float, renewal: float
    ) -> None:
        """Set the credential's timestamp gauges (Unix time) to those of its current value."""
        lbl = _label_tuple(labels)
        times = (float(not_before), float(not_after), float(renewal))
        with self._lock:
            self._credential(lbl).times = times

    def rotated(self, labels: CredentialLabels, result: Result) -> None:
        """Count one issuance or rotation of the credential, by ``result`` (RESULTS).

        A credential that ``sync_credentials`` has not declared is declared by it, with both
        results at 0 first; the next ``sync_credentials`` drops it unless it declares it too.
        """
        if result not in RESULTS:
            raise ValueError(f"unknown rotation result {result!r}, expected one of {RESULTS}")
        lbl = _label_tuple(labels)
        with self._lock:
            credential = self._credential(lbl)
            if result == "success":
                credential.success += 1
            else:
                credential.failure += 1

    def forget_identity(self, namespace: str, identity: str) -> None:
        """Drop every series of a deleted identity."""
        with self._lock:
            self._records.pop((str(namespace), str(identity)), None)

    def describe(self) -> Iterable[Metric]:
        # Names only, for the registry's duplicate check: no need to build the samples.
        return [family.empty() for family in IDENTITY_FAMILIES]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            records = list(self._records.items())
        expiration, not_before, renewal, rotations, ready, info = (
            family.empty() for family in IDENTITY_FAMILIES
        )
        for (namespace, identity), record in records:
            status = record.status
            if status is not None:
                owner, phase, bits = status
                info.add_metric((namespace, identity, owner, phase), 1.0)
                for i, condition in enumerate(CONDITIONS):
                    ready.add_metric((namespace, identity, condition), float(bits >> i & 1))
            for credential in record.credentials:
                lbl = (namespace, identity, credential.name, credential.type, credential.issuer)
                times = credential.times
                if times is not None:
                    not_before.add_metric(lbl, times[0])
                    expiration.add_metric(lbl, times[1])
                    renewal.add_metric(lbl, times[2])
                rotations.add_metric((*lbl, "success"), float(credential.success))
                rotations.add_metric((*lbl, "failure"), float(credential.failure))
        return [expiration, not_before, renewal, rotations, ready, info]

    def _record(self, namespace: str, identity: str) -> _Identity:
        """The identity's record, created if need be. Under ``_lock``."""
        key = (_intern(namespace), str(identity))
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Identity()
        return record

    def _credential(self, labels: CredentialLabels) -> _Credential:
        """The credential's record, declared if need be. Under ``_lock``."""
        namespace, identity, name, type_, issuer = labels
        record = self._record(namespace, identity)
        credential = _find(record.credentials, name, type_, issuer)
        if credential is None:
            credential = _Credential(name, type_, issuer)
            record.credentials = [*record.credentials, credential]
        return credential


def _find(credentials: list[_Credential], name: str, type_: str, issuer: str) -> _Credential | None:
    for credential in credentials:  # a handful at most: no index needed
        if credential.name == name and credential.type == type_ and credential.issuer == issuer:
            return credential
    return None


def _intern(value: object) -> str:
    # Namespaces, credential names, types, issuers, owners and phases repeat across
    # identities: the records then share one string each.
    return sys.intern(str(value))


def _label_tuple(labels: Iterable[str]) -> CredentialLabels:
    values = [str(v) for v in labels]
    if len(values) != len(CREDENTIAL_LABELS):
        raise ValueError(f"expected {len(CREDENTIAL_LABELS)} credential labels, got {values}")
    namespace, identity, credential, type_, issuer = values
    return (_intern(namespace), identity, _intern(credential), _intern(type_), _intern(issuer))


IDENTITIES = IdentitySeries()
REGISTRY.register(IDENTITIES)
observe_identity = IDENTITIES.observe_identity
sync_credentials = IDENTITIES.sync_credentials
observe_credential = IDENTITIES.observe_credential
rotated = IDENTITIES.rotated
forget_identity = IDENTITIES.forget_identity

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


#: Governance KPIs of the operator's own identities (issue 17): how late a due renewal is
#: rotated, how long after its last workload went an identity is revoked (grace included).
KPI_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)
time_to_rotate = Histogram(
    "nhi_credential_time_to_rotate_seconds",
    "From a credential's planned renewal to its rotation, for rotations that were due.",
    buckets=KPI_BUCKETS,
    registry=REGISTRY,
)
time_to_revoke = Histogram(
    "nhi_identity_time_to_revoke_seconds",
    "From the last workload of an identity gone to the identity revoked (grace period "
    "included), for revocations because the workloads were deleted.",
    buckets=KPI_BUCKETS,
    registry=REGISTRY,
)


ACCESS_GRANTS = Family(
    "nhi_access_grants", "gauge", "AccessGrants by namespace and phase.", ("namespace", "phase")
)
ACCESS_GRANTS_OVERDUE = Family(
    "nhi_access_grants_overdue",
    "gauge",
    "Active AccessGrants whose window ended more than 5 s ago: their permissions are still "
    "in place.",
    ("namespace",),
)


class GrantSeries(Collector):
    """AccessGrants by namespace and phase, and the Active ones past their end, counted when
    scraped from one small record per grant (updated from the event loop under ``_lock``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], tuple[str, float | None]] = {}
        self.clock = clock

    def observe(self, namespace: str, name: str, phase: str, ends_at: float | None) -> None:
        """The grant's phase, and when its window ends (epoch seconds) while it is Active."""
        with self._lock:
            self._records[(namespace, name)] = (_intern(phase), ends_at)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._records.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            records = list(self._records.items())
        now = self.clock()
        phases, overdue = ACCESS_GRANTS.empty(), ACCESS_GRANTS_OVERDUE.empty()
        counts: dict[tuple[str, str], int] = {}
        late: dict[str, int] = {}
        for (namespace, _), (phase, ends_at) in records:
            counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
            is_late = phase == "Active" and ends_at is not None and now > ends_at + 5
            late[namespace] = late.get(namespace, 0) + int(is_late)
        for (namespace, phase), n in sorted(counts.items()):
            phases.add_metric((namespace, phase), n)
        for namespace, n in sorted(late.items()):
            overdue.add_metric((namespace,), n)
        return [phases, overdue]


GRANTS = GrantSeries()
REGISTRY.register(GRANTS)
grant_active_seconds = Counter(
    "nhi_access_grant_active_seconds",
    "Seconds AccessGrants were Active, added when each one ends.",
    ("namespace",),
    registry=REGISTRY,
)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod IP
    start_http_server(port, addr=addr, registry=REGISTRY)
