"""What the inventory knows of each object it discovers, parsed once at the edge.

Each record keeps only what a rule or a report needs of its object: names, labels, a few
annotations, times and references. A Secret's data is never kept: a legacy token Secret is
known by its metadata; a TLS Secret by its certificate's metadata, parsed once (by
:mod:`nhi.crypto`) when the watch delivers it. Every ``*_from_body`` function accepts any
body (a malformed one gives a record with what could be read, or None) and never raises.
Roles and bindings are in :mod:`nhi.models.inventory_rbac`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.duration import parse_time

#: OWASP Non-Human Identities Top 10 (2025): the risks the inventory's rules map to.
RISKS: dict[str, str] = {
    "NHI1": "Improper Offboarding",
    "NHI4": "Insecure Authentication",
    "NHI5": "Overprivileged NHI",
    "NHI7": "Long-Lived Secrets",
    "NHI8": "Environment Isolation",
    "NHI9": "NHI Reuse",
}
SEVERITIES = ("critical", "high", "medium", "low", "info")

TOKEN_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 - a Secret type
TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"
#: kubectl's copy of the applied object: for a Secret it holds the data, so no record keeps it.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"
LAST_USED_LABEL = "kubernetes.io/legacy-token-last-used"
INVALID_SINCE_LABEL = "kubernetes.io/legacy-token-invalid-since"
#: Annotations never worth keeping (a full copy of the object).
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)

Labels = Mapping[str, str]


@dataclass(frozen=True, order=True)
class ObjectRef:
    """An object a finding or an identity names."""

    kind: str
    namespace: str
    name: str

    @property
    def api_version(self) -> str:
        if self.kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
            return "rbac.authorization.k8s.io/v1"
        if self.kind in ("Deployment", "StatefulSet", "DaemonSet"):
            return "apps/v1"
        if self.kind in ("Job", "CronJob"):
            return "batch/v1"
        if self.kind == "MachineIdentity":
            return "nhi.dev/v1alpha1"
        return "v1"

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}/{where}{self.name}"


@dataclass(frozen=True, order=True)
class Finding:
    rule: str
    risk: str
    severity: str
    namespace: str  # "" for the cluster's report
    objects: tuple[ObjectRef, ...]
    message: str
    fix: str
    #: The subject's labels, for exemptions.
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def subject(self) -> ObjectRef:
        return self.objects[0]

    @property
    def title(self) -> str:
        return RISKS[self.risk]


def metadata_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The body's metadata; empty when it has none (or not an object)."""
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): str(v)
        for k, v in value.items()
        if isinstance(v, str) and k not in _DROPPED_ANNOTATIONS
    }


def _time(value: Any) -> dt.datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class Meta:
    """The common part of every record."""

    namespace: str
    name: str
    uid: str = ""
    created: dt.datetime | None = None
    labels: Labels = field(default_factory=dict)
    annotations: Labels = field(default_factory=dict)


def meta_from_body(body: Mapping[str, Any]) -> Meta:
    meta = metadata_of(body)
    return Meta(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        created=_time(meta.get("creationTimestamp")),
        labels=_strings(meta.get("labels")),
        annotations={
            k: v for k, v in _strings(meta.get("annotations")).items() if k != LAST_APPLIED
        },
    )


@dataclass(frozen=True)
class ServiceAccountInfo:
    meta: Meta
    automount: bool | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("ServiceAccount", self.meta.namespace, self.meta.name)


def service_account_from_body(body: Mapping[str, Any]) -> ServiceAccountInfo:
    return ServiceAccountInfo(
        meta=meta_from_body(body), automount=_bool(body.get("automountServiceAccountToken"))
    )


@dataclass(frozen=True)
class WorkloadInfo:
    kind: str
    meta: Meta
    service_account: str = "default"
    automount: bool | None = None
    #: The pod template's labels (what a MachineIdentity's workload selector matches).
    template_labels: Labels = field(default_factory=dict)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.meta.namespace, self.meta.name)


