"""Pure builders for issuers: the objects an issuer owns, as desired dicts.

Its root Secret (a self-signed issuer's root and the previous roots kept for trust), its CRL
ConfigMap, the labels and owner references they carry, and the PEM of its trust bundle.
Nothing here does I/O or decides anything that depends on time (see :mod:`nhi.policies.ca`).
Error messages name the Secret and the rule, never any key material.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi import API_VERSION
from nhi.builders.ca_secret import (
    TLS_CRT,
    TLS_KEY,
    CAProblem,
    check_ca,
    secret_bytes,
    secret_name,
)
from nhi.crypto import (
    Certificate,
    CryptoError,
    PrivateKey,
    RevokedSerial,
    cert_pem,
    chain_pem,
    load_cert_chain,
    load_private_key,
    private_key_pem,
    rfc3339,
    serial_hex,
    still_valid,
)
from nhi.models.issuer import (
    ISSUER_KIND_LABEL,
    ISSUER_LABEL,
    PROVENANCE_ANNOTATION,
    Issuer,
    IssuerReason,
)
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY, NOT_AFTER_ANNOTATION

ROOT_SECRET_PREFIX = "nhi-issuer-"  # noqa: S105 - a name, not a secret
PREVIOUS_CRT = "previous.crt"
CRL_KEY = "ca.crl"


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
    """True when ``obj`` was created for this issuer.

    A namespaced issuer's objects live where its writers may edit objects too, so labels
    prove nothing there: they must carry its controller ownerReference (by UID). A
    ClusterIdentityIssuer's live in the operator's namespace, which only administrators
    write, and carry its labels.
    """
    meta = (obj or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    if not all(labels.get(k) == v for k, v in issuer_labels(issuer).items()):
        return False
    if issuer.cluster_scoped or not issuer.uid:
        return True
    return any(
        ref.get("controller") and ref.get("uid") == issuer.uid
        for ref in meta.get("ownerReferences") or ()
    )


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

    cert: Certificate
    key: PrivateKey
    previous: tuple[Certificate, ...] = ()


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
    name = secret_name(secret)
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
    check_ca(cert, key, name)
    previous: tuple[Certificate, ...] = ()
    prev_data = secret_bytes(secret, PREVIOUS_CRT)
    if prev_data:
        try:
            previous = tuple(load_cert_chain(prev_data))
        except CryptoError:
            previous = ()
    return RootMaterial(cert=cert, key=key, previous=previous)


def rotate(
    old: RootMaterial, new_cert: Certificate, new_key: PrivateKey, now: dt.datetime
) -> RootMaterial:
    """The material after a rotation: the old root joins the previous roots while valid."""
    return RootMaterial(
        cert=new_cert,
        key=new_key,
        previous=still_valid((old.cert, *old.previous), now),
    )


def compose_bundle(
    current: Sequence[Certificate], previous: Sequence[Certificate], now: dt.datetime
) -> bytes:
    """The trust bundle: the current roots, then the previous roots still valid (PEM)."""
    return chain_pem(still_valid((*current, *previous), now))


# ---------------------------------------------------------------------------- ConfigMaps


def crl_purpose(issuer: Issuer) -> str:
    """What a CRL ConfigMap's provenance tag is bound to, besides its UID: its issuer."""
    return f"crl/{issuer.kind}/{issuer.namespace}/{issuer.name}"


def tagged_metadata(meta: dict[str, Any], uid: str | None, tag: str | None) -> dict[str, Any]:
    """``meta`` with the UID precondition and provenance tag of a write to an existing object."""
    if uid:
        meta["uid"] = uid
    if tag:
        meta["annotations"] = {**(meta.get("annotations") or {}), PROVENANCE_ANNOTATION: tag}
    return meta


def legacy_crl(issuer: Issuer) -> Callable[[Mapping[str, Any]], bool]:
    """An earlier version's CRL of ``issuer``: it carried the issuer's labels."""
    return lambda cm: owned_by(cm, issuer)


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
        "metadata": tagged_metadata(_metadata(issuer, namespace, issuer.crl_configmap), uid, tag),
        "data": {CRL_KEY: crl_pem.decode("ascii")},
    }


def configmap_text(cm: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((cm or {}).get("data") or {}).get(key)
    return value if isinstance(value, str) and value else None


def crl_summary(entries: Sequence[RevokedSerial]) -> str:
    """Identifiers only: how many serials and the first few, for events and logs."""
    shown = ", ".join(serial_hex(e.serial) for e in entries[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return f"{shown}{more}"
