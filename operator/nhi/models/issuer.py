"""The IdentityIssuer / ClusterIdentityIssuer model: the custom resource as typed data.

The CRDs' schemas and CEL rules reject most bad input at admission; this model checks again
(an object may predate a rule, or the CRD's validation may be missing) and names the field and
the rule in every error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.duration import parse_duration
from nhi.models.identity import KEY_ALGORITHMS, SpecError

ISSUER_KIND = "IdentityIssuer"
CLUSTER_ISSUER_KIND = "ClusterIdentityIssuer"
KINDS = (ISSUER_KIND, CLUSTER_ISSUER_KIND)
PLURALS = {ISSUER_KIND: "identityissuers", CLUSTER_ISSUER_KIND: "clusteridentityissuers"}

ISSUER_LABEL = "nhi.dev/issuer"
ISSUER_KIND_LABEL = "nhi.dev/issuer-kind"
TRUST_BUNDLE_LABEL = "nhi.dev/trust-bundle"
PROVENANCE_ANNOTATION = "nhi.dev/provenance"
"""On the ConfigMaps the operator created: a tag that proves it (nhi.crypto.provenance)."""
SOURCES_ANNOTATION = "nhi.dev/trust-bundle-sources"
"""On a trust bundle: which issuer each certificate comes from (by SHA-256 fingerprint)."""

DEFAULT_KEY_ALGORITHM = "ECDSA-P256"
DEFAULT_CA_TTL = dt.timedelta(hours=8760)
MIN_CA_TTL = dt.timedelta(hours=1)
DEFAULT_TRUST_BUNDLE = "nhi-trust-bundle"
CRL_PREFIX = "nhi-crl-"
LEGACY_CRL = "nhi-crl"
"""The default CRL name before it was derived from the issuer (kept by issuers created then)."""
DEFAULT_CRL_VALIDITY = dt.timedelta(hours=24)
MIN_CRL_VALIDITY = dt.timedelta(minutes=10)
#: A certificate's commonName: at most 64 bytes of UTF-8 (a non-ASCII character takes 2-4).
MAX_COMMON_NAME_BYTES = 64

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)

IssuerKey = tuple[str, str, str]  # (kind, namespace or '', name)


class IssuerReason:
    """Condition and Event reasons of issuers (CamelCase constants, stable for alerting)."""

    # Ready
    CA_READY = "CAReady"
    # Not ready
    INVALID_SPEC = "InvalidSpec"
    ISSUER_NOT_FOUND = "IssuerNotFound"
    CA_SECRET_NOT_FOUND = "CASecretNotFound"  # noqa: S105
    CA_SECRET_INVALID = "CASecretInvalid"  # noqa: S105
    CA_EXPIRED = "CAExpired"
    CA_NOT_YET_VALID = "CANotYetValid"
    ROOT_SECRET_CONFLICT = "RootSecretConflict"  # noqa: S105
    CRL_CONFLICT = "CRLConflict"
    TRUST_BUNDLE_CONFLICT = "TrustBundleConflict"
    API_ERROR = "ApiError"
    # Events
    CA_GENERATED = "CAGenerated"
    CA_ROTATED = "CARotated"
    CA_RESTORED = "CARestored"
    CA_CHANGED = "CAChanged"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class SelfSignedSource:
    key_algorithm: str = DEFAULT_KEY_ALGORITHM
    ttl: dt.timedelta = DEFAULT_CA_TTL
    common_name: str | None = None


@dataclass(frozen=True)
class CASource:
    secret_name: str
    secret_namespace: str | None = None  # ClusterIdentityIssuer only; None: operator namespace


@dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret; ``namespace`` None: the issuer's home namespace."""

    name: str
    key: str
    namespace: str | None = None


#: The audience of the tokens the operator requests to log in to Vault: never the API
#: server's, so a token sent to a Vault address is of no use against Kubernetes.
VAULT_AUDIENCE = "vault"


@dataclass(frozen=True)
class VaultKubernetesAuth:
    role: str
    mount: str = "kubernetes"
    service_account: str | None = None  # None: the operator's own ServiceAccount token
    audience: str = VAULT_AUDIENCE  # of the token requested for service_account


@dataclass(frozen=True)
class VaultAppRoleAuth:
    role_id: str
    secret_id: SecretKeyRef
    mount: str = "approle"


