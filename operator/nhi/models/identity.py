"""The MachineIdentity model: the body of the custom resource turned into typed data.

The CRD's schema and CEL rules reject most bad input at admission; this model checks
again (the operator may meet objects written before a rule existed, or a cluster without
the CRD's validation) and names the field and the rule in every error.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nhi.models.duration import parse_duration

KIND = "MachineIdentity"
PLURAL = "machineidentities"

CREDENTIAL_TYPES = ("ServiceAccountToken", "X509", "StaticSecret")
KEY_ALGORITHMS = ("ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-2048", "RSA-3072", "RSA-4096")
CHARSETS = ("alphanumeric", "hex", "base64url", "ascii-printable")
MIN_TOKEN_TTL = dt.timedelta(minutes=10)
#: (shortest, longest) ttl of each credential type, as the CRD's rules say.
TTL_BOUNDS = {
    "ServiceAccountToken": (MIN_TOKEN_TTL, dt.timedelta(hours=48)),
    "X509": (dt.timedelta(minutes=10), dt.timedelta(hours=8760)),
    "StaticSecret": (dt.timedelta(hours=1), dt.timedelta(hours=8760)),
}
DEFAULT_RENEW_FRACTION = 0.33
DEFAULT_GRACE = dt.timedelta(minutes=2)
DEFAULT_TTL = {
    "ServiceAccountToken": dt.timedelta(hours=1),
    "X509": dt.timedelta(hours=24),
    "StaticSecret": dt.timedelta(hours=720),
}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
#: A DNS name of a certificate: labels of at most 63 characters (RFC 1035), 253 in all.
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
#: A label key's name part and a label value (the prefix of a key is a DNS subdomain).
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class SpecError(ValueError):
    """A spec field breaks a rule. ``path`` is the field, e.g. ``spec.credentials[1].ttl``."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}")
        self.path = path
        self.rule = rule


@dataclass(frozen=True)
class PolicyRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verbs": list(self.verbs)}
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        else:
            out["apiGroups"] = list(self.api_groups)
            out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out


@dataclass(frozen=True)
class RoleRef:
    kind: str  # Role | ClusterRole
    name: str


@dataclass(frozen=True)
class Generator:
    length: int = 32
    charset: str = "alphanumeric"


@dataclass(frozen=True)
class IssuerRef:
    kind: str
    name: str


@dataclass(frozen=True)
class Credential:
    name: str
    type: str
    secret_name: str
    ttl: dt.timedelta
    audiences: tuple[str, ...] = ()
    issuer_ref: IssuerRef | None = None
    key_algorithm: str = "ECDSA-P256"
    dns_names: tuple[str, ...] = ()
    generator: Generator | None = None


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_query(self) -> str:
        """The selector as a ``labelSelector`` query string."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for key, op, values in self.match_expressions:
            if op == "In":
                parts.append(f"{key} in ({','.join(values)})")
            elif op == "NotIn":
                parts.append(f"{key} notin ({','.join(values)})")
            elif op == "Exists":
                parts.append(key)
            else:
                parts.append(f"!{key}")
        return ",".join(parts)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes label-selector semantics; an empty selector matches nothing here."""
        if self.empty:
            return False
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and (not present or labels[key] not in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Spec:
    owner: str
    service_account: str
    automount_token: bool = False
    purpose: str = ""
    selector: LabelSelector = field(default_factory=LabelSelector)
    rollout_on_rotation: bool = False
    rules: tuple[PolicyRule, ...] = ()
    cluster_rules: tuple[PolicyRule, ...] = ()
    role_refs: tuple[RoleRef, ...] = ()
    credentials: tuple[Credential, ...] = ()
    renew_before_fraction: float | None = DEFAULT_RENEW_FRACTION
    renew_before: dt.timedelta | None = None
    valid_for: dt.timedelta | None = None
    on_workload_deletion: str = "Revoke"
    grace_period: dt.timedelta = DEFAULT_GRACE

    @property
    def wants_cluster_permissions(self) -> bool:
        return bool(self.cluster_rules) or any(r.kind == "ClusterRole" for r in self.role_refs)


@dataclass(frozen=True)
class MachineIdentity:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Spec
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: str | None = None
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MachineIdentity:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=parse_spec(
                body.get("spec") or {},
                default_name=str(meta.get("name", "")),
                in_use=_secret_names_in_use(status),
            ),
            annotations=dict(meta.get("annotations") or {}),
            labels=dict(meta.get("labels") or {}),
            creation_timestamp=meta.get("creationTimestamp"),
            deleting=bool(meta.get("deletionTimestamp")),
            status=dict(body.get("status") or {}),
        )


