"""The MachineIdentity model: the body of the custom resource turned into typed data.

The CRD's schema and CEL rules reject most bad input at admission; this model checks
again (the operator may meet objects written before a rule existed, or a cluster without
the CRD's validation) and names the field and the rule in every error.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.fields import (
    DNS1123_SUBDOMAIN,
    as_duration,
    as_list,
    as_object,
    as_strings,
    dns_subdomain,
    hours,
)

# Re-exported: the rest of the operator imports them from here.
from nhi.models.fields import SpecError as SpecError
from nhi.models.selector import LabelSelector as LabelSelector
from nhi.models.selector import parse_selector
from nhi.models.vault_storage import (
    KVLocation,
    VaultStorage,
    credential_location,
    parse_vault_storage,
)

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
#: A DNS name of a certificate: labels of at most 63 characters (RFC 1035), 253 in all.
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


RIGHTSIZING_OFF = "Off"
RIGHTSIZING_SUGGEST = "Suggest"


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
    kv: KVLocation | None = None  # a copy of each value kept in Vault's KV v2


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
    #: ``permissions.rightsizing``: Suggest keeps the right-sized permissions in status.
    rightsizing: str = RIGHTSIZING_OFF
    vault: VaultStorage | None = None

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


def parse_rule(raw: Any, path: str, namespaced: bool) -> PolicyRule:
    """One RBAC rule of a spec (``namespaced``: of a Role, so no nonResourceURLs)."""
    r = as_object(raw, path)
    verbs = as_strings(r.get("verbs"), f"{path}.verbs")
    if not verbs:
        raise SpecError(f"{path}.verbs", "must list at least one verb")
    urls = as_strings(r.get("nonResourceURLs"), f"{path}.nonResourceURLs")
    if urls and namespaced:
        raise SpecError(f"{path}.nonResourceURLs", "is only allowed in clusterRules")
    if urls and (r.get("resources") or r.get("apiGroups")):
        raise SpecError(path, "set either resources (with apiGroups) or nonResourceURLs, not both")
    # The empty string names the core group, so apiGroups is not checked with as_strings.
    groups = tuple(str(g) for g in as_list(r.get("apiGroups"), f"{path}.apiGroups"))
    resources = as_strings(r.get("resources"), f"{path}.resources")
    if not urls and not resources:
        raise SpecError(f"{path}.resources", "must list at least one resource")
    return PolicyRule(
        api_groups=groups,
        resources=resources,
        verbs=verbs,
        resource_names=as_strings(r.get("resourceNames"), f"{path}.resourceNames"),
        non_resource_urls=urls,
    )


def _permissions(
    perms: Mapping[str, Any],
) -> tuple[tuple[PolicyRule, ...], tuple[PolicyRule, ...], tuple[RoleRef, ...]]:
    """``spec.permissions``: (rules, clusterRules, roleRefs)."""
    rules = tuple(
        parse_rule(r, f"spec.permissions.rules[{i}]", namespaced=True)
        for i, r in enumerate(as_list(perms.get("rules"), "spec.permissions.rules"))
    )
    cluster_rules = tuple(
        parse_rule(r, f"spec.permissions.clusterRules[{i}]", namespaced=False)
        for i, r in enumerate(as_list(perms.get("clusterRules"), "spec.permissions.clusterRules"))
    )
    role_refs = parse_role_refs(perms.get("roleRefs"), "spec.permissions.roleRefs")
    return rules, cluster_rules, role_refs


def parse_role_refs(raw: Any, path: str) -> tuple[RoleRef, ...]:
    """Roles and ClusterRoles to bind (``roleRefs`` of an identity or a grant)."""
    role_refs = []
    for i, ref in enumerate(as_list(raw, path)):
        p = f"{path}[{i}]"
        ref = as_object(ref, p)
        if ref.get("kind") not in ("Role", "ClusterRole"):
            raise SpecError(f"{p}.kind", "must be Role or ClusterRole")
        if not ref.get("name"):
            raise SpecError(f"{p}.name", "is required")
        role_refs.append(RoleRef(kind=str(ref["kind"]), name=str(ref["name"])))
    return tuple(role_refs)


def _credential_secret_name(
    c: Mapping[str, Any], path: str, identity: str, name: str, in_use: Mapping[str, str] | None
) -> str:
    default = default_secret_name(identity, name)
    if (in_use or {}).get(name) == legacy_secret_name(identity, name):
        default = legacy_secret_name(identity, name)  # issued before the default changed
    return dns_subdomain(c.get("secretName") or default, f"{path}.secretName")


def _ttl(c: Mapping[str, Any], path: str, ctype: str) -> dt.timedelta:
    ttl = as_duration(c["ttl"], f"{path}.ttl") if "ttl" in c else DEFAULT_TTL[ctype]
    shortest, longest = TTL_BOUNDS[ctype]
    if not shortest <= ttl <= longest:
        raise SpecError(
            f"{path}.ttl",
            f"must be between {hours(shortest)} and {hours(longest)} for {ctype}",
        )
    return ttl


def _issuer_ref(c: Mapping[str, Any], path: str, ctype: str) -> IssuerRef | None:
    if "issuerRef" not in c:
        if ctype == "X509":
            raise SpecError(f"{path}.issuerRef", "is required for type X509")
        return None
    if ctype != "X509":
        raise SpecError(f"{path}.issuerRef", "is only allowed for type X509")
    ir = as_object(c["issuerRef"], f"{path}.issuerRef")
    kind = ir.get("kind", "ClusterIdentityIssuer")
    if kind not in ("IdentityIssuer", "ClusterIdentityIssuer"):
        raise SpecError(f"{path}.issuerRef.kind", "must be IdentityIssuer or ClusterIdentityIssuer")
    if not ir.get("name"):
        raise SpecError(f"{path}.issuerRef.name", "is required")
    return IssuerRef(kind=str(kind), name=str(ir["name"]))


def _dns_names(c: Mapping[str, Any], path: str, ctype: str) -> tuple[str, ...]:
    dns_names = as_strings(c.get("dnsNames"), f"{path}.dnsNames")
    if dns_names and ctype != "X509":
        raise SpecError(f"{path}.dnsNames", "is only allowed for type X509")
    for i, dns_name in enumerate(dns_names):
        if len(dns_name) > 253 or not _DNS_NAME.fullmatch(dns_name):
            raise SpecError(
                f"{path}.dnsNames[{i}]",
                "must be a DNS name: lowercase letters, digits, '-' and '.', labels of at most "
                "63 characters starting and ending with a letter or digit, at most 253 in all",
            )
    return dns_names


def _generator(c: Mapping[str, Any], path: str, ctype: str) -> Generator | None:
    if "generator" not in c:
        return Generator() if ctype == "StaticSecret" else None
    if ctype != "StaticSecret":
        raise SpecError(f"{path}.generator", "is only allowed for type StaticSecret")
    g = as_object(c["generator"], f"{path}.generator")
    length = g.get("length", 32)
    if not isinstance(length, int) or not 8 <= length <= 4096:
        raise SpecError(f"{path}.generator.length", "must be an integer from 8 to 4096")
    charset = g.get("charset", "alphanumeric")
    if charset not in CHARSETS:
        raise SpecError(f"{path}.generator.charset", f"must be one of {', '.join(CHARSETS)}")
    return Generator(length=length, charset=str(charset))


def _credential(
    raw: Any,
    path: str,
    identity: str,
    in_use: Mapping[str, str] | None = None,
    storage: VaultStorage | None = None,
) -> Credential:
    c = as_object(raw, path)
    name = c.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
        raise SpecError(f"{path}.name", "must be a DNS-1123 label (lowercase, digits, '-')")
    ctype = c.get("type")
    if ctype not in CREDENTIAL_TYPES:
        raise SpecError(f"{path}.type", f"must be one of {', '.join(CREDENTIAL_TYPES)}")
    secret_name = _credential_secret_name(c, path, identity, name, in_use)
    ttl = _ttl(c, path, ctype)
    audiences = as_strings(c.get("audiences"), f"{path}.audiences")
    if audiences and ctype != "ServiceAccountToken":
        raise SpecError(f"{path}.audiences", "is only allowed for type ServiceAccountToken")
    issuer_ref = _issuer_ref(c, path, ctype)
    alg = c.get("keyAlgorithm", "ECDSA-P256")
    if alg not in KEY_ALGORITHMS:
        raise SpecError(f"{path}.keyAlgorithm", f"must be one of {', '.join(KEY_ALGORITHMS)}")
    dns_names = _dns_names(c, path, ctype)
    return Credential(
        name=name,
        type=str(ctype),
        secret_name=secret_name,
        ttl=ttl,
        audiences=audiences,
        issuer_ref=issuer_ref,
        key_algorithm=str(alg),
        dns_names=dns_names,
        generator=_generator(c, path, ctype),
        kv=credential_location(c, path, storage, name),
    )


def _credentials(
    spec: Mapping[str, Any],
    identity: str,
    in_use: Mapping[str, str] | None,
    storage: VaultStorage | None = None,
) -> tuple[Credential, ...]:
    """``spec.credentials``: unique names, and unique Secret names once defaults are applied."""
    creds = []
    seen: set[str] = set()
    for i, c in enumerate(as_list(spec.get("credentials"), "spec.credentials")):
        cred = _credential(c, f"spec.credentials[{i}]", identity, in_use, storage)
        if cred.name in seen:
            raise SpecError(
                f"spec.credentials[{i}].name", f"duplicate credential name {cred.name!r}"
            )
        seen.add(cred.name)
        creds.append(cred)
    secret_names = [c.secret_name for c in creds]
    raw_creds = as_list(spec.get("credentials"), "spec.credentials")
    clashes = [i for i, c in enumerate(creds) if secret_names.count(c.secret_name) > 1]
    if clashes:
        # Name the field the user wrote, not a default they never saw.
        explicit = [i for i in clashes if (raw_creds[i] or {}).get("secretName")]
        i = (explicit or clashes)[-1] if explicit else clashes[-1]
        raise SpecError(f"spec.credentials[{i}].secretName", "must be unique among credentials")
    return tuple(creds)


def _rotation(rotation: Mapping[str, Any]) -> tuple[float | None, dt.timedelta | None]:
    """``spec.rotation``: (renewBeforeFraction, renewBefore), one of them None."""
    if "renewBefore" in rotation and "renewBeforeFraction" in rotation:
        raise SpecError("spec.rotation", "set renewBefore or renewBeforeFraction, not both")
    if "renewBefore" in rotation:
        return None, as_duration(rotation["renewBefore"], "spec.rotation.renewBefore")
    fraction = rotation.get("renewBeforeFraction", DEFAULT_RENEW_FRACTION)
    # Compared before float(): an int too large for a float would raise OverflowError.
    if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise SpecError("spec.rotation.renewBeforeFraction", "must be a number between 0 and 1")
    return float(fraction), None


def _revocation(revocation: Mapping[str, Any]) -> tuple[str, dt.timedelta]:
    """``spec.revocation``: (onWorkloadDeletion, gracePeriod)."""
    on_del = revocation.get("onWorkloadDeletion", "Revoke")
    if on_del not in ("Revoke", "Retain"):
        raise SpecError("spec.revocation.onWorkloadDeletion", "must be Revoke or Retain")
    grace = (
        as_duration(revocation["gracePeriod"], "spec.revocation.gracePeriod")
        if "gracePeriod" in revocation
        else DEFAULT_GRACE
    )
    return str(on_del), grace


def parse_spec(
    raw: Mapping[str, Any], default_name: str, in_use: Mapping[str, str] | None = None
) -> Spec:
    """Turn ``spec`` into a :class:`Spec`; raise :class:`SpecError` naming the field.

    The sections are checked in the order below, so a spec with several errors always
    reports the same one.
    """
    spec = as_object(raw, "spec")
    owner = spec.get("owner")
    if not isinstance(owner, str) or not owner.strip():
        raise SpecError("spec.owner", "is required and must not be empty")
    sa = as_object(spec.get("serviceAccount"), "spec.serviceAccount")
    sa_name = sa.get("name") or default_name
    if not isinstance(sa_name, str) or len(sa_name) > 253 or not DNS1123_SUBDOMAIN.match(sa_name):
        raise SpecError("spec.serviceAccount.name", "must be a DNS-1123 subdomain")
    workloads = as_object(spec.get("workloads"), "spec.workloads")
    rules, cluster_rules, role_refs = _permissions(
        as_object(spec.get("permissions"), "spec.permissions")
    )
    storage = parse_vault_storage(spec.get("vault"), default_name)
    creds = _credentials(spec, default_name, in_use, storage)
    fraction, renew_before = _rotation(as_object(spec.get("rotation"), "spec.rotation"))
    lifetime = as_object(spec.get("lifetime"), "spec.lifetime")
    valid_for = (
        as_duration(lifetime["validFor"], "spec.lifetime.validFor")
        if "validFor" in lifetime
        else None
    )
    on_del, grace = _revocation(as_object(spec.get("revocation"), "spec.revocation"))
    return Spec(
        owner=owner.strip(),
        purpose=str(spec.get("purpose") or ""),
        service_account=sa_name,
        automount_token=bool(sa.get("automountToken", False)),
        # Checked last: a bad selector is reported after every other section.
        selector=parse_selector(workloads.get("selector"), "spec.workloads.selector", strict=True),
        rollout_on_rotation=bool(workloads.get("rolloutOnRotation", False)),
        rules=rules,
        cluster_rules=cluster_rules,
        role_refs=role_refs,
        credentials=creds,
        renew_before_fraction=fraction,
        renew_before=renew_before,
        valid_for=valid_for,
        on_workload_deletion=on_del,
        grace_period=grace,
        rightsizing=_rightsizing(as_object(spec.get("permissions"), "spec.permissions")),
        vault=storage,
    )


def _rightsizing(perms: Mapping[str, Any]) -> str:
    value = perms.get("rightsizing", RIGHTSIZING_OFF)
    if value not in (RIGHTSIZING_OFF, RIGHTSIZING_SUGGEST):
        raise SpecError("spec.permissions.rightsizing", "must be Off or Suggest")
    return str(value)
