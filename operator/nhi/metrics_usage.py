"""The usage's metrics (from the API server's audit events, docs/usage.md), written by
:mod:`nhi.handlers.usage` and the ``nhi.reconcilers.usage*`` modules, served with every other
metric of :mod:`nhi.metrics` from its registry. Counts by namespace or result, and one gauge
per MachineIdentity.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from nhi.metrics import REGISTRY, RESULTS

USAGE_BATCH_RESULTS = (
    "accepted",
    "unauthenticated",
    "too_large",
    "malformed",
    "unsupported_media_type",
    "standby",
)
usage_batches = Counter(
    "nhi_usage_batches",
    "Audit event batches posted to the usage endpoint, by result.",
    ("result",),
    registry=REGISTRY,
)
for _result in USAGE_BATCH_RESULTS:
    usage_batches.labels(_result)
usage_events = Counter(
    "nhi_usage_events",
    "Audit events of ServiceAccounts counted as usage (replayed ones excluded).",
    registry=REGISTRY,
)
usage_replayed_events = Counter(
    "nhi_usage_replayed_events",
    "Audit events received again (same auditID) and not counted twice.",
    registry=REGISTRY,
)
usage_denied_requests = Counter(
    "nhi_usage_denied_requests",
    "Requests of ServiceAccounts the API server's authorizer refused, by namespace.",
    ("namespace",),
    registry=REGISTRY,
)
usage_new_behaviours = Counter(
    "nhi_usage_new_behaviours",
    "Requests of a ServiceAccount of the namespace with a verb and resource it never used "
    "before, after its learning window.",
    ("namespace",),
    registry=REGISTRY,
)
usage_person_minted_tokens = Counter(
    "nhi_usage_person_minted_tokens",
    "Tokens of ServiceAccounts of the namespace minted by a person (kubectl create token) and "
    "then used, each counted once.",
    ("namespace",),
    registry=REGISTRY,
)
usage_log_lines_skipped = Counter(
    "nhi_usage_log_lines_skipped",
    "Lines of the audit log (--usage-audit-log) skipped: not an audit event, or too long.",
    registry=REGISTRY,
)
usage_tokens_outside_pod = Counter(
    "nhi_usage_tokens_outside_pod",
    "Uses of a pod-bound ServiceAccount token of the namespace from an address that is not "
    "its pod's, each credential and address counted once.",
    ("namespace",),
    registry=REGISTRY,
)
usage_tokens_foreign_pod = Counter(
    "nhi_usage_tokens_foreign_pod",
    "Uses of a MachineIdentity's ServiceAccount token bound to a pod that is not among the "
    "identity's workloads (spec.workloads.selector), each credential and address counted once.",
    ("namespace",),
    registry=REGISTRY,
)
usage_flushes = Counter(
    "nhi_usage_flushes",
    "Writes of usage ConfigMaps, by result.",
    ("result",),
    registry=REGISTRY,
)
for _result in RESULTS:
    usage_flushes.labels(_result)
unused_rules = Gauge(
    "nhi_identity_unused_rules",
    "Declared rules of a MachineIdentity not used for the configured time.",
    ("namespace", "identity"),
    registry=REGISTRY,
)
