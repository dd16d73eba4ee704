"""CSRs for a CA the operator does not hold, and the checks of what comes back."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from nhi.crypto import (
    CryptoError,
    PreparedIssuer,
    build_csr,
    build_self_signed_ca,
    check_signed,
    generate_key,
    issue_intermediate_ca,
    split_chain,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPIFFE = "spiffe://example.org/ns/team-a/sa/api"


def ca() -> tuple[x509.Certificate, PreparedIssuer]:
    key = generate_key()
    cert = build_self_signed_ca("Root", key, NOW, dt.timedelta(days=30))
    return cert, PreparedIssuer(cert, key, NOW)


def test_csr_carries_the_spiffe_id_and_dns_names_and_no_subject() -> None:
    key = generate_key("ECDSA-P256")
    csr = x509.load_pem_x509_csr(build_csr(key, spiffe_id=SPIFFE, dns_names=["api.example.org"]))
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert san.get_values_for_type(x509.DNSName) == ["api.example.org"]


def test_csr_needs_a_name() -> None:
    with pytest.raises(CryptoError):
        build_csr(generate_key(), spiffe_id=None, dns_names=[])


def test_check_signed_accepts_what_was_asked_and_refuses_anything_else() -> None:
    cert_ca, prepared = ca()
    key = generate_key()
    leaf = prepared.issue_leaf(
        public_key=key.public_key(),
        spiffe_id=SPIFFE,
        dns_names=["api.example.org"],
        now=NOW,
        ttl=dt.timedelta(hours=1),
    )
    check_signed(leaf, key, cert_ca, spiffe_id=SPIFFE, dns_names=["api.example.org"])
    with pytest.raises(CryptoError, match="not for the key"):
        check_signed(leaf, generate_key(), cert_ca, spiffe_id=SPIFFE, dns_names=[])
    with pytest.raises(CryptoError, match="lacks the SPIFFE ID"):
        check_signed(leaf, key, cert_ca, spiffe_id=f"{SPIFFE}x", dns_names=[])
    with pytest.raises(CryptoError, match=r"lacks the DNS names b\.example\.org"):
        check_signed(leaf, key, cert_ca, spiffe_id=SPIFFE, dns_names=["b.example.org"])
    other, _ = ca()
    with pytest.raises(CryptoError, match=r"not issued by the CA|does not verify"):
        check_signed(leaf, key, other, spiffe_id=SPIFFE, dns_names=[])


def test_split_chain_keeps_intermediates_apart_from_roots() -> None:
    root, prepared = ca()
    inter_key = generate_key()
    inter = issue_intermediate_ca(
        ca_cert=root,
        ca_key=prepared.key,
        public_key=inter_key.public_key(),
        common_name="Intermediate",
        now=NOW,
        ttl=dt.timedelta(days=10),
    )
    assert split_chain([inter, root]) == ((inter,), (root,))
    assert split_chain([root]) == ((), (root,))
    assert split_chain([inter]) == ((), (inter,))  # no root given: the last one is trusted
