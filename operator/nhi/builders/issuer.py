"""Pure builders and decisions for issuers.

The objects an issuer owns (its root Secret, its trust bundle and CRL ConfigMaps) as desired
dicts, the validation of a CA Secret, and the time-based decisions (rotate the root, drop an
expired previous root, re-sign the CRL). Every decision takes ``now``; nothing here does I/O.
Error messages name the Secret and the rule, never any key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from nhi import API_VERSION
from nhi.crypto import (
    CryptoError,
    PrivateKey,
    RevokedSerial,
    cert_pem,
    chain_pem,
    fingerprint_sha256,
    key_algorithm_of,
    load_cert_chain,
    load_private_key,
    private_key_pem,
    provenance_valid,
    rfc3339,
    serial_hex,
    verify_crl,
)
from nhi.crypto.keys import same_public_key
from nhi.models.issuer import (
    ISSUER_KIND_LABEL,
    ISSUER_LABEL,
    PROVENANCE_ANNOTATION,
    SOURCES_ANNOTATION,
    TRUST_BUNDLE_LABEL,
    Issuer,
    IssuerReason,
)
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY, NOT_AFTER_ANNOTATION

ROOT_SECRET_PREFIX = "nhi-issuer-"  # noqa: S105 - a name, not a secret
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"
PREVIOUS_CRT = "previous.crt"
CRL_KEY = "ca.crl"

ROTATE_WHEN_LEFT = 1 / 3
"""A self-signed root is replaced when less than this fraction of its lifetime is left."""

RESIGN_WHEN_LEFT = 1 / 3
"""A CRL is re-signed when less than this fraction of its validity is left."""


class CAProblem(Exception):
    """CA material cannot be used: ``reason`` is an :class:`IssuerReason` constant."""

    def __init__(self, reason: str, message: str, cert: x509.Certificate | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.cert = cert  # the CA certificate, when it was readable (for status)


# ------------------------------------------------------------------------------ metadata


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 characters; longer names are hashed)."""
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[:52].rstrip('.-_')}-{digest}"


def issuer_labels(issuer: Issuer) -> dict[str, str]:
    return {
        MANAGED_BY_KEY: MANAGED_BY,
        ISSUER_LABEL: label_value(issuer.name),
        ISSUER_KIND_LABEL: issuer.kind,
    }


def issuer_selector(issuer: Issuer) -> str:
    """Label selector of the objects the issuer created."""
    return ",".join(f"{k}={v}" for k, v in issuer_labels(issuer).items())


def owned_by(obj: Mapping[str, Any] | None, issuer: Issuer) -> bool:
    """True when ``obj`` carries the labels of objects this issuer created."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in issuer_labels(issuer).items())


def owner_references(issuer: Issuer) -> list[dict[str, Any]]:
    """An owner reference to a namespaced issuer (its objects are garbage-collected with it).

    A ClusterIdentityIssuer's objects carry none; the operator deletes them itself.
    """
    if issuer.cluster_scoped or not issuer.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": issuer.kind,
            "name": issuer.name,
            "uid": issuer.uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]


def _metadata(issuer: Issuer, namespace: str, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": issuer_labels(issuer)}
    owners = owner_references(issuer)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_bytes(secret: Mapping[str, Any], key: str) -> bytes | None:
    """The decoded value of ``key`` in a Secret's data, or None when absent or not base64."""
    raw = (secret.get("data") or {}).get(key)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


# ---------------------------------------------------------------------------- self-signed


def root_secret_name(issuer: Issuer) -> str:
    name = f"{ROOT_SECRET_PREFIX}{issuer.name}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:242]}-{digest}"


@dataclass(frozen=True)
class RootMaterial:
    """A self-signed issuer's root and the previous roots still kept for trust."""

    cert: x509.Certificate
    key: PrivateKey
    previous: tuple[x509.Certificate, ...] = ()


def build_root_secret(issuer: Issuer, namespace: str, root: RootMaterial) -> dict[str, Any]:
    """The Secret (type kubernetes.io/tls) that keeps a self-signed issuer's root."""
    data = {TLS_CRT: _b64(cert_pem(root.cert)), TLS_KEY: _b64(private_key_pem(root.key))}
    if root.previous:
        data[PREVIOUS_CRT] = _b64(chain_pem(root.previous))
    meta = _metadata(issuer, namespace, root_secret_name(issuer))
    meta["annotations"] = {NOT_AFTER_ANNOTATION: rfc3339(root.cert.not_valid_after_utc)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "data": data,
    }


