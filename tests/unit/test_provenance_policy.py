"""Who made an existing ConfigMap (nhi.policies.provenance): a tag of its own UID, or age."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import pytest
from cryptography import x509

from nhi.builders.trust_bundle import is_legacy_bundle, legacy_bundle_source
from nhi.crypto import PrivateKey, build_self_signed_ca, cert_pem, generate_key, provenance_tag
from nhi.models.issuer import PROVENANCE_ANNOTATION
from nhi.policies.provenance import configmap_origin

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def key(slot: int = 0) -> PrivateKey:
    return generate_key("ECDSA-P256")


@functools.cache
def root(slot: int = 0, now: dt.datetime = NOW, ttl: dt.timedelta = 30 * DAY) -> x509.Certificate:
    return build_self_signed_ca(f"root {slot}", key(slot), now, ttl)


KEY = b"k" * 32
EARLIER = "2030-01-14T12:00:00Z"


def configmap(uid: str = "u-1", created: str = EARLIER, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "cm", "uid": uid, "creationTimestamp": created, **meta},
        "data": {"ca.crt": cert_pem(root(1)).decode()},
    }


def test_configmap_origin_needs_the_tag_of_its_own_uid() -> None:
    tag = provenance_tag(KEY, "u-1", "trust-bundle")
    ours = configmap(annotations={PROVENANCE_ANNOTATION: tag})
    assert configmap_origin(ours, key=KEY, purpose="trust-bundle") == "ours"
    # The same tag copied onto another object (another UID), or for another purpose, or
    # made with another key, proves nothing.
    copied = configmap(uid="u-2", annotations={PROVENANCE_ANNOTATION: tag})
    assert configmap_origin(copied, key=KEY, purpose="trust-bundle") == "foreign"
    assert configmap_origin(ours, key=KEY, purpose="crl/IdentityIssuer/a/b") == "foreign"
    assert configmap_origin(ours, key=b"o" * 32, purpose="trust-bundle") == "foreign"
    # Labels alone prove nothing.
    labelled = configmap(labels={"app.kubernetes.io/managed-by": "nhi-operator"})
    assert configmap_origin(labelled, key=KEY, purpose="trust-bundle") == "foreign"


def test_configmap_origin_adopts_an_earlier_versions_object_only_if_older_than_the_key() -> None:
    labels = {
        "app.kubernetes.io/managed-by": "nhi-operator",
        "nhi.dev/issuer": "mesh",
        "nhi.dev/issuer-kind": "ClusterIdentityIssuer",
    }
    since = NOW

    def origin(cm: dict[str, Any]) -> str:
        return configmap_origin(
            cm, key=KEY, purpose="trust-bundle", created_before=since, legacy=is_legacy_bundle
        )

    assert legacy_bundle_source(configmap(labels=labels)) == "ClusterIdentityIssuer/mesh"
    assert origin(configmap(labels=labels)) == "legacy"
    assert origin(configmap(labels=labels, created="2030-01-15T12:00:00Z")) == "foreign"
    assert origin(configmap(labels=labels, created="nonsense")) == "foreign"
    assert origin(configmap()) == "foreign"  # no labels of an earlier version
    # A wrong tag is never legacy.
    assert origin(configmap(labels=labels, annotations={PROVENANCE_ANNOTATION: "v1.x"})) == (
        "foreign"
    )
