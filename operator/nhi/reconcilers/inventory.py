"""The inventory's run: observed records -> inventory, findings, KPIs (pure, nhi.policies)
-> metrics and reports (only those that changed).

One run computes everything from the watch caches in memory; no request is made unless a
report changed. It returns when to look again without any event: the soonest moment a
time-based rule (an unused ServiceAccount, an old token) may change its verdict.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nhi import metrics_inventory as metrics
from nhi.builders.policy_report import (
    ReportFormat,
    ReportPlan,
    by_report,
    finding_key,
    findings_hash,
    report_plan,
)
from nhi.models.inventory import Finding
from nhi.models.inventory_config import InventoryConfig
from nhi.policies.findings import evaluate
from nhi.policies.inventory import Inventory, Observed, build
from nhi.policies.kpis import Kpis, compute
from nhi.reconcilers.inventory_reports import ReportWriter

log = logging.getLogger("nhi.inventory")

#: A run is due at least this often to re-check time-based rules.
MAX_WAIT = dt.timedelta(hours=6)


@dataclass(frozen=True)
class Outcome:
    inventory: Inventory
    findings: tuple[Finding, ...]
    kpis: Kpis
    new: int
    writes: int
    next_due: dt.datetime


def next_due(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> dt.datetime:
    """The soonest time an age-based finding may appear without any event."""
    due = [now + MAX_WAIT]
    if config.enabled("unused-service-account"):
        for i in inv.identities:
            if not i.workloads and i.created is not None:
                since = max(i.created, inv.observed.last_used.get(i.key, i.created))
                due.append(since + config.unused_after)
    if config.enabled("old-token-secret"):
        due += [
            t.meta.created + config.max_secret_age
            for t in inv.observed.tokens
            if t.meta.created is not None
        ]
    if config.enabled("old-secret"):
        due += [
            s.changed + config.max_secret_age
            for s in inv.observed.secrets
            if s.changed is not None and not s.controller
        ]
    if config.enabled("stale-static-secret"):
        due += [
            rotated + config.max_secret_age
            for mi in inv.observed.identities
            for _, _, rotated in mi.static
        ]
    return min(d for d in due if d > now) if any(d > now for d in due) else now + MAX_WAIT


def snapshot(
    inv: Inventory, findings: Sequence[Finding], kpis: Kpis, now: dt.datetime
) -> metrics.InventorySnapshot:
    obs = inv.observed
    identities = Counter((i.namespace, i.state) for i in inv.identities)
    by_finding = Counter((f.namespace, f.risk, f.severity) for f in findings)
    objects = {
        ("ServiceAccount",): len(obs.service_accounts),
        ("Workload",): len(obs.workloads),
        ("LegacyTokenSecret",): len(obs.tokens),
        ("TLSSecret",): len(obs.tls),
        ("RoleBinding",): sum(1 for b in obs.bindings if b.kind == "RoleBinding"),
        ("ClusterRoleBinding",): sum(1 for b in obs.bindings if b.kind == "ClusterRoleBinding"),
    }
    return {
        "nhi_inventory_identities": {k: float(v) for k, v in identities.items()},
        "nhi_inventory_objects": {k: float(v) for k, v in objects.items()},
        "nhi_inventory_findings": {k: float(v) for k, v in by_finding.items()},
        "nhi_inventory_credentials": {(b,): float(n) for b, n in kpis.credential_ages},
        "nhi_inventory_coverage_ratio": {(): kpis.coverage},
        "nhi_inventory_owner_coverage_ratio": {(): kpis.owner_coverage},
        "nhi_inventory_permissions_used_ratio": (
            {} if kpis.permissions_used is None else {(): kpis.permissions_used}
        ),
        "nhi_inventory_last_run_timestamp_seconds": {(): now.timestamp()},
    }


class InventoryReconciler:
    def __init__(
        self,
        config: InventoryConfig,
        now: Callable[[], dt.datetime],
        reports: Sequence[ReportWriter] = (),
    ) -> None:
        self.config = config
        self.now = now
        #: One writer per report format installed (none: metrics and logs only).
        self.reports: list[ReportWriter] = list(reports)
        #: When each open finding was first seen (by this process).
        self.first_seen: dict[str, dt.datetime] = {}
        #: Runs so far (the last inventory is not kept between runs: it is rebuilt each time).
        self.runs = 0

    async def run(self, observed: Observed) -> Outcome:
        started = time.monotonic()
        now = self.now()
        inv = build(observed, self.config)
        findings = evaluate(inv, self.config, now)
        kpis = compute(inv, findings, now)
        new = self._first_seen(findings, now)
        metrics.INVENTORY.update(snapshot(inv, findings, kpis, now))
        writes = 0
        if self.reports:
            grouped = by_report(findings)
            grouped.setdefault("", [])  # the cluster's report always exists
            digests = {ns: findings_hash(fs) for ns, fs in grouped.items()}
            for writer in self.reports:
                writes += await writer.sync(self._reports(grouped, digests, writer.format))
        self.runs += 1
        outcome = Outcome(inv, findings, kpis, new, writes, next_due(inv, self.config, now))
        log.info(
            "inventory computed",
            extra={
                "identities": len(inv.identities),
                "findings": len(findings),
                "new_findings": new,
                "reports_written": writes,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return outcome

    def _reports(
        self,
        grouped: Mapping[str, Sequence[Finding]],
        digests: Mapping[str, str],
        fmt: ReportFormat,
    ) -> dict[str, ReportPlan]:
        """Each report's hash; its body is built only if it must be written."""
        return {
            ns: report_plan(ns, fs, self.first_seen, fmt, digests[ns]) for ns, fs in grouped.items()
        }

    def _first_seen(self, findings: Sequence[Finding], now: dt.datetime) -> int:
        """Record new findings; count them (not on the first run: they are not new, the
        operator only started)."""
        current = {finding_key(f): f for f in findings}
        new = [f for k, f in current.items() if k not in self.first_seen]
        for k in current.keys() - self.first_seen.keys():
            self.first_seen[k] = now
        for k in self.first_seen.keys() - current.keys():
            del self.first_seen[k]
        if self.runs == 0:
            return 0
        for f in new:
            metrics.findings_detected.labels(f.risk, f.severity).inc()
        return len(new)
