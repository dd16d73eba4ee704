"""Pure issuer builders: root Secret, CA Secret validation, rotated material, bundles, CRLs.

The rules of when to rotate and re-sign are tested in tests/unit/test_ca_policy.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from nhi.builders.ca_secret import CAProblem, load_ca_secret
from nhi.builders.issuer import (
    RootMaterial,
    build_crl_configmap,
    build_root_secret,
    compose_bundle,
    issuer_labels,
    label_value,
    owned_by,
    parse_root_secret,
    root_secret_name,
    rotate,
)
from nhi.builders.trust_bundle import build_trust_bundle, bundle_sources, merge_bundles
from nhi.crypto import (
    PrivateKey,
    RevokedSerial,
    build_crl,
    build_self_signed_ca,
    cert_pem,
    chain_pem,
    crl_entries,
    crl_number,
    crl_pem,
    fingerprint_sha256,
    generate_key,
    is_revoked,
    issue_intermediate_ca,
    issue_leaf,
    load_cert_chain,
    private_key_pem,
    still_valid,
)
from nhi.models.issuer import PROVENANCE_ANNOTATION, Issuer
from nhi.policies.ca import merge_revoked

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def key(slot: int = 0) -> PrivateKey:
    return generate_key("ECDSA-P256")


@functools.cache
def root(slot: int = 0, now: dt.datetime = NOW, ttl: dt.timedelta = 30 * DAY) -> x509.Certificate:
    return build_self_signed_ca(f"root {slot}", key(slot), now, ttl)


def fp(cert: x509.Certificate) -> str:
    return fingerprint_sha256(cert)


def make_issuer(kind: str = "ClusterIdentityIssuer", **spec: Any) -> Issuer:
    meta: dict[str, Any] = {"name": "mesh-ca", "uid": "uid-1", "generation": 1}
    if kind == "IdentityIssuer":
        meta["namespace"] = "team-a"
    body_spec: dict[str, Any] = {"trustDomain": "example.org", "selfSigned": {}, **spec}
    return Issuer.from_body({"kind": kind, "metadata": meta, "spec": body_spec})


def tls_secret(
    cert: bytes | None, key_pem: bytes | None, ca: bytes | None = None
) -> dict[str, Any]:
    data = {}
    for k, v in (("tls.crt", cert), ("tls.key", key_pem), ("ca.crt", ca)):
        if v is not None:
            data[k] = base64.b64encode(v).decode()
    return {
        "metadata": {"namespace": "pki", "name": "root"},
        "type": "kubernetes.io/tls",
        "data": data,
    }


# ------------------------------------------------------------------------------ rotation


def test_rotate_keeps_the_old_root_for_trust_until_it_expires() -> None:
    old = RootMaterial(root(0), key(0))
    later = NOW + 21 * DAY
    new_cert = root(1, now=later)
    rotated = rotate(old, new_cert, key(1), later)
    assert rotated.cert == new_cert
    assert rotated.previous == (old.cert,)
    bundle = load_cert_chain(compose_bundle([rotated.cert], rotated.previous, later))
    assert bundle == [new_cert, old.cert]
    # Once the old root has expired, it leaves the bundle.
    after = old.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    assert load_cert_chain(compose_bundle([rotated.cert], rotated.previous, after)) == [new_cert]
    # A second rotation keeps both previous roots while they are valid.
    third = rotate(rotated, root(2, now=later), key(2), later)
    assert third.previous == (new_cert, old.cert)


def test_still_valid_drops_expired_and_duplicates() -> None:
    a, b = root(0), root(1, now=NOW - 40 * DAY)
    assert still_valid([a, b, a], NOW) == (a,)


# ---------------------------------------------------------------------------- root Secret


def test_root_secret_for_a_cluster_issuer() -> None:
    issuer = make_issuer()
    material = RootMaterial(root(0), key(0), (root(1),))
    secret = build_root_secret(issuer, "nhi-system", material)
    assert secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    meta = secret["metadata"]
    assert meta["name"] == "nhi-issuer-mesh-ca" == root_secret_name(issuer)
    assert meta["namespace"] == "nhi-system"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "nhi-operator"
    assert meta["labels"]["nhi.dev/issuer"] == "mesh-ca"
    assert "ownerReferences" not in meta  # cluster issuer: the operator deletes it itself
    assert set(secret["data"]) == {"tls.crt", "tls.key", "previous.crt"}
    parsed = parse_root_secret(secret)
    assert parsed.cert == material.cert
    assert parsed.previous == material.previous
    assert private_key_pem(parsed.key) == private_key_pem(material.key)
    assert owned_by(secret, issuer)


def test_root_secret_of_a_namespaced_issuer_is_owned_by_it() -> None:
    issuer = make_issuer("IdentityIssuer")
    secret = build_root_secret(issuer, "team-a", RootMaterial(root(0), key(0)))
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "IdentityIssuer"
    assert owner["uid"] == "uid-1"
    assert "previous.crt" not in secret["data"]
    assert owned_by(secret, issuer)
    # Its labels alone, which anyone who may edit Secrets there can set, prove nothing.
    decoy = {"metadata": {**secret["metadata"], "ownerReferences": []}}
    assert not owned_by(decoy, issuer)
    other = {**owner, "uid": "uid-2"}
    assert not owned_by({"metadata": {**secret["metadata"], "ownerReferences": [other]}}, issuer)


def test_parse_root_secret_rejects_a_mismatched_key() -> None:
    secret = tls_secret(cert_pem(root(0)), private_key_pem(key(1)))
    with pytest.raises(CAProblem) as err:
        parse_root_secret(secret)
    assert err.value.reason == "CASecretInvalid"


def test_label_values_stay_within_63_characters() -> None:
    assert label_value("short") == "short"
    long = "a" * 200
    assert len(label_value(long)) <= 63
    assert label_value(long) != label_value("a" * 199)


def test_issuers_of_the_same_name_and_different_kinds_do_not_own_each_others_objects() -> None:
    cluster, namespaced = make_issuer(), make_issuer("IdentityIssuer")
    obj = {"metadata": {"labels": issuer_labels(cluster)}}
    assert owned_by(obj, cluster)
    assert not owned_by(obj, namespaced)
    assert not owned_by({"metadata": {}}, cluster)


# ------------------------------------------------------------------------------ CA Secret


def test_a_self_signed_ca_secret_is_its_own_trust_anchor() -> None:
    material = load_ca_secret(
        tls_secret(cert_pem(root(0)), private_key_pem(key(0))), "pki", "root", NOW
    )
    assert material.cert == root(0)
    assert material.chain == ()
    assert material.roots == (root(0),)


def test_an_intermediate_ca_with_its_root_in_ca_crt() -> None:
    inter = issue_intermediate_ca(
        ca_cert=root(0),
        ca_key=key(0),
        public_key=key(1).public_key(),
        common_name="intermediate",
        now=NOW,
        ttl=10 * DAY,
    )
    secret = tls_secret(cert_pem(inter), private_key_pem(key(1)), cert_pem(root(0)))
    material = load_ca_secret(secret, "pki", "root", NOW)
    assert material.cert == inter
    assert material.chain == ()
    assert material.roots == (root(0),)
    # Without ca.crt, the intermediate itself is the anchor.
    bare = load_ca_secret(tls_secret(cert_pem(inter), private_key_pem(key(1))), "pki", "root", NOW)
    assert bare.roots == (inter,)


def test_a_two_level_chain_is_walked_to_the_root() -> None:
    mid = issue_intermediate_ca(
        ca_cert=root(0),
        ca_key=key(0),
        public_key=key(1).public_key(),
        common_name="mid",
        now=NOW,
        ttl=10 * DAY,
        path_length=1,
    )
    low = issue_intermediate_ca(
        ca_cert=mid,
        ca_key=key(1),
        public_key=key(2).public_key(),
        common_name="low",
        now=NOW,
        ttl=5 * DAY,
    )
    secret = tls_secret(chain_pem([low, mid]), private_key_pem(key(2)), cert_pem(root(0)))
    material = load_ca_secret(secret, "pki", "root", NOW)
    assert material.chain == (mid,)
    assert material.roots == (root(0),)


def _leaf() -> x509.Certificate:
    return issue_leaf(
        ca_cert=root(0),
        ca_key=key(0),
        public_key=key(1).public_key(),
        spiffe_id="spiffe://example.org/ns/a/sa/b",
        dns_names=[],
        now=NOW,
        ttl=DAY,
    )


@pytest.mark.parametrize(
    ("secret", "reason", "rule"),
    [
        (None, "CASecretNotFound", "was not found"),
        (tls_secret(None, None), "CASecretInvalid", "tls.crt and tls.key missing"),
        (tls_secret(b"not a cert", b"x"), "CASecretInvalid", "tls.crt is not a PEM certificate"),
        (
            tls_secret(cert_pem(root(0)), b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
            "CASecretInvalid",
            "tls.key: invalid private key PEM",
        ),
        (
            tls_secret(cert_pem(_leaf()), private_key_pem(key(1))),
            "CASecretInvalid",
            "is not a CA certificate (basicConstraints CA:TRUE is required)",
        ),
        (
            tls_secret(cert_pem(root(0)), private_key_pem(key(1))),
            "CASecretInvalid",
            "tls.key does not match",
        ),
        (
            tls_secret(cert_pem(root(0)), private_key_pem(key(0)), b"garbage"),
            "CASecretInvalid",
            "ca.crt is not a PEM certificate bundle",
        ),
        (
            tls_secret(cert_pem(root(0, now=NOW - 40 * DAY)), private_key_pem(key(0))),
            "CAExpired",
            "expired at",
        ),
        (
            tls_secret(cert_pem(root(0, now=NOW + DAY)), private_key_pem(key(0))),
            "CANotYetValid",
            "is not valid before",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "garbage-cert",
        "garbage-key",
        "leaf",
        "key-mismatch",
        "garbage-ca-crt",
        "expired",
        "not-yet-valid",
    ],
)
def test_ca_secret_problems_name_the_secret_and_the_rule(
    secret: dict[str, Any] | None, reason: str, rule: str
) -> None:
    with pytest.raises(CAProblem) as err:
        load_ca_secret(secret, "pki", "root", NOW)
    assert err.value.reason == reason
    assert "pki/root" in err.value.message
    assert rule in err.value.message
    # Never any key material in a message.
    assert "PRIVATE KEY" not in err.value.message
    for k in (0, 1):
        assert base64.b64encode(private_key_pem(key(k))).decode()[40:80] not in err.value.message


def test_expired_ca_problem_carries_the_certificate_for_status() -> None:
    old = root(0, now=NOW - 40 * DAY)
    with pytest.raises(CAProblem) as err:
        load_ca_secret(tls_secret(cert_pem(old), private_key_pem(key(0))), "pki", "root", NOW)
    assert err.value.cert == old


def test_ca_crt_that_does_not_chain_is_rejected() -> None:
    inter = issue_intermediate_ca(
        ca_cert=root(0),
        ca_key=key(0),
        public_key=key(1).public_key(),
        common_name="intermediate",
        now=NOW,
        ttl=10 * DAY,
    )
    secret = tls_secret(cert_pem(inter), private_key_pem(key(1)), cert_pem(root(2)))
    with pytest.raises(CAProblem, match=r"ca\.crt must hold the chain up to the root"):
        load_ca_secret(secret, "pki", "root", NOW)


def test_ca_without_key_cert_sign_usage_is_rejected() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weird")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key(0).public_key())
        .serial_number(7)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .sign(key(0), hashes.SHA256())
    )
    with pytest.raises(CAProblem, match="keyCertSign and cRLSign"):
        load_ca_secret(tls_secret(cert_pem(cert), private_key_pem(key(0))), "pki", "root", NOW)


# ---------------------------------------------------------------------------- ConfigMaps


def test_crl_configmap_is_the_issuers_own() -> None:
    issuer = make_issuer("IdentityIssuer")
    crl = build_crl(
        ca_cert=root(0), ca_key=key(0), revoked=[], now=NOW, next_update=DAY, crl_number=1
    )
    cm = build_crl_configmap(issuer, "team-a", crl_pem(crl))
    assert cm["metadata"]["name"] == "nhi-crl-identityissuer-mesh-ca"
    assert cm["metadata"]["namespace"] == "team-a"
    assert owned_by(cm, issuer)
    assert cm["metadata"]["ownerReferences"][0]["name"] == "mesh-ca"
    assert "uid" not in cm["metadata"]
    assert not is_revoked(cm["data"]["ca.crl"], root(0), 42)
    tagged = build_crl_configmap(issuer, "team-a", crl_pem(crl), uid="u-9", tag="v1.x")
    assert tagged["metadata"]["uid"] == "u-9"  # a precondition of the write
    assert tagged["metadata"]["annotations"][PROVENANCE_ANNOTATION] == "v1.x"


def test_merge_bundles_holds_every_root_once_in_a_stable_order() -> None:
    a, b, shared = root(1), root(2), root(3)
    parts = {
        "IdentityIssuer/team": [b, shared],
        "ClusterIdentityIssuer/mesh": [a, shared],
    }
    merged = merge_bundles(parts, NOW)
    # Sources in sorted order, each one's own order kept, a shared root at its first place.
    assert load_cert_chain(merged.pem) == [a, shared, b]
    assert merged.sources == {
        "ClusterIdentityIssuer/mesh": tuple(sorted([fp(a), fp(shared)])),
        "IdentityIssuer/team": tuple(sorted([fp(b), fp(shared)])),
    }
    # Idempotent: the order parts come in changes nothing, so an unchanged bundle is equal.
    assert merge_bundles(dict(reversed(list(parts.items()))), NOW) == merged
    assert merge_bundles({"ClusterIdentityIssuer/mesh": [a, shared]}, NOW) != merged


def test_merge_bundles_leaves_out_expired_roots_and_empty_sources() -> None:
    old = build_self_signed_ca("old", key(4), NOW - 10 * DAY, 5 * DAY)
    merged = merge_bundles({"ClusterIdentityIssuer/a": [root(1), old], "X/gone": [old]}, NOW)
    assert load_cert_chain(merged.pem) == [root(1)]
    assert list(merged.sources) == ["ClusterIdentityIssuer/a"]
    empty = merge_bundles({"X/gone": [old]}, NOW)
    assert empty.pem == b""
    assert empty.sources == {}


def test_trust_bundle_configmap_names_its_sources_and_no_owner() -> None:
    merged = merge_bundles({"ClusterIdentityIssuer/mesh": [root(1)]}, NOW)
    cm = build_trust_bundle("team-a", "nhi-trust-bundle", merged)
    assert cm["metadata"]["name"] == "nhi-trust-bundle"
    assert cm["data"] == {"ca.crt": cert_pem(root(1)).decode()}
    assert "ownerReferences" not in cm["metadata"]  # shared by issuers: owned by none
    assert cm["metadata"]["labels"]["nhi.dev/trust-bundle"] == "true"
    assert bundle_sources(cm) == merged.sources
    tagged = build_trust_bundle("team-a", "nhi-trust-bundle", merged, uid="u-1", tag="v1.t")
    assert tagged["metadata"]["uid"] == "u-1"
    assert tagged["metadata"]["annotations"][PROVENANCE_ANNOTATION] == "v1.t"
    assert bundle_sources(tagged) == merged.sources


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"a": "b"}', "x" * (256 * 1024 + 1), None])
def test_unreadable_bundle_sources_are_empty(raw: str | None) -> None:
    cm = {"metadata": {"annotations": {"nhi.dev/trust-bundle-sources": raw}}}
    assert bundle_sources(cm) == {}


# ----------------------------------------------------------------------------------- CRL


def _crl(
    entries: list[RevokedSerial],
    number: int = 1,
    now: dt.datetime = NOW,
    validity: dt.timedelta = DAY,
    slot: int = 0,
) -> x509.CertificateRevocationList:
    return build_crl(
        ca_cert=root(slot),
        ca_key=key(slot),
        revoked=entries,
        now=now,
        next_update=validity,
        crl_number=number,
    )


def test_revoking_serials_builds_a_crl_that_verifies_against_the_ca() -> None:
    merged, _ = merge_revoked([], [RevokedSerial(1234, NOW), RevokedSerial(99, NOW)])
    pem = crl_pem(_crl(merged, number=7))
    assert is_revoked(pem, root(0), 1234)
    assert is_revoked(pem, root(0), 99)
    assert not is_revoked(pem, root(0), 100)
    parsed = x509.load_pem_x509_crl(pem)
    assert crl_number(parsed) == 7
    assert sorted(e.serial for e in crl_entries(parsed)) == [99, 1234]
