"""Trust bundles: the ConfigMap of a namespace that holds the roots of its issuers.

One ConfigMap per namespace and name, shared by every issuer used there that publishes under
that name: the merge of their bundles (deterministic, so writing it is idempotent), the
annotation saying which root comes from which issuer, and the recognition of the one-issuer
bundles an earlier version wrote. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.builders.ca_secret import CA_CRT
from nhi.builders.issuer import CRL_KEY, configmap_text, tagged_metadata
from nhi.crypto import Certificate, CryptoError, chain_pem, fingerprint_sha256, load_cert_chain
from nhi.models.issuer import (
    ISSUER_KIND_LABEL,
    ISSUER_LABEL,
    SOURCES_ANNOTATION,
    TRUST_BUNDLE_LABEL,
)
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY

TRUST_BUNDLE_PURPOSE = "trust-bundle"
"""What a trust bundle's provenance tag is bound to, besides its UID."""


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


def merge_bundles(parts: Mapping[str, Sequence[Certificate]], now: dt.datetime) -> MergedBundle:
    """One bundle from the bundles of several issuers (``Kind/name`` -> certificates).

    Deterministic, so that writing it is idempotent: the sources in sorted order, each one's
    certificates in its own order (current root first), a certificate present in several
    sources once (at its first place), expired certificates left out. A source whose
    certificates all expired is left out of ``sources`` too.
    """
    seen: set[str] = set()
    out: list[Certificate] = []
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


def bundle_certificates(cm: Mapping[str, Any] | None) -> dict[str, Certificate]:
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
        "metadata": tagged_metadata(meta, uid, tag),
        "data": {CA_CRT: bundle.pem.decode("ascii")},
    }