def parse_root_secret(secret: Mapping[str, Any]) -> RootMaterial:
    """Read a root Secret written by :func:`build_root_secret`; CAProblem if it is unusable.

    An unreadable ``previous.crt`` only loses the previous roots (they are for trust, not for
    signing), so it is not an error.
    """
    name = _secret_name(secret)
    cert_data, key_data = secret_bytes(secret, TLS_CRT), secret_bytes(secret, TLS_KEY)
    if cert_data is None or key_data is None:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID, f"Secret {name}: tls.crt and tls.key are required"
        )
    try:
        cert = load_cert_chain(cert_data)[0]
        key = load_private_key(key_data)
    except CryptoError as err:
        raise CAProblem(IssuerReason.CA_SECRET_INVALID, f"Secret {name}: {err}") from None
    _check_ca(cert, key, name)
    previous: tuple[x509.Certificate, ...] = ()
    prev_data = secret_bytes(secret, PREVIOUS_CRT)
    if prev_data:
        try:
            previous = tuple(load_cert_chain(prev_data))
        except CryptoError:
            previous = ()
    return RootMaterial(cert=cert, key=key, previous=previous)


def rotation_at(cert: x509.Certificate) -> dt.datetime:
    """When a root should be replaced: a third of its lifetime before it expires."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - lifetime * ROTATE_WHEN_LEFT


def needs_rotation(cert: x509.Certificate, now: dt.datetime) -> bool:
    """True when less than a third of the root's lifetime is left (or it has expired)."""
    return now >= rotation_at(cert)


def still_valid(
    certs: Iterable[x509.Certificate], now: dt.datetime
) -> tuple[x509.Certificate, ...]:
    """The certificates not yet expired at ``now``, without duplicates, in order."""
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        fp = fingerprint_sha256(cert)
        if fp in seen or now >= cert.not_valid_after_utc:
            continue
        seen.add(fp)
        out.append(cert)
    return tuple(out)


def rotate(
    old: RootMaterial, new_cert: x509.Certificate, new_key: PrivateKey, now: dt.datetime
) -> RootMaterial:
    """The material after a rotation: the old root joins the previous roots while valid."""
    return RootMaterial(
        cert=new_cert,
        key=new_key,
        previous=still_valid((old.cert, *old.previous), now),
    )


def root_action(root: RootMaterial | None, now: dt.datetime) -> str | None:
    """What a self-signed root needs, in order: None when nothing.

    ``create`` (no usable root), ``rotate`` (less than a third of its life left),
    ``prune`` (a previous root expired and leaves the bundle).
    """
    if root is None:
        return "create"
    if needs_rotation(root.cert, now):
        return "rotate"
    if still_valid(root.previous, now) != root.previous:
        return "prune"
    return None


def compose_bundle(
    current: Sequence[x509.Certificate], previous: Sequence[x509.Certificate], now: dt.datetime
) -> bytes:
    """The trust bundle: the current roots, then the previous roots still valid (PEM)."""
    return chain_pem(still_valid((*current, *previous), now))


def next_expiry(certs: Iterable[x509.Certificate]) -> dt.datetime | None:
    """The earliest notAfter among ``certs``."""
    times = [c.not_valid_after_utc for c in certs]
    return min(times) if times else None


# ------------------------------------------------------------------------------ CA Secret


@dataclass(frozen=True)
class CAMaterial:
    """A usable CA: the signing certificate and key, intermediates up to the roots, roots."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]


def _secret_name(secret: Mapping[str, Any]) -> str:
    meta = secret.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _describe(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "<empty subject>"
    return f"{subject} (serial {serial_hex(cert)})"


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    return _issued_by(cert, cert)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_ca(cert: x509.Certificate, key: PrivateKey, where: str, field: str = "tls.crt") -> None:
    """The rules every signing CA must meet; CAProblem names the Secret and the rule."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {field} {_describe(cert)} is not a CA certificate "
            f"(basicConstraints CA:TRUE is required)",
        )
    try:
        ku: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not (ku.key_cert_sign and ku.crl_sign):
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {field} {_describe(cert)} must allow the keyCertSign and cRLSign "
            f"key usages",
        )
    try:
        key_algorithm_of(cert.public_key())
    except (CryptoError, ValueError) as err:
        raise CAProblem(IssuerReason.CA_SECRET_INVALID, f"Secret {where}: {field}: {err}") from None
    if not same_public_key(key, cert.public_key()):
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: tls.key does not match the public key of {field} {_describe(cert)}",
        )


