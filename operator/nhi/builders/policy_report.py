"""The inventory's findings as the policy ecosystem's reports: one report per namespace with
findings, one for the cluster, in each :class:`ReportFormat` installed: the policy working
group's PolicyReport / ClusterPolicyReport (wgpolicyk8s.io/v1alpha2) and their successor,
OpenReports' Report / ClusterReport (openreports.io/v1alpha1). The bodies are the same but
for the apiVersion, the kinds and the severities allowed.

In a PolicyReport a result's ``severity`` is one of high, medium and low, which every
published revision of the v1alpha2 CRD accepts (the first ones have no ``critical`` nor
``info``); OpenReports has ``critical``. The finding's own severity is in
``properties.severity`` and its OWASP risk in ``category`` and ``properties.risk``. Results
carry object references, rule names and messages: never a Secret's value (the inventory
never holds one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.models.inventory import RISKS, Finding, ObjectRef
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY

REPORT_NAME = "nhi-inventory"
SOURCE = "nhi-operator"
POLICY = "nhi-inventory"
#: Marks the operator's reports (for its watch); what proves one is the provenance tag.
REPORT_LABEL = "nhi.dev/report"
REPORT_KIND_VALUE = "inventory"
#: The hash of the findings last written, so an unchanged report is not written again.
RESULTS_HASH_ANNOTATION = "nhi.dev/results-hash"
PROVENANCE_PURPOSE = "inventory-report"


@dataclass(frozen=True)
class ReportFormat:
    """One report API: its apiVersion, its two kinds, the severities its results take."""

    api_version: str
    namespaced_kind: str
    cluster_kind: str
    severities: Mapping[str, str]

    def kind_for(self, namespace: str) -> str:
        return self.namespaced_kind if namespace else self.cluster_kind

    @property
    def name(self) -> str:
        return f"{self.namespaced_kind} ({self.api_version})"


POLICY_REPORT = ReportFormat(
    "wgpolicyk8s.io/v1alpha2",
    "PolicyReport",
    "ClusterPolicyReport",
    {"critical": "high", "high": "high", "medium": "medium", "low": "low"},
)
OPEN_REPORTS = ReportFormat(
    "openreports.io/v1alpha1",
    "Report",
    "ClusterReport",
    {"critical": "critical", "high": "high", "medium": "medium", "low": "low"},
)
#: Every format the inventory writes, each where its CRDs are installed.
FORMATS = (POLICY_REPORT, OPEN_REPORTS)
API_VERSION = POLICY_REPORT.api_version


def kind_for(namespace: str, fmt: ReportFormat = POLICY_REPORT) -> str:
    return fmt.kind_for(namespace)


def _resource(ref: ObjectRef) -> dict[str, str]:
    out = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
    if ref.namespace:
        out["namespace"] = ref.namespace
    return out


def finding_key(f: Finding) -> str:
    """A stable identifier of a finding (its rule and objects), for first-seen times."""
    return f.rule + "|" + "|".join(str(o) for o in f.objects)


def result(
    f: Finding, first_seen: dt.datetime, fmt: ReportFormat = POLICY_REPORT
) -> dict[str, Any]:
    return {
        "source": SOURCE,
        "policy": POLICY,
        "rule": f.rule,
        "category": f"{f.risk} {RISKS[f.risk]}",
        "severity": fmt.severities.get(f.severity, "low"),
        "result": "fail",
        "scored": True,
        "message": f"{f.message}. Fix: {f.fix}",
        "resources": [_resource(o) for o in f.objects],
        "properties": {"risk": f.risk, "severity": f.severity, "fix": f.fix},
        "timestamp": {"seconds": int(first_seen.timestamp()), "nanos": 0},
    }


def _ordered(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.rule, f.message, finding_key(f)))


def findings_hash(findings: Iterable[Finding]) -> str:
    """What a report says (its findings, without times), cheap to compute every run: equal
    when nothing changed, so the report is neither built nor written again."""
    digest = hashlib.sha256()
    for f in _ordered(findings):
        digest.update(f"{finding_key(f)}|{f.severity}|{f.risk}|{f.message}|{f.fix}\n".encode())
    return digest.hexdigest()[:32]


def build_report(
    namespace: str,
    findings: Iterable[Finding],
    first_seen: Mapping[str, dt.datetime],
    fmt: ReportFormat = POLICY_REPORT,
) -> dict[str, Any]:
    """The report of ``namespace`` ("" for the cluster's) holding ``findings``."""
    ordered = _ordered(findings)
    results = [result(f, first_seen[finding_key(f)], fmt) for f in ordered]
    meta: dict[str, Any] = {
        "name": REPORT_NAME,
        "labels": {MANAGED_BY_KEY: MANAGED_BY, REPORT_LABEL: REPORT_KIND_VALUE},
        "annotations": {RESULTS_HASH_ANNOTATION: findings_hash(ordered)},
    }
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": fmt.api_version,
        "kind": fmt.kind_for(namespace),
        "metadata": meta,
        "scope": (
            {"apiVersion": "v1", "kind": "Namespace", "name": namespace}
            if namespace
            else {"apiVersion": "v1", "kind": "Cluster", "name": "cluster"}
        ),
        "summary": {"pass": 0, "fail": len(results), "warn": 0, "error": 0, "skip": 0},
        "results": results,
    }


def by_report(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    """Findings grouped by the report that holds them (their namespace; "" the cluster's)."""
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.namespace, []).append(f)
    return out


@dataclass(frozen=True)
class ReportPlan:
    """A report to be: its hash now, its body only if it must be written."""

    namespace: str
    hash: str
    build: Callable[[], dict[str, Any]]


def report_plan(
    namespace: str,
    findings: Sequence[Finding],
    first_seen: Mapping[str, dt.datetime],
    fmt: ReportFormat = POLICY_REPORT,
    digest: str | None = None,
) -> ReportPlan:
    """``digest``: the findings' hash when already computed (for another format)."""
    return ReportPlan(
        namespace,
        digest if digest is not None else findings_hash(findings),
        lambda: build_report(namespace, findings, first_seen, fmt),
    )