@dataclass(frozen=True)
class VaultTokenAuth:
    token: SecretKeyRef


VaultAuth = VaultKubernetesAuth | VaultAppRoleAuth | VaultTokenAuth


@dataclass(frozen=True)
class VaultSource:
    address: str
    pki_role: str
    auth: VaultAuth
    pki_mount: str = "pki"
    ca_bundle: str | None = field(default=None, repr=False)

    @property
    def crl_url(self) -> str:
        return f"{self.address.rstrip('/')}/v1/{self.pki_mount}/crl"

    def secret_refs(self) -> list[SecretKeyRef]:
        """The Secrets its auth reads."""
        if isinstance(self.auth, VaultAppRoleAuth):
            return [self.auth.secret_id]
        if isinstance(self.auth, VaultTokenAuth):
            return [self.auth.token]
        return []


Source = SelfSignedSource | CASource | VaultSource


@dataclass(frozen=True)
class Issuer:
    kind: str
    namespace: str  # '' for ClusterIdentityIssuer
    name: str
    uid: str
    generation: int
    trust_domain: str
    source: Source
    trust_bundle_configmap: str = DEFAULT_TRUST_BUNDLE
    crl_configmap: str = LEGACY_CRL  # from_body derives it: default_crl_configmap()
    crl_validity: dt.timedelta = DEFAULT_CRL_VALIDITY
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> IssuerKey:
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def cluster_scoped(self) -> bool:
        return self.kind == CLUSTER_ISSUER_KIND

    def home_namespace(self, operator_namespace: str) -> str:
        """Where the issuer keeps its root Secret and its CRL."""
        return operator_namespace if self.cluster_scoped else self.namespace

    def ca_secret(self, operator_namespace: str) -> tuple[str, str]:
        """(namespace, name) of the CA Secret of a ``ca`` source."""
        if not isinstance(self.source, CASource):
            raise ValueError(f"{self.ref} has no ca source")
        if self.cluster_scoped:
            return (self.source.secret_namespace or operator_namespace, self.source.secret_name)
        return (self.namespace, self.source.secret_name)

    def secret_ref(self, ref: SecretKeyRef, operator_namespace: str) -> tuple[str, str]:
        """(namespace, name) of a Secret the issuer's source names (home namespace default)."""
        return (ref.namespace or self.home_namespace(operator_namespace), ref.name)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Issuer:
        kind = str(body.get("kind") or "")
        if kind not in KINDS:
            raise SpecError("kind", f"must be one of {', '.join(KINDS)}")
        meta = body.get("metadata") or {}
        spec = _obj(body.get("spec"), "spec")
        namespace = "" if kind == CLUSTER_ISSUER_KIND else str(meta.get("namespace") or "")
        return cls(
            kind=kind,
            namespace=namespace,
            name=str(meta.get("name") or ""),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
            trust_domain=_trust_domain(spec.get("trustDomain")),
            source=_source(spec, cluster=kind == CLUSTER_ISSUER_KIND, namespace=namespace),
            **_publishing(spec, kind, str(meta.get("name") or "")),
            deleting=bool(meta.get("deletionTimestamp")),
            status=dict(body.get("status") or {}),
        )


def issuer_key(kind: str, name: str, namespace: str | None) -> IssuerKey:
    """The key of an issuer; a ClusterIdentityIssuer has no namespace."""
    return (kind, "" if kind == CLUSTER_ISSUER_KIND else (namespace or ""), name)


def default_crl_configmap(kind: str, name: str) -> str:
    """The CRL ConfigMap of an issuer without ``spec.crl.configMapName``: one per issuer.

    ``nhi-crl-<kind in lower case>-<name>``: two issuers of a kind differ by name, and the
    prefixes of the two kinds differ at their ninth character, so a ClusterIdentityIssuer and
    an IdentityIssuer of any names (in the operator's namespace) never share one. A name
    longer than 253 characters keeps its start and ends with a hash of the kind and the whole
    name, so it stays deterministic, distinct and a DNS-1123 subdomain.
    """
    full = f"{CRL_PREFIX}{kind.lower()}-{name}"
    if len(full) <= 253:
        return full
    digest = hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()[:10]
    return f"{full[:242].rstrip('.-')}-{digest}"