def check_validity(cert: x509.Certificate, where: str, now: dt.datetime) -> None:
    """CAProblem unless ``cert`` is valid at ``now``."""
    if now >= cert.not_valid_after_utc:
        raise CAProblem(
            IssuerReason.CA_EXPIRED,
            f"Secret {where}: tls.crt {_describe(cert)} expired at "
            f"{rfc3339(cert.not_valid_after_utc)}; put a valid CA in the Secret",
            cert,
        )
    if now < cert.not_valid_before_utc:
        raise CAProblem(
            IssuerReason.CA_NOT_YET_VALID,
            f"Secret {where}: tls.crt {_describe(cert)} is not valid before "
            f"{rfc3339(cert.not_valid_before_utc)}",
            cert,
        )


def load_ca_secret(
    secret: Mapping[str, Any] | None, namespace: str, name: str, now: dt.datetime
) -> CAMaterial:
    """Validate the CA Secret of a ``ca`` source and return its material.

    tls.crt holds the CA certificate first, optionally followed by its intermediates; tls.key
    its private key; the optional ca.crt the chain and/or the root(s). The roots of the trust
    bundle are the self-signed certificates found; without any, the top of the chain is the
    trust anchor.
    """
    where = f"{namespace}/{name}"
    if secret is None:
        raise CAProblem(
            IssuerReason.CA_SECRET_NOT_FOUND,
            f"Secret {where} (spec.ca.secretName) was not found; create it with the CA "
            f"certificate under tls.crt and its private key under tls.key",
        )
    cert_data, key_data = secret_bytes(secret, TLS_CRT), secret_bytes(secret, TLS_KEY)
    missing = [k for k, v in ((TLS_CRT, cert_data), (TLS_KEY, key_data)) if v is None]
    if missing or cert_data is None or key_data is None:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {' and '.join(missing)} missing or empty; a CA Secret needs the "
            f"CA certificate under tls.crt and its private key under tls.key",
        )
    try:
        certs = load_cert_chain(cert_data)
    except CryptoError:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID, f"Secret {where}: tls.crt is not a PEM certificate"
        ) from None
    try:
        key = load_private_key(key_data)
    except CryptoError as err:
        raise CAProblem(IssuerReason.CA_SECRET_INVALID, f"Secret {where}: tls.key: {err}") from None
    extra: list[x509.Certificate] = list(certs[1:])
    ca_data = secret_bytes(secret, CA_CRT)
    explicit_roots = False
    if ca_data:
        try:
            extra.extend(load_cert_chain(ca_data))
            explicit_roots = True
        except CryptoError:
            raise CAProblem(
                IssuerReason.CA_SECRET_INVALID,
                f"Secret {where}: ca.crt is not a PEM certificate bundle",
            ) from None
    cert = certs[0]
    _check_ca(cert, key, where)
    check_validity(cert, where, now)

    # Walk up from the CA through the other certificates to a self-signed root, if any.
    pool = [c for c in still_valid(extra, now) if c != cert]
    chain: list[x509.Certificate] = []
    top = cert
    while not _self_signed(top):
        parent = next((c for c in pool if c not in chain and _issued_by(top, c)), None)
        if parent is None:
            break
        if _self_signed(parent):
            top = parent
            break
        chain.append(parent)
        top = parent
    roots = [c for c in pool if _self_signed(c)]
    if _self_signed(cert):
        roots.insert(0, cert)
    if explicit_roots and not _self_signed(top) and roots:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: no certificate in tls.crt or ca.crt issued "
            f"{_describe(top)}; ca.crt must hold the chain up to the root",
        )
    anchors = still_valid(roots, now) or (top,)
    return CAMaterial(cert=cert, key=key, chain=tuple(chain), roots=anchors)


# ---------------------------------------------------------------------------- ConfigMaps

TRUST_BUNDLE_PURPOSE = "trust-bundle"

Origin = Literal["ours", "legacy", "foreign"]


def crl_purpose(issuer: Issuer) -> str:
    """What a CRL ConfigMap's provenance tag is bound to, besides its UID: its issuer."""
    return f"crl/{issuer.kind}/{issuer.namespace}/{issuer.name}"


def _tagged(meta: dict[str, Any], uid: str | None, tag: str | None) -> dict[str, Any]:
    """``meta`` with the UID precondition and provenance tag of a write to an existing object."""
    if uid:
        meta["uid"] = uid
    if tag:
        meta["annotations"] = {**(meta.get("annotations") or {}), PROVENANCE_ANNOTATION: tag}
    return meta


