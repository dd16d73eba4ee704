"""The inventory's metrics (discovery, docs/inventory.md), served with every other metric of
:mod:`nhi.metrics` from its registry. Counts by namespace, kind, risk and severity only: never
a label per object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nhi.metrics import REGISTRY, Family

INVENTORY_IDENTITIES = Family(
    "nhi_inventory_identities",
    "gauge",
    "ServiceAccounts discovered, by namespace and state (managed, system, unmanaged).",
    ("namespace", "state"),
)
INVENTORY_OBJECTS = Family(
    "nhi_inventory_objects",
    "gauge",
    "Objects discovered, by kind (workloads, legacy token and TLS Secrets, bindings).",
    ("kind",),
)
INVENTORY_FINDINGS = Family(
    "nhi_inventory_findings",
    "gauge",
    "Open inventory findings, by namespace (empty: cluster-wide), OWASP NHI risk and severity.",
    ("namespace", "risk", "severity"),
)
INVENTORY_CREDENTIALS = Family(
    "nhi_inventory_credentials",
    "gauge",
    "Discovered credentials (legacy tokens, TLS certificates) by age bucket (at most 1d, 7d, "
    "30d, 90d, 365d, or older).",
    ("age",),
)
INVENTORY_COVERAGE = Family(
    "nhi_inventory_coverage_ratio",
    "gauge",
    "Share of the ServiceAccounts used by workloads (system ones excepted) that are managed.",
    (),
)
INVENTORY_OWNER_COVERAGE = Family(
    "nhi_inventory_owner_coverage_ratio",
    "gauge",
    "Share of the ServiceAccounts (system ones excepted) with a known owner.",
    (),
)
INVENTORY_PERMISSIONS_USED = Family(
    "nhi_inventory_permissions_used_ratio",
    "gauge",
    "Share of the MachineIdentities' declared rules used within their unusedAfter (audit "
    "usage; absent without usage data).",
    (),
)
INVENTORY_LAST_RUN = Family(
    "nhi_inventory_last_run_timestamp_seconds",
    "gauge",
    "When the inventory and its findings were last computed (Unix time).",
    (),
)
INVENTORY_FAMILIES = (
    INVENTORY_IDENTITIES,
    INVENTORY_OBJECTS,
    INVENTORY_FINDINGS,
    INVENTORY_CREDENTIALS,
    INVENTORY_COVERAGE,
    INVENTORY_OWNER_COVERAGE,
    INVENTORY_PERMISSIONS_USED,
    INVENTORY_LAST_RUN,
)
#: {family name: {label values: value}}, replaced as a whole by each inventory run.
InventorySnapshot = Mapping[str, Mapping[tuple[str, ...], float]]


class InventorySeries(Collector):
    """The inventory's series: the counts of its last run (nothing before discovery runs)."""

    def __init__(self) -> None:
        self._snapshot: InventorySnapshot = {}

    def update(self, snapshot: InventorySnapshot) -> None:
        self._snapshot = snapshot  # one assignment: a scrape sees one run or the next

    def describe(self) -> Iterable[Metric]:
        return [family.empty() for family in INVENTORY_FAMILIES]

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot
        out = []
        for family in INVENTORY_FAMILIES:
            metric = family.empty()
            for labels, value in sorted((snapshot.get(family._name) or {}).items()):
                metric.add_metric(labels, value)
            out.append(metric)
        return out


INVENTORY = InventorySeries()
REGISTRY.register(INVENTORY)
FINDING_RISKS = ("NHI1", "NHI4", "NHI5", "NHI7", "NHI8", "NHI9")
FINDING_SEVERITIES = ("critical", "high", "medium", "low", "info")
findings_detected = Counter(
    "nhi_inventory_findings_detected_total",
    "Inventory findings seen for the first time since the operator started, by risk and "
    "severity (the alert on new critical findings reads its increase).",
    ("risk", "severity"),
    registry=REGISTRY,
)
for _risk in FINDING_RISKS:
    for _severity in FINDING_SEVERITIES:
        findings_detected.labels(_risk, _severity)