# ----------------------------------------------------------------------------- parsing


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def _str(value: Any, path: str, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must be a non-empty string")
    return value


def _trust_domain(value: Any) -> str:
    text = _str(value, "spec.trustDomain")
    if len(text) > 255 or not _TRUST_DOMAIN.match(text):
        raise SpecError(
            "spec.trustDomain",
            "must be lower case letters, digits, '.', '-' and '_' only, at most 255 characters",
        )
    return text


def _duration(value: Any, path: str, default: dt.timedelta, minimum: dt.timedelta) -> dt.timedelta:
    if value is None:
        return default
    try:
        parsed = parse_duration(value)
    except ValueError as err:
        raise SpecError(path, str(err)) from None
    if parsed < minimum:
        raise SpecError(path, f"must be at least {_human(minimum)}")
    return parsed


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def _dns_subdomain(value: Any, path: str, default: str | None = None) -> str:
    text = _str(value, path, default)
    if len(text) > 253 or not _DNS1123_SUBDOMAIN.match(text):
        raise SpecError(
            path,
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )
    return text


def _source(spec: Mapping[str, Any], cluster: bool, namespace: str = "") -> Source:
    present = [k for k in ("selfSigned", "ca", "vault") if spec.get(k) is not None]
    if len(present) != 1:
        raise SpecError("spec", "exactly one of selfSigned, ca or vault must be set")
    which = present[0]
    raw = _obj(spec[which], f"spec.{which}")
    if which == "selfSigned":
        alg = _str(raw.get("keyAlgorithm"), "spec.selfSigned.keyAlgorithm", DEFAULT_KEY_ALGORITHM)
        if alg not in KEY_ALGORITHMS:
            raise SpecError(
                "spec.selfSigned.keyAlgorithm", f"must be one of {', '.join(KEY_ALGORITHMS)}"
            )
        cn = raw.get("commonName")
        if cn is not None:
            cn = _str(cn, "spec.selfSigned.commonName")
            try:
                size = len(cn.encode("utf-8"))
            except UnicodeEncodeError:
                raise SpecError("spec.selfSigned.commonName", "must be valid Unicode") from None
            if size > MAX_COMMON_NAME_BYTES:
                raise SpecError(
                    "spec.selfSigned.commonName",
                    f"must be at most {MAX_COMMON_NAME_BYTES} bytes in UTF-8 (RFC 5280's "
                    f"ub-common-name, counted as X.509 libraries count it): its {len(cn)} "
                    f"characters take {size} bytes",
                )
        return SelfSignedSource(
            key_algorithm=alg,
            ttl=_duration(raw.get("ttl"), "spec.selfSigned.ttl", DEFAULT_CA_TTL, MIN_CA_TTL),
            common_name=cn,
        )
    if which == "ca":
        name = _dns_subdomain(raw.get("secretName"), "spec.ca.secretName")
        ns = raw.get("secretNamespace")
        if ns is not None:
            if not cluster:
                raise SpecError(
                    "spec.ca.secretNamespace",
                    "is only allowed on a ClusterIdentityIssuer (an IdentityIssuer reads its "
                    "own namespace)",
                )
            if not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns):
                raise SpecError("spec.ca.secretNamespace", "must be a DNS-1123 label")
        return CASource(secret_name=name, secret_namespace=ns)
    return _vault(raw, namespace)


_ADDRESS = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
_VAULT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_VAULT_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _vault(raw: Mapping[str, Any], namespace: str) -> VaultSource:
    """``spec.vault``; ``namespace``: the IdentityIssuer's ('' for a ClusterIdentityIssuer)."""
    address = _str(raw.get("address"), "spec.vault.address")
    if len(address) > 2048 or not _ADDRESS.match(address):
        raise SpecError(
            "spec.vault.address",
            "must be an http(s) URL with a host (https://vault.example.org:8200), no query",
        )
    bundle = raw.get("caBundle")
    if bundle is not None and (not isinstance(bundle, str) or "BEGIN CERTIFICATE" not in bundle):
        raise SpecError("spec.vault.caBundle", "must hold PEM certificates")
    pki = _obj(raw.get("pki"), "spec.vault.pki")
    mount = _pattern(pki.get("mount"), "spec.vault.pki.mount", _VAULT_PATH, "pki")
    role = _pattern(pki.get("role"), "spec.vault.pki.role", _VAULT_NAME)
    return VaultSource(
        address=address.rstrip("/"),
        pki_role=role,
        auth=_vault_auth(_obj(raw.get("auth"), "spec.vault.auth"), namespace),
        pki_mount=mount,
        ca_bundle=bundle or None,
    )