# ----------------------------------------------------------------------------- parsing


def default_secret_name(identity: str, credential: str) -> str:
    """``<identity>.<credential>``: credential names have no dot, so no two identities of a
    namespace can have the same default (``pay-api`` + ``token`` and ``pay`` + ``api-token``
    once both gave ``pay-api-token``)."""
    return f"{identity}.{credential}"


def legacy_secret_name(identity: str, credential: str) -> str:
    """The default before :func:`default_secret_name`: kept by credentials issued under it."""
    return f"{identity}-{credential}"


def _secret_names_in_use(status: Any) -> dict[str, str]:
    """Credential name -> Secret name, as the status records them."""
    if not isinstance(status, Mapping):
        return {}
    out = {}
    for entry in status.get("credentials") or ():
        if isinstance(entry, Mapping) and entry.get("name") and entry.get("secretName"):
            out[str(entry["name"])] = str(entry["secretName"])
    return out


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def _list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(path, "must be a list")
    return value


def _strs(value: Any, path: str) -> tuple[str, ...]:
    items = _list(value, path)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{path}[{i}]", "must be a non-empty string")
    return tuple(items)


def _duration(value: Any, path: str) -> dt.timedelta:
    try:
        return parse_duration(value)
    except ValueError as err:
        raise SpecError(path, str(err)) from None