def configmap_origin(
    cm: Mapping[str, Any],
    *,
    key: bytes,
    purpose: str,
    created_before: dt.datetime | None = None,
    legacy: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Origin:
    """Who made an existing ConfigMap: the operator for ``purpose`` (``ours``), an earlier
    operator version (``legacy``), or anyone else (``foreign``).

    ``ours`` needs the provenance tag of the ConfigMap's own UID (labels and field managers
    prove nothing: whoever can write a ConfigMap can set them). ``legacy``: no tag at all,
    ``legacy(cm)`` holds (the labels an earlier version wrote), and created before
    ``created_before`` (when this version's key was made: nobody can back-date an object).
    """
    meta = cm.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    uid = str(meta.get("uid") or "")
    tag = annotations.get(PROVENANCE_ANNOTATION)
    if tag is not None:
        return "ours" if provenance_valid(key, uid, purpose, tag) else "foreign"
    created = _timestamp(meta.get("creationTimestamp"))
    if (
        legacy is not None
        and created_before is not None
        and created is not None
        and created < created_before
        and legacy(cm)
    ):
        return "legacy"
    return "foreign"


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def legacy_crl(issuer: Issuer) -> Callable[[Mapping[str, Any]], bool]:
    """An earlier version's CRL of ``issuer``: it carried the issuer's labels."""
    return lambda cm: owned_by(cm, issuer)


def legacy_bundle_source(cm: Mapping[str, Any]) -> str | None:
    """The issuer (``Kind/name``) of an earlier version's trust bundle, which had one."""
    labels = (cm.get("metadata") or {}).get("labels") or {}
    kind, name = labels.get(ISSUER_KIND_LABEL), labels.get(ISSUER_LABEL)
    if labels.get(MANAGED_BY_KEY) != MANAGED_BY or not kind or not name:
        return None
    if configmap_text(cm, CA_CRT) is None or configmap_text(cm, CRL_KEY) is not None:
        return None
    return f"{kind}/{name}"


def is_legacy_bundle(cm: Mapping[str, Any]) -> bool:
    return legacy_bundle_source(cm) is not None


@dataclass(frozen=True)
class MergedBundle:
    """A namespace's trust bundle: every root of its sources, and where each one came from."""

    pem: bytes
    sources: dict[str, tuple[str, ...]]  # "Kind/name" -> SHA-256 fingerprints, both sorted

    @property
    def annotation(self) -> str:
        return json.dumps(
            {k: list(v) for k, v in self.sources.items()}, separators=(",", ":"), sort_keys=True
        )


def merge_bundles(
    parts: Mapping[str, Sequence[x509.Certificate]], now: dt.datetime
) -> MergedBundle:
    """One bundle from the bundles of several issuers (``Kind/name`` -> certificates).

    Deterministic, so that writing it is idempotent: the sources in sorted order, each one's
    certificates in its own order (current root first), a certificate present in several
    sources once (at its first place), expired certificates left out. A source whose
    certificates all expired is left out of ``sources`` too.
    """
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    sources: dict[str, tuple[str, ...]] = {}
    for source in sorted(parts):
        fps: set[str] = set()
        for cert in parts[source]:
            if now >= cert.not_valid_after_utc:
                continue
            fp = fingerprint_sha256(cert)
            fps.add(fp)
            if fp not in seen:
                seen.add(fp)
                out.append(cert)
        if fps:
            sources[source] = tuple(sorted(fps))
    return MergedBundle(pem=chain_pem(out) if out else b"", sources=sources)


def bundle_sources(cm: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    """The sources a trust bundle says it holds (:attr:`MergedBundle.sources`); {} if unreadable.

    Only used to keep the certificates of a source whose bundle is not known now (an issuer
    not Ready since the operator started): whoever edits the annotation can only keep
    certificates already in that ConfigMap's own ``ca.crt``.
    """
    raw = (((cm or {}).get("metadata") or {}).get("annotations") or {}).get(SOURCES_ANNOTATION)
    if not isinstance(raw, str) or len(raw) > 256 * 1024:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        str(k): tuple(sorted(str(f) for f in v if isinstance(f, str)))
        for k, v in parsed.items()
        if isinstance(v, list)
    }


def bundle_certificates(cm: Mapping[str, Any] | None) -> dict[str, x509.Certificate]:
    """The certificates of a trust bundle ConfigMap's ``ca.crt``, by fingerprint."""
    text = configmap_text(cm, CA_CRT)
    if text is None:
        return {}
    try:
        certs = load_cert_chain(text.encode("ascii", "replace"))
    except CryptoError:
        return {}
    return {fingerprint_sha256(c): c for c in certs}


def trust_bundle_labels() -> dict[str, str]:
    return {MANAGED_BY_KEY: MANAGED_BY, TRUST_BUNDLE_LABEL: "true"}


def build_trust_bundle(
    namespace: str,
    name: str,
    bundle: MergedBundle,
    *,
    uid: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """A namespace's trust bundle ConfigMap (key ``ca.crt``), shared by the issuers there.

    It has no owner reference (it outlives any one issuer); ``uid`` makes the write fail
    unless the object is still the one the operator created.
    """
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": trust_bundle_labels(),
        "annotations": {SOURCES_ANNOTATION: bundle.annotation},
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _tagged(meta, uid, tag),
        "data": {CA_CRT: bundle.pem.decode("ascii")},
    }


def build_crl_configmap(
    issuer: Issuer,
    namespace: str,
    crl_pem: bytes,
    *,
    uid: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """The CRL ConfigMap (key ``ca.crl``) in the issuer's home namespace."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _tagged(_metadata(issuer, namespace, issuer.crl_configmap), uid, tag),
        "data": {CRL_KEY: crl_pem.decode("ascii")},
    }


def configmap_text(cm: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((cm or {}).get("data") or {}).get(key)
    return value if isinstance(value, str) and value else None


# ----------------------------------------------------------------------------------- CRL


def crl_entries(crl: x509.CertificateRevocationList) -> list[RevokedSerial]:
    """The entries of a CRL as :class:`RevokedSerial` values (reason kept)."""
    out = []
    for revoked in crl:
        reason: x509.ReasonFlags | None = None
        try:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        out.append(RevokedSerial(revoked.serial_number, revoked.revocation_date_utc, reason))
    return out


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def merge_revoked(
    existing: Iterable[RevokedSerial], new: Iterable[RevokedSerial]
) -> tuple[list[RevokedSerial], int]:
    """Union by serial (the earliest revocation wins), sorted; and how many serials are new."""
    entries: dict[int, RevokedSerial] = {}
    for item in existing:
        current = entries.get(item.serial)
        if current is None or item.revoked_at < current.revoked_at:
            entries[item.serial] = item
    added = 0
    for item in new:
        current = entries.get(item.serial)
        if current is None:
            added += 1
        if current is None or item.revoked_at < current.revoked_at:
            entries[item.serial] = item
    return [entries[s] for s in sorted(entries)], added


def prune_revoked(entries: Iterable[RevokedSerial], since: dt.datetime) -> list[RevokedSerial]:
    """Drop entries revoked before ``since``.

    ``since`` is the earliest notBefore of the CAs still trusted: a certificate revoked
    before it was issued by a CA that has expired since, so it cannot be valid any more.
    """
    return [e for e in entries if e.revoked_at >= since]


def trusted_since(certs: Iterable[x509.Certificate]) -> dt.datetime:
    """The earliest notBefore of ``certs`` (the CA and the trust anchors)."""
    return min(c.not_valid_before_utc for c in certs)


def crl_resign_at(crl: x509.CertificateRevocationList, validity: dt.timedelta) -> dt.datetime:
    """When the CRL should be re-signed: a third of its validity before nextUpdate."""
    next_update = crl.next_update_utc
    if next_update is None:
        return crl.last_update_utc
    return next_update - validity * RESIGN_WHEN_LEFT


def crl_resign_reason(
    crl: x509.CertificateRevocationList | None,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    validity: dt.timedelta,
) -> str | None:
    """Why the published CRL must be signed again, or None when it is current."""
    if crl is None:
        return "missing"
    if crl.issuer != ca_cert.subject or not _crl_signed_by(crl, ca_cert):
        return "issuer changed"
    next_update = crl.next_update_utc
    if next_update is None or next_update - crl.last_update_utc != validity:
        return "validity changed"
    if now >= crl_resign_at(crl, validity):
        return "due"
    return None


def _crl_signed_by(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> bool:
    try:
        verify_crl(crl, ca_cert)
    except CryptoError:
        return False
    return True


def crl_summary(entries: Sequence[RevokedSerial]) -> str:
    """Identifiers only: how many serials and the first few, for events and logs."""
    shown = ", ".join(serial_hex(e.serial) for e in entries[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return f"{shown}{more}"