def _pattern(value: Any, path: str, rule: re.Pattern[str], default: str | None = None) -> str:
    text = _str(value, path, default)
    if len(text) > 256 or not rule.match(text):
        raise SpecError(path, f"must match {rule.pattern}, at most 256 characters")
    return text


def _vault_auth(raw: Mapping[str, Any], namespace: str) -> VaultAuth:
    present = [k for k in ("kubernetes", "appRole", "tokenSecretRef") if raw.get(k) is not None]
    if len(present) != 1:
        raise SpecError(
            "spec.vault.auth", "exactly one of kubernetes, appRole or tokenSecretRef must be set"
        )
    which = present[0]
    path = f"spec.vault.auth.{which}"
    body = _obj(raw[which], path)
    if which == "kubernetes":
        account = body.get("serviceAccountName")
        audience = body.get("audience")
        if namespace and account is None:
            # The operator's own token would go to whatever address the issuer names.
            raise SpecError(
                f"{path}.serviceAccountName",
                "is required on an IdentityIssuer: it logs in with a token of a ServiceAccount "
                f"of its own namespace ({namespace}), never with the operator's own",
            )
        if namespace and audience is not None:
            raise SpecError(
                f"{path}.audience",
                f"is only allowed on a ClusterIdentityIssuer (an IdentityIssuer's tokens are "
                f"for the audience {VAULT_AUDIENCE} only, never the API server's)",
            )
        return VaultKubernetesAuth(
            role=_pattern(body.get("role"), f"{path}.role", _VAULT_NAME),
            mount=_pattern(body.get("mountPath"), f"{path}.mountPath", _VAULT_PATH, "kubernetes"),
            service_account=None
            if account is None
            else _dns_subdomain(account, f"{path}.serviceAccountName"),
            audience=VAULT_AUDIENCE if audience is None else _str(audience, f"{path}.audience"),
        )
    if which == "appRole":
        return VaultAppRoleAuth(
            role_id=_str(body.get("roleId"), f"{path}.roleId"),
            secret_id=_secret_ref(
                body.get("secretIdSecretRef"), f"{path}.secretIdSecretRef", "secretId", namespace
            ),
            mount=_pattern(body.get("mountPath"), f"{path}.mountPath", _VAULT_PATH, "approle"),
        )
    return VaultTokenAuth(token=_secret_ref(body, path, "token", namespace))


def _secret_ref(value: Any, path: str, default_key: str, namespace: str) -> SecretKeyRef:
    raw = _obj(value, path)
    name = _dns_subdomain(raw.get("name"), f"{path}.name")
    key = _str(raw.get("key"), f"{path}.key", default_key)
    if len(key) > 253 or not _SECRET_KEY.match(key):
        raise SpecError(f"{path}.key", "must be a Secret data key: letters, digits, '-', '_', '.'")
    ns = raw.get("namespace")
    if ns is not None:
        if not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns):
            raise SpecError(f"{path}.namespace", "must be a DNS-1123 label")
        if namespace and ns != namespace:
            raise SpecError(
                f"{path}.namespace",
                f"an IdentityIssuer may only use Secrets of its own namespace ({namespace}), not "
                f"{ns}; the Secret was not read. Copy the auth material into {namespace}, or use "
                f"a ClusterIdentityIssuer",
            )
    return SecretKeyRef(name=name, key=key, namespace=ns)


def _publishing(spec: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    bundle = _obj(spec.get("trustBundle"), "spec.trustBundle")
    crl = _obj(spec.get("crl"), "spec.crl")
    bundle_name = _dns_subdomain(
        bundle.get("configMapName"), "spec.trustBundle.configMapName", DEFAULT_TRUST_BUNDLE
    )
    crl_name = _dns_subdomain(
        crl.get("configMapName"), "spec.crl.configMapName", default_crl_configmap(kind, name)
    )
    if bundle_name == crl_name:
        raise SpecError("spec.crl.configMapName", "must differ from spec.trustBundle.configMapName")
    return {
        "trust_bundle_configmap": bundle_name,
        "crl_configmap": crl_name,
        "crl_validity": _duration(
            crl.get("validity"), "spec.crl.validity", DEFAULT_CRL_VALIDITY, MIN_CRL_VALIDITY
        ),
    }