def _hours(delta: dt.timedelta) -> str:
    """``10m``, ``1h``, ``8760h``: a bound the way the CRD's messages write it."""
    minutes = int(delta.total_seconds()) // 60
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def _dns_subdomain(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise SpecError(
            path,
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )
    return value


def _rule(raw: Any, path: str, namespaced: bool) -> PolicyRule:
    r = _obj(raw, path)
    verbs = _strs(r.get("verbs"), f"{path}.verbs")
    if not verbs:
        raise SpecError(f"{path}.verbs", "must list at least one verb")
    urls = _strs(r.get("nonResourceURLs"), f"{path}.nonResourceURLs")
    if urls and namespaced:
        raise SpecError(f"{path}.nonResourceURLs", "is only allowed in clusterRules")
    if urls and (r.get("resources") or r.get("apiGroups")):
        raise SpecError(path, "set either resources (with apiGroups) or nonResourceURLs, not both")
    # The empty string names the core group, so apiGroups is not checked with _strs.
    groups = tuple(str(g) for g in _list(r.get("apiGroups"), f"{path}.apiGroups"))
    resources = _strs(r.get("resources"), f"{path}.resources")
    if not urls and not resources:
        raise SpecError(f"{path}.resources", "must list at least one resource")
    return PolicyRule(
        api_groups=groups,
        resources=resources,
        verbs=verbs,
        resource_names=_strs(r.get("resourceNames"), f"{path}.resourceNames"),
        non_resource_urls=urls,
    )


def _label_key(key: Any, path: str) -> str:
    """A label key as Kubernetes checks it: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
    if (
        not isinstance(key, str)
        or len(name) > 63
        or not _LABEL_NAME.fullmatch(name)
        or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)))
    ):
        raise SpecError(
            path,
            "must be a label key: an optional DNS subdomain prefix and '/', then at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return key


def _label_value(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_NAME.fullmatch(value or "a"):
        raise SpecError(
            path,
            "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit",
        )
    return value


def _selector(raw: Any, path: str, strict: bool = False) -> LabelSelector:
    """A label selector. ``strict``: its keys and values are checked as Kubernetes checks
    them, for a selector that is sent to the API server (an IdentityPolicy's namespace
    selector is only matched here, and a policy is never ignored for a key it cannot match).
    """
    s = _obj(raw, path)
    labels = _obj(s.get("matchLabels"), f"{path}.matchLabels")
    if strict:
        for k, v in labels.items():
            _label_key(k, f"{path}.matchLabels")
            _label_value(v, f"{path}.matchLabels[{k!r}]")
    exprs = []
    for i, e in enumerate(_list(s.get("matchExpressions"), f"{path}.matchExpressions")):
        ep = f"{path}.matchExpressions[{i}]"
        e = _obj(e, ep)
        op = e.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SpecError(f"{ep}.operator", "must be one of In, NotIn, Exists, DoesNotExist")
        values = _strs(e.get("values"), f"{ep}.values")
        if strict:
            _label_key(e.get("key"), f"{ep}.key")
            for j, v in enumerate(values):
                _label_value(v, f"{ep}.values[{j}]")
        exprs.append((str(e.get("key", "")), str(op), values))
    return LabelSelector(
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        match_expressions=tuple(exprs),
    )


def _credential(
    raw: Any, path: str, identity: str, in_use: Mapping[str, str] | None = None
) -> Credential:
    c = _obj(raw, path)
    name = c.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
        raise SpecError(f"{path}.name", "must be a DNS-1123 label (lowercase, digits, '-')")
    ctype = c.get("type")
    if ctype not in CREDENTIAL_TYPES:
        raise SpecError(f"{path}.type", f"must be one of {', '.join(CREDENTIAL_TYPES)}")
    default = default_secret_name(identity, name)
    if (in_use or {}).get(name) == legacy_secret_name(identity, name):
        default = legacy_secret_name(identity, name)  # issued before the default changed
    secret_name = _dns_subdomain(c.get("secretName") or default, f"{path}.secretName")
    ttl = _duration(c["ttl"], f"{path}.ttl") if "ttl" in c else DEFAULT_TTL[ctype]
    shortest, longest = TTL_BOUNDS[ctype]
    if not shortest <= ttl <= longest:
        raise SpecError(
            f"{path}.ttl",
            f"must be between {_hours(shortest)} and {_hours(longest)} for {ctype}",
        )
    audiences = _strs(c.get("audiences"), f"{path}.audiences")
    if audiences and ctype != "ServiceAccountToken":
        raise SpecError(f"{path}.audiences", "is only allowed for type ServiceAccountToken")
    issuer_ref = None
    if "issuerRef" in c:
        if ctype != "X509":
            raise SpecError(f"{path}.issuerRef", "is only allowed for type X509")
        ir = _obj(c["issuerRef"], f"{path}.issuerRef")
        kind = ir.get("kind", "ClusterIdentityIssuer")
        if kind not in ("IdentityIssuer", "ClusterIdentityIssuer"):
            raise SpecError(
                f"{path}.issuerRef.kind", "must be IdentityIssuer or ClusterIdentityIssuer"
            )
        if not ir.get("name"):
            raise SpecError(f"{path}.issuerRef.name", "is required")
        issuer_ref = IssuerRef(kind=str(kind), name=str(ir["name"]))
    elif ctype == "X509":
        raise SpecError(f"{path}.issuerRef", "is required for type X509")
    alg = c.get("keyAlgorithm", "ECDSA-P256")
    if alg not in KEY_ALGORITHMS:
        raise SpecError(f"{path}.keyAlgorithm", f"must be one of {', '.join(KEY_ALGORITHMS)}")
    dns_names = _strs(c.get("dnsNames"), f"{path}.dnsNames")
    if dns_names and ctype != "X509":
        raise SpecError(f"{path}.dnsNames", "is only allowed for type X509")
    for i, dns_name in enumerate(dns_names):
        if len(dns_name) > 253 or not _DNS_NAME.fullmatch(dns_name):
            raise SpecError(
                f"{path}.dnsNames[{i}]",
                "must be a DNS name: lowercase letters, digits, '-' and '.', labels of at most "
                "63 characters starting and ending with a letter or digit, at most 253 in all",
            )
    generator = None
    if "generator" in c:
        if ctype != "StaticSecret":
            raise SpecError(f"{path}.generator", "is only allowed for type StaticSecret")
        g = _obj(c["generator"], f"{path}.generator")
        length = g.get("length", 32)
        if not isinstance(length, int) or not 8 <= length <= 4096:
            raise SpecError(f"{path}.generator.length", "must be an integer from 8 to 4096")
        charset = g.get("charset", "alphanumeric")
        if charset not in CHARSETS:
            raise SpecError(f"{path}.generator.charset", f"must be one of {', '.join(CHARSETS)}")
        generator = Generator(length=length, charset=str(charset))
    elif ctype == "StaticSecret":
        generator = Generator()
    return Credential(
        name=name,
        type=str(ctype),
        secret_name=secret_name,
        ttl=ttl,
        audiences=audiences,
        issuer_ref=issuer_ref,
        key_algorithm=str(alg),
        dns_names=dns_names,
        generator=generator,
    )


def parse_spec(
    raw: Mapping[str, Any], default_name: str, in_use: Mapping[str, str] | None = None
) -> Spec:
    """Turn ``spec`` into a :class:`Spec`; raise :class:`SpecError` naming the field."""
    spec = _obj(raw, "spec")
    owner = spec.get("owner")
    if not isinstance(owner, str) or not owner.strip():
        raise SpecError("spec.owner", "is required and must not be empty")
    sa = _obj(spec.get("serviceAccount"), "spec.serviceAccount")
    sa_name = sa.get("name") or default_name
    if not isinstance(sa_name, str) or len(sa_name) > 253 or not _DNS1123_SUBDOMAIN.match(sa_name):
        raise SpecError("spec.serviceAccount.name", "must be a DNS-1123 subdomain")
    workloads = _obj(spec.get("workloads"), "spec.workloads")
    perms = _obj(spec.get("permissions"), "spec.permissions")
    rules = tuple(
        _rule(r, f"spec.permissions.rules[{i}]", namespaced=True)
        for i, r in enumerate(_list(perms.get("rules"), "spec.permissions.rules"))
    )
    cluster_rules = tuple(
        _rule(r, f"spec.permissions.clusterRules[{i}]", namespaced=False)
        for i, r in enumerate(_list(perms.get("clusterRules"), "spec.permissions.clusterRules"))
    )
    role_refs = []
    for i, ref in enumerate(_list(perms.get("roleRefs"), "spec.permissions.roleRefs")):
        p = f"spec.permissions.roleRefs[{i}]"
        ref = _obj(ref, p)
        if ref.get("kind") not in ("Role", "ClusterRole"):
            raise SpecError(f"{p}.kind", "must be Role or ClusterRole")
        if not ref.get("name"):
            raise SpecError(f"{p}.name", "is required")
        role_refs.append(RoleRef(kind=str(ref["kind"]), name=str(ref["name"])))
    creds = []
    seen: set[str] = set()
    for i, c in enumerate(_list(spec.get("credentials"), "spec.credentials")):
        cred = _credential(c, f"spec.credentials[{i}]", default_name, in_use)
        if cred.name in seen:
            raise SpecError(
                f"spec.credentials[{i}].name", f"duplicate credential name {cred.name!r}"
            )
        seen.add(cred.name)
        creds.append(cred)
    secret_names = [c.secret_name for c in creds]
    raw_creds = _list(spec.get("credentials"), "spec.credentials")
    clashes = [i for i, c in enumerate(creds) if secret_names.count(c.secret_name) > 1]
    if clashes:
        # Name the field the user wrote, not a default they never saw.
        explicit = [i for i in clashes if (raw_creds[i] or {}).get("secretName")]
        i = (explicit or clashes)[-1] if explicit else clashes[-1]
        raise SpecError(f"spec.credentials[{i}].secretName", "must be unique among credentials")
    rotation = _obj(spec.get("rotation"), "spec.rotation")
    fraction: float | None = None
    renew_before = None
    if "renewBefore" in rotation and "renewBeforeFraction" in rotation:
        raise SpecError("spec.rotation", "set renewBefore or renewBeforeFraction, not both")
    if "renewBefore" in rotation:
        renew_before = _duration(rotation["renewBefore"], "spec.rotation.renewBefore")
    else:
        fraction = rotation.get("renewBeforeFraction", DEFAULT_RENEW_FRACTION)
        # Compared before float(): an int too large for a float would raise OverflowError.
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not 0 < fraction < 1
        ):
            raise SpecError("spec.rotation.renewBeforeFraction", "must be a number between 0 and 1")
        fraction = float(fraction)
    lifetime = _obj(spec.get("lifetime"), "spec.lifetime")
    valid_for = (
        _duration(lifetime["validFor"], "spec.lifetime.validFor")
        if "validFor" in lifetime
        else None
    )
    revocation = _obj(spec.get("revocation"), "spec.revocation")
    on_del = revocation.get("onWorkloadDeletion", "Revoke")
    if on_del not in ("Revoke", "Retain"):
        raise SpecError("spec.revocation.onWorkloadDeletion", "must be Revoke or Retain")
    grace = (
        _duration(revocation["gracePeriod"], "spec.revocation.gracePeriod")
        if "gracePeriod" in revocation
        else DEFAULT_GRACE
    )
    return Spec(
        owner=owner.strip(),
        purpose=str(spec.get("purpose") or ""),
        service_account=sa_name,
        automount_token=bool(sa.get("automountToken", False)),
        selector=_selector(workloads.get("selector"), "spec.workloads.selector", strict=True),
        rollout_on_rotation=bool(workloads.get("rolloutOnRotation", False)),
        rules=rules,
        cluster_rules=cluster_rules,
        role_refs=tuple(role_refs),
        credentials=tuple(creds),
        renew_before_fraction=fraction,
        renew_before=renew_before,
        valid_for=valid_for,
        on_workload_deletion=str(on_del),
        grace_period=grace,
    )
