"""Unit tests of the TLS certificates and CA checks in ``nhi.crypto`` (the local control plane's
PKI and the CA Secret builder rely on them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhi.crypto import (
    KeyAlgorithm,
    build_self_signed_ca,
    generate_key,
    issue_leaf,
    public_key_pem,
    same_public_key,
)
from nhi.crypto.ca_checks import describe, is_ca, issued_by, may_sign_certs_and_crls, self_signed
from nhi.crypto.serving import covers_hosts, issue_tls_cert

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, object]:
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    return build_self_signed_ca("test-ca", key, NOW, timedelta(days=30)), key


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_client_certificate_names_the_user_and_group(ca) -> None:
    ca_cert, ca_key = ca
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    cert = issue_tls_cert(
        ca_cert, ca_key, key, common_name="nhi-admin", organization="system:masters",
        client=True, now=NOW, ttl=timedelta(days=1),
    )  # fmt: skip
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "nhi-admin"
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "system:masters"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued_by(cert, ca_cert) and not is_ca(cert)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_server_certificate_covers_its_hosts_and_is_clipped_to_the_ca(ca) -> None:
    ca_cert, ca_key = ca
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    hosts = ("localhost", "kubernetes.default.svc", "127.0.0.1")
    cert = issue_tls_cert(
        ca_cert, ca_key, key, common_name="kube-apiserver", hosts=hosts, now=NOW,
        ttl=timedelta(days=365),
    )  # fmt: skip
    assert covers_hosts(cert, hosts)
    assert not covers_hosts(cert, ("example.com",))
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert same_public_key(key, cert.public_key())


def test_ca_checks(ca) -> None:
    ca_cert, ca_key = ca
    assert is_ca(ca_cert) and may_sign_certs_and_crls(ca_cert) and self_signed(ca_cert)
    other_key = generate_key(KeyAlgorithm.ECDSA_P256)
    other = build_self_signed_ca("test-ca", other_key, NOW, timedelta(days=30))
    # Same name, another key: not the issuer.
    assert not issued_by(other, ca_cert)
    leaf = issue_tls_cert(
        ca_cert, ca_key, other_key, common_name="x", client=True, now=NOW, ttl=timedelta(hours=1)
    )
    assert not self_signed(leaf) and not may_sign_certs_and_crls(leaf)
    assert describe(ca_cert).startswith("CN=test-ca (serial ")


def test_leaf_from_the_issuer_is_no_ca(ca) -> None:
    ca_cert, ca_key = ca
    leaf_key = generate_key(KeyAlgorithm.ECDSA_P256)
    leaf = issue_leaf(
        ca_cert=ca_cert,
        ca_key=ca_key,
        public_key=leaf_key.public_key(),
        spiffe_id="spiffe://example.org/ns/a/sa/b",
        dns_names=[],
        now=NOW,
        ttl=timedelta(hours=1),
    )
    assert not is_ca(leaf) and issued_by(leaf, ca_cert)


def test_public_key_pem_is_the_spki_of_the_private_key() -> None:
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    pem = public_key_pem(key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE" not in pem
    assert same_public_key(serialization.load_pem_public_key(pem), key)  # type: ignore[arg-type]