def _template_labels(kind: str, body: Mapping[str, Any]) -> dict[str, str]:
    spec = body.get("spec")
    if kind == "Pod" or not isinstance(spec, Mapping):
        return {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") if isinstance(spec, Mapping) else None
    meta = template.get("metadata") if isinstance(template, Mapping) else None
    return _strings(meta.get("labels")) if isinstance(meta, Mapping) else {}


def _pod_spec(kind: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) if isinstance(spec, Mapping) else None
    return pod if isinstance(pod, Mapping) else {}


def workload_from_body(kind: str, body: Mapping[str, Any]) -> WorkloadInfo | None:
    """The workload, or None when another workload represents it (a Pod of a ReplicaSet, a
    Job of a CronJob)."""
    meta = metadata_of(body)
    owners = meta.get("ownerReferences")
    if (
        kind in ("Pod", "Job")
        and isinstance(owners, list)
        and any(isinstance(o, Mapping) and o.get("controller") for o in owners)
    ):
        return None
    try:
        pod = _pod_spec(kind, body)
        template = _template_labels(kind, body)
    except AttributeError:  # a template that is not an object
        pod, template = {}, {}
    return WorkloadInfo(
        kind=kind,
        meta=meta_from_body(body),
        service_account=str(pod.get("serviceAccountName") or "default"),
        automount=_bool(pod.get("automountServiceAccountToken")),
        template_labels=template,
    )


@dataclass(frozen=True)
class TokenSecretInfo:
    """A legacy ``kubernetes.io/service-account-token`` Secret, by its metadata."""

    meta: Meta
    service_account: str
    service_account_uid: str = ""
    last_used: dt.date | None = None
    invalid_since: dt.date | None = None

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Secret", self.meta.namespace, self.meta.name)


def token_secret_from_body(body: Mapping[str, Any]) -> TokenSecretInfo:
    meta = meta_from_body(body)
    return TokenSecretInfo(
        meta=meta,
        service_account=meta.annotations.get(SA_NAME_ANNOTATION, ""),
        service_account_uid=meta.annotations.get(SA_UID_ANNOTATION, ""),
        last_used=_date(meta.labels.get(LAST_USED_LABEL)),
        invalid_since=_date(meta.labels.get(INVALID_SINCE_LABEL)),
    )


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """An ``Opaque`` Secret, by the least of its metadata (read from a metadata-only watch:
    its data never reaches the operator): when it last changed, and what controls it."""

    namespace: str
    name: str
    #: The latest of its creation and its managedFields' times: when its value last changed,
    #: at the latest.
    changed: dt.datetime | None
    #: Its controller, as Kind/name ("" when nothing controls it).
    controller: str = ""
    labels: Labels = field(default_factory=dict)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Secret", self.namespace, self.name)


def opaque_secret_from_body(body: Mapping[str, Any]) -> SecretInfo:
    meta = metadata_of(body)
    times = [_time(meta.get("creationTimestamp"))]
    fields = meta.get("managedFields")
    if isinstance(fields, list):
        times += [_time(f.get("time")) for f in fields if isinstance(f, Mapping)]
    known = [t for t in times if t is not None]
    controller = ""
    owners = meta.get("ownerReferences")
    for ref in owners if isinstance(owners, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            controller = f"{ref.get('kind', '')}/{ref.get('name', '')}"
    return SecretInfo(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        changed=max(known) if known else None,
        controller=controller,
        labels=_strings(meta.get("labels")),
    )


@dataclass(frozen=True)
class CertificateMeta:
    """Non-secret facts of a certificate (the first of a TLS Secret's chain)."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: str = ""

    @property
    def validity(self) -> dt.timedelta:
        return self.not_after - self.not_before


@dataclass(frozen=True)
class TlsSecretInfo:
    """A ``kubernetes.io/tls`` Secret: its certificate's metadata, or why there is none."""

    meta: Meta
    certificate: CertificateMeta | None = None
    problem: str = ""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Secret", self.meta.namespace, self.meta.name)


@dataclass(frozen=True)
class ManagedIdentity:
    """What the inventory needs of a MachineIdentity: the ServiceAccount it governs."""

    namespace: str
    name: str
    service_account: str
    owner: str
    #: From ``status.usage`` (audit usage, docs/usage.md): how many declared rules are weighed,
    #: which of them went unused, and for how long a rule may go unused. 0 rules: no usage data.
    rules_weighed: int = 0
    unused_rules: tuple[str, ...] = ()
    unused_after_seconds: int = 0
    #: Its StaticSecret credentials (status.credentials): (name, Secret, last rotated).
    static: tuple[tuple[str, str, dt.datetime], ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("MachineIdentity", self.namespace, self.name)


def managed_identity_from_body(body: Mapping[str, Any]) -> ManagedIdentity:
    meta = metadata_of(body)
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    name = str(meta.get("name") or "")
    sa = spec.get("serviceAccount")
    sa_name = sa.get("name") if isinstance(sa, Mapping) else None
    owner = spec.get("owner")
    weighed, unused, after = _usage_of(body.get("status"))
    return ManagedIdentity(
        namespace=str(meta.get("namespace") or ""),
        name=name,
        service_account=sa_name if isinstance(sa_name, str) and sa_name else name,
        owner=owner.strip() if isinstance(owner, str) else "",
        rules_weighed=weighed,
        unused_rules=unused,
        unused_after_seconds=after,
        static=_static_of(body.get("status")),
    )


def _static_of(status: Any) -> tuple[tuple[str, str, dt.datetime], ...]:
    creds = status.get("credentials") if isinstance(status, Mapping) else None
    out = []
    for c in creds if isinstance(creds, list) else []:
        if not isinstance(c, Mapping) or c.get("type") != "StaticSecret":
            continue
        rotated = _time(c.get("lastRotationTime"))
        if rotated is not None:
            out.append((str(c.get("name", "")), str(c.get("secretName", "")), rotated))
    return tuple(out)


def _usage_of(status: Any) -> tuple[int, tuple[str, ...], int]:
    """(rules weighed, unused rule paths, unusedAfterSeconds) of ``status.usage``; zeros when
    absent or malformed (a status is written by the operator, but read defensively)."""
    usage = status.get("usage") if isinstance(status, Mapping) else None
    if not isinstance(usage, Mapping):
        return 0, (), 0
    rules = usage.get("rules")
    unused = usage.get("unusedRules")
    after = usage.get("unusedAfterSeconds")
    weighed = len(rules) if isinstance(rules, list) else 0
    paths = tuple(str(p) for p in unused) if isinstance(unused, list) else ()
    seconds = after if isinstance(after, int) and not isinstance(after, bool) else 0
    return weighed, paths[:weighed] if weighed else (), max(seconds, 0)
