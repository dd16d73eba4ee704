"""Unit tests of the pure cryptography layer ``nhi.crypto``."""

from __future__ import annotations

import functools
import hashlib
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from nhi.crypto import (
    CLOCK_SKEW,
    Charset,
    CryptoError,
    KeyAlgorithm,
    PreparedIssuer,
    PrivateKey,
    RevokedSerial,
    build_crl,
    build_self_signed_ca,
    cert_pem,
    cert_summary,
    chain_pem,
    crl_pem,
    fingerprint_sha256,
    generate_key,
    generate_secret,
    is_revoked,
    issue_intermediate_ca,
    issue_leaf,
    key_algorithm_of,
    load_cert_chain,
    load_private_key,
    new_provenance_key,
    parse_key_algorithm,
    parse_serial_hex,
    private_key_pem,
    provenance_tag,
    provenance_valid,
    public_key_fingerprint,
    secret_fingerprint,
    serial_hex,
    signing_hash,
    spiffe_id,
    spiffe_id_of,
    token_credential_id,
    validate_spiffe_id,
    verify_chain,
    verify_crl,
)

pytestmark = pytest.mark.unit

NOW = datetime(2030, 1, 15, 12, 0, 0, tzinfo=UTC)
CA_TTL = timedelta(days=365)
LEAF_TTL = timedelta(hours=24)
SPIFFE = "spiffe://cluster.local/ns/payments/sa/api"
DNS = ["api.payments.svc", "api.payments.svc.cluster.local"]

ALL_ALGS = list(KeyAlgorithm)
NON_ED25519 = [a for a in KeyAlgorithm if a is not KeyAlgorithm.ED25519]

EXPECTED_TYPES: dict[KeyAlgorithm, type] = {
    KeyAlgorithm.ECDSA_P256: ec.EllipticCurvePrivateKey,
    KeyAlgorithm.ECDSA_P384: ec.EllipticCurvePrivateKey,
    KeyAlgorithm.ED25519: ed25519.Ed25519PrivateKey,
    KeyAlgorithm.RSA_2048: rsa.RSAPrivateKey,
    KeyAlgorithm.RSA_3072: rsa.RSAPrivateKey,
    KeyAlgorithm.RSA_4096: rsa.RSAPrivateKey,
}


# ---------------------------------------------------------------------------------- helpers
# Keys and certificates are cached for the whole module: RSA-4096 generation is slow.


@functools.cache
def key(alg: KeyAlgorithm, slot: int = 0) -> PrivateKey:
    """A cached key; ``slot`` gives distinct keys of the same algorithm."""
    return generate_key(alg)


@functools.cache
def ca(alg: KeyAlgorithm, cn: str = "nhi test root") -> x509.Certificate:
    return build_self_signed_ca(cn, key(alg), NOW, CA_TTL)


@functools.cache
def leaf(alg: KeyAlgorithm) -> x509.Certificate:
    return issue_leaf(
        ca_cert=ca(alg),
        ca_key=key(alg),
        public_key=key(alg, 1).public_key(),
        spiffe_id=SPIFFE,
        dns_names=DNS,
        now=NOW,
        ttl=LEAF_TTL,
    )


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, cls: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(cls)


def issue(alg: KeyAlgorithm = KeyAlgorithm.ECDSA_P256, /, **overrides: object) -> x509.Certificate:
    kwargs: dict[str, object] = {
        "ca_cert": ca(alg),
        "ca_key": key(alg),
        "public_key": key(alg, 1).public_key(),
        "spiffe_id": SPIFFE,
        "dns_names": DNS,
        "now": NOW,
        "ttl": LEAF_TTL,
    }
    kwargs.update(overrides)
    return issue_leaf(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_generate_key_type_and_pem_roundtrip(alg: KeyAlgorithm) -> None:
    k = key(alg)
    assert isinstance(k, EXPECTED_TYPES[alg])
    assert key_algorithm_of(k) is alg
    assert key_algorithm_of(k.public_key()) is alg
    pem = private_key_pem(k)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(pem)
    assert key_algorithm_of(loaded) is alg
    assert public_key_fingerprint(loaded) == public_key_fingerprint(k)
    assert load_private_key(pem.decode()).public_key() == k.public_key()


def test_key_algorithm_enum_and_default() -> None:
    assert [a.value for a in KeyAlgorithm] == [
        "ECDSA-P256",
        "ECDSA-P384",
        "Ed25519",
        "RSA-2048",
        "RSA-3072",
        "RSA-4096",
    ]
    assert isinstance(KeyAlgorithm.ED25519, str)
    assert isinstance(generate_key(), ec.EllipticCurvePrivateKey)
    assert key_algorithm_of(generate_key("ECDSA-P384")) is KeyAlgorithm.ECDSA_P384
    assert parse_key_algorithm("RSA-3072") is KeyAlgorithm.RSA_3072
    with pytest.raises(CryptoError, match="unsupported key algorithm 'DSA-1024'"):
        generate_key("DSA-1024")


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        (KeyAlgorithm.ECDSA_P256, hashes.SHA256),
        (KeyAlgorithm.ECDSA_P384, hashes.SHA384),
        (KeyAlgorithm.ED25519, None),
        (KeyAlgorithm.RSA_2048, hashes.SHA256),
        (KeyAlgorithm.RSA_3072, hashes.SHA256),
        (KeyAlgorithm.RSA_4096, hashes.SHA256),
    ],
    ids=str,
)
def test_signing_hash(alg: KeyAlgorithm, expected: type | None) -> None:
    h = signing_hash(key(alg))
    if expected is None:
        assert h is None
    else:
        assert isinstance(h, expected)


def test_unsupported_keys_rejected() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(CryptoError, match="unsupported elliptic curve secp521r1"):
        key_algorithm_of(p521)
    ed448_pem = ed448.Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CryptoError, match="unsupported private key type"):
        load_private_key(ed448_pem)
    p521_pem = p521.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CryptoError, match="unsupported elliptic curve"):
        load_private_key(p521_pem)


def _assert_no_leak(exc: BaseException, secret_parts: list[str]) -> None:
    text = str(exc) + repr(exc) + " ".join(str(a) for a in exc.args)
    for part in secret_parts:
        if len(part) >= 8:
            assert part not in text
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hunter2-super-secret-token-value",
        b"-----BEGIN PRIVATE KEY-----\n"
        b"c2VjcmV0LXRva2VuLXZhbHVlLTEyMzQ1Njc4OTA=\n"
        b"-----END PRIVATE KEY-----\n",
        "\u00e9\u00e8 not a key but a str with secret ZmFrZS1zZWNyZXQtdmFsdWU=",
    ],
    ids=["empty", "raw-token", "pem-garbage", "str"],
)
def test_load_private_key_garbage_does_not_leak_input(garbage: bytes | str) -> None:
    with pytest.raises(CryptoError) as info:
        load_private_key(garbage)
    text = garbage.decode() if isinstance(garbage, bytes) else garbage
    _assert_no_leak(info.value, [text, *text.split()])
    assert str(info.value) == "invalid private key PEM"


def test_load_private_key_corrupted_real_key_does_not_leak() -> None:
    pem = private_key_pem(key(KeyAlgorithm.RSA_2048)).decode()
    lines = pem.splitlines()
    body = lines[1:-1]
    corrupted = "\n".join([lines[0], *body[:-3], body[-1][::-1], lines[-1]]) + "\n"
    with pytest.raises(CryptoError) as info:
        load_private_key(corrupted.encode())
    _assert_no_leak(info.value, body)


def test_load_private_key_encrypted_rejected_without_leak() -> None:
    pem = key(KeyAlgorithm.ECDSA_P256).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse battery staple"),
    )
    with pytest.raises(CryptoError, match="encrypted") as info:
        load_private_key(pem)
    _assert_no_leak(info.value, pem.decode().splitlines()[1:-1])


def test_private_key_repr_has_no_key_material() -> None:
    k = key(KeyAlgorithm.ED25519)
    raw = k.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.hex() not in repr(k)


# ------------------------------------------------------------------------------------ SPIFFE


def test_spiffe_id_ok() -> None:
    assert spiffe_id("cluster.local", "payments", "api") == SPIFFE
    assert spiffe_id("my_td-1.example", "ns-1", "sa.x_y") == (
        "spiffe://my_td-1.example/ns/ns-1/sa/sa.x_y"
    )


@pytest.mark.parametrize(
    ("td", "ns", "sa", "rule"),
    [
        ("Cluster.local", "a", "b", "lowercase letters, digits, dots, dashes and underscores"),
        ("td/evil", "a", "b", "lowercase letters"),
        ("td:8080", "a", "b", "lowercase letters"),
        ("", "a", "b", "trust domain must be a non-empty string"),
        ("x" * 256, "a", "b", "at most 255 characters"),
        ("td", "", "b", "namespace must be a non-empty"),
        ("td", "..", "b", r"must not be '\.' or '\.\.'"),
        ("td", "a/b", "b", "SPIFFE path segment rule"),
        ("td", "a", "b?c", "SPIFFE path segment rule"),
    ],
)
def test_spiffe_id_validation(td: str, ns: str, sa: str, rule: str) -> None:
    with pytest.raises(CryptoError, match=rule):
        spiffe_id(td, ns, sa)


@pytest.mark.parametrize(
    "value",
    [
        SPIFFE,
        "spiffe://td",
        "spiffe://td/",
        "spiffe://" + "t" * 255 + "/x",
        "spiffe://td/.../.a/a.",
        "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
    ],
)
def test_validate_spiffe_id_accepts(value: str) -> None:
    assert validate_spiffe_id(value) == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("spiffe://" + "t" * 256 + "/x", "at most 255 characters"),
        ("spiffe://td/" + "a" * (2049 - len("spiffe://td/")), "at most 2048 bytes"),
        ("spiffe://td/a/./b", r"must not be '\.' or '\.\.'"),
        ("spiffe://td/a/..", r"must not be '\.' or '\.\.'"),
        ("spiffe://td//a", "non-empty SPIFFE path segment"),
        ("spiffe://TD/a", "lowercase letters"),
        ("spiffe://td/a\n", "SPIFFE path segment rule"),
        ("spiffe://td/caf\u00e9", "SPIFFE path segment rule"),
        ("spiffe://td/a#b", "query or fragment"),
        ("SPIFFE://td/a", "must start with 'spiffe://'"),
        ("", "non-empty string"),
    ],
)
def test_validate_spiffe_id_rejects(value: str, rule: str) -> None:
    with pytest.raises(CryptoError, match=rule):
        validate_spiffe_id(value)


# ---------------------------------------------------------------------------------------- CA


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_self_signed_ca(alg: KeyAlgorithm) -> None:
    cert = ca(alg)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + CA_TTL
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "nhi test root"
    assert 0 < cert.serial_number < 2**159
    cert.verify_directly_issued_by(cert)
    verify_chain(cert, [], cert, NOW)


def test_ca_explicit_serial_and_validation() -> None:
    k = key(KeyAlgorithm.ECDSA_P256)
    assert build_self_signed_ca("x", k, NOW, CA_TTL, serial=42).serial_number == 42
    with pytest.raises(CryptoError, match="serial must be a positive"):
        build_self_signed_ca("x", k, NOW, CA_TTL, serial=0)
    with pytest.raises(CryptoError, match="timezone-aware"):
        build_self_signed_ca("x", k, NOW.replace(tzinfo=None), CA_TTL)
    with pytest.raises(CryptoError, match="ttl must be positive"):
        build_self_signed_ca("x", k, NOW, timedelta(0))
    with pytest.raises(CryptoError, match="common_name"):
        build_self_signed_ca("", k, NOW, CA_TTL)
    # A non-UTC aware datetime is converted, not rejected.
    cet = NOW.astimezone(timezone(timedelta(hours=1)))
    assert build_self_signed_ca("x", k, cet, CA_TTL).not_valid_after_utc == NOW + CA_TTL


# -------------------------------------------------------------------------------------- leaf


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_leaf_issue_and_chain(alg: KeyAlgorithm) -> None:
    cert = leaf(alg)
    verify_chain(cert, [], ca(alg), NOW)
    verify_chain(cert, [], ca(alg), NOW + LEAF_TTL - timedelta(seconds=1))

    # Key type of the certified key matches the requested algorithm.
    assert key_algorithm_of(cert.public_key()) is alg
    assert public_key_fingerprint(cert) == public_key_fingerprint(key(alg, 1))

    # SANs: SPIFFE id first, then DNS names; critical because the subject is empty.
    assert cert.subject == x509.Name([])
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    names = list(san.value)
    assert names[0] == x509.UniformResourceIdentifier(SPIFFE)
    assert names[1:] == [x509.DNSName(n) for n in DNS]
    assert spiffe_id_of(cert) == SPIFFE

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert ku.value.key_encipherment is alg.value.startswith("RSA")
    assert not ku.value.key_cert_sign
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca(alg), x509.SubjectKeyIdentifier).value.digest
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key(alg, 1).public_key())

    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + LEAF_TTL
    assert 0 < cert.serial_number < 2**159
    expected_hash = signing_hash(key(alg))
    if expected_hash is None:
        assert cert.signature_hash_algorithm is None
    else:
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == expected_hash.name


@pytest.mark.parametrize("alg", NON_ED25519, ids=str)
def test_leaf_accepted_by_cryptography_webpki_verifier(alg: KeyAlgorithm) -> None:
    """Cross-check our profile with cryptography's own (Web PKI) client verifier."""
    verifier = PolicyBuilder().store(Store([ca(alg)])).time(NOW).build_client_verifier()
    verified = verifier.verify(leaf(alg), [])
    assert x509.UniformResourceIdentifier(SPIFFE) in verified.subjects  # type: ignore[operator]


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_leaf_mixed_algorithms(alg: KeyAlgorithm) -> None:
    """An ECDSA CA issues leaves of every algorithm and vice versa."""
    p256 = KeyAlgorithm.ECDSA_P256
    cert = issue(p256, public_key=key(alg, 1).public_key())
    assert key_algorithm_of(cert.public_key()) is alg
    verify_chain(cert, [], ca(p256), NOW)
    cert = issue(alg, public_key=key(p256, 1).public_key())
    verify_chain(cert, [], ca(alg), NOW)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_leaf_not_after_capped_at_ca(alg: KeyAlgorithm) -> None:
    late = NOW + CA_TTL - timedelta(hours=1)
    cert = issue(alg, now=late, ttl=timedelta(days=30))
    assert cert.not_valid_after_utc == ca(alg).not_valid_after_utc
    verify_chain(cert, [], ca(alg), late)


def test_leaf_not_before_not_earlier_than_ca() -> None:
    cert = issue(now=NOW - timedelta(seconds=30))
    assert cert.not_valid_before_utc == ca(KeyAlgorithm.ECDSA_P256).not_valid_before_utc


def test_leaf_with_subject_cn_and_dns_only() -> None:
    cert = issue(spiffe_id=None, subject_cn="api.payments.svc")
    san = ext(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert spiffe_id_of(cert) is None
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.payments.svc"
    cert = issue(spiffe_id=SPIFFE, dns_names=[])
    assert list(ext(cert, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(SPIFFE)
    ]
    cert = issue(spiffe_id=None, dns_names=[], subject_cn="only-cn")
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    cert = issue(dns_names=["a.example", "a.example", "*.wild.example"])
    assert list(ext(cert, x509.SubjectAlternativeName).value)[1:] == [
        x509.DNSName("a.example"),
        x509.DNSName("*.wild.example"),
    ]


BAD_LEAF_INPUTS = [
    ({"spiffe_id": None, "dns_names": []}, "needs a SPIFFE ID, a DNS name or a subject_cn"),
    ({"spiffe_id": "https://example.com/x"}, "must start with 'spiffe://'"),
    ({"spiffe_id": "spiffe://UPPER/ns/a"}, "lowercase letters"),
    ({"spiffe_id": "spiffe://td/ns/a?x=1"}, "query or fragment"),
    ({"dns_names": ["bad name"]}, "not a valid DNS name"),
    ({"dns_names": ["-bad.example"]}, "not a valid DNS name"),
    ({"dns_names": "single.example"}, "not a single string"),
    ({"ttl": timedelta(seconds=-1)}, "ttl must be positive"),
    ({"now": NOW.replace(tzinfo=None)}, "timezone-aware"),
    ({"now": NOW + CA_TTL + timedelta(seconds=1)}, "expired"),
    ({"now": NOW - timedelta(days=1)}, "not valid before"),
    ({"subject_cn": "x" * 65}, "subject_cn must be at most 64"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_LEAF_INPUTS)
def test_leaf_rejects_bad_input(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        issue(**overrides)


def test_leaf_rejects_mismatched_ca_key_and_non_ca_issuer() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    with pytest.raises(CryptoError, match="does not match") as info:
        issue(ca_key=key(p256, 1))
    _assert_no_leak(info.value, [private_key_pem(key(p256, 1)).decode()])
    with pytest.raises(CryptoError, match="is not a CA certificate"):
        issue(ca_cert=leaf(p256), ca_key=key(p256, 1))


def test_leaf_rejects_unsupported_public_key() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(CryptoError, match="unsupported elliptic curve"):
        issue(public_key=p521)


# --------------------------------------------------------------------------- prepared issuer


@functools.cache
def prepared(alg: KeyAlgorithm) -> PreparedIssuer:
    return PreparedIssuer(ca(alg), key(alg), NOW)


def issue_prepared(
    alg: KeyAlgorithm = KeyAlgorithm.ECDSA_P256, /, **overrides: object
) -> x509.Certificate:
    kwargs: dict[str, object] = {
        "public_key": key(alg, 1).public_key(),
        "spiffe_id": SPIFFE,
        "dns_names": DNS,
        "now": NOW,
        "ttl": LEAF_TTL,
    }
    kwargs.update(overrides)
    return prepared(alg).issue_leaf(**kwargs)  # type: ignore[arg-type]


def _profile(cert: x509.Certificate) -> tuple[object, ...]:
    """Everything of a leaf but its serial and signature."""
    return (
        cert.subject,
        cert.issuer,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        cert.public_key(),
        [(e.oid, e.critical, e.value) for e in cert.extensions],
        cert.signature_algorithm_oid,
    )


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_prepared_issuer_leaf_matches_issue_leaf(alg: KeyAlgorithm) -> None:
    cert = issue_prepared(alg)
    verify_chain(cert, [], ca(alg), NOW)
    assert _profile(cert) == _profile(leaf(alg))
    assert cert.serial_number != leaf(alg).serial_number
    assert prepared(alg).fingerprint == fingerprint_sha256(ca(alg))
    # The other leaf shapes too: subject CN without SPIFFE ID, and an RSA key in the leaf.
    for overrides in (
        {"spiffe_id": None, "subject_cn": "api.payments.svc"},
        {"public_key": key(KeyAlgorithm.RSA_2048, 1).public_key(), "dns_names": []},
    ):
        cert = issue_prepared(alg, **overrides)
        verify_chain(cert, [], ca(alg), NOW)
        assert _profile(cert) == _profile(issue(alg, **overrides))


def test_prepared_issuer_rejects_wrong_key_without_leak() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    with pytest.raises(CryptoError, match="does not match") as info:
        PreparedIssuer(ca(p256), key(p256, 1), NOW)
    _assert_no_leak(info.value, [private_key_pem(key(p256, 1)).decode()])
    with pytest.raises(CryptoError, match="does not match"):
        PreparedIssuer(ca(p256), key(KeyAlgorithm.ED25519), NOW)


def test_prepared_issuer_rejects_non_ca_and_unsupported_key() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    with pytest.raises(CryptoError, match="is not a CA certificate"):
        PreparedIssuer(leaf(p256), key(p256, 1), NOW)
    ed448_key = ed448.Ed448PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed448 root")])
    ed448_ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ed448_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - CLOCK_SKEW)
        .not_valid_after(NOW + CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ed448_key, None)
    )
    with pytest.raises(CryptoError, match="unsupported private key type"):
        PreparedIssuer(ed448_ca, ed448_key, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (NOW + CA_TTL, "expired at"),
        (NOW - timedelta(days=1), "not valid before"),
        (NOW.replace(tzinfo=None), "timezone-aware"),
    ],
)
def test_prepared_issuer_rejects_ca_outside_validity(now: datetime, message: str) -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    with pytest.raises(CryptoError, match=message):
        PreparedIssuer(ca(p256), key(p256), now)


def test_prepared_issuer_checks_ca_validity_at_each_issuance() -> None:
    """Prepared while the CA was valid; every issuance checks the CA at its own time."""
    p256 = KeyAlgorithm.ECDSA_P256
    late = NOW + CA_TTL - timedelta(hours=1)
    cert = issue_prepared(now=late, ttl=timedelta(days=30))
    assert cert.not_valid_after_utc == ca(p256).not_valid_after_utc
    with pytest.raises(CryptoError, match="expired at"):
        issue_prepared(now=NOW + CA_TTL)
    with pytest.raises(CryptoError, match="not valid before"):
        issue_prepared(now=NOW - timedelta(days=1))


@pytest.mark.parametrize(("overrides", "message"), BAD_LEAF_INPUTS)
def test_prepared_issuer_rejects_bad_input(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        issue_prepared(**overrides)


def test_prepared_issuer_rejects_unsupported_public_key_and_keeps_key_out_of_repr() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(CryptoError, match="unsupported elliptic curve"):
        issue_prepared(public_key=p521)
    with pytest.raises(CryptoError, match="unsupported public key type"):
        issue_prepared(public_key=ed448.Ed448PrivateKey.generate().public_key())
    text = repr(prepared(KeyAlgorithm.ED25519))
    raw = key(KeyAlgorithm.ED25519).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.hex() not in text
    assert "PrivateKey" not in text


# ------------------------------------------------------------------------------ verify_chain


@functools.cache
def intermediate(path_length: int | None = 0) -> x509.Certificate:
    alg = KeyAlgorithm.ECDSA_P384
    return issue_intermediate_ca(
        ca_cert=ca(alg),
        ca_key=key(alg),
        public_key=key(KeyAlgorithm.ED25519, 2).public_key(),
        common_name=f"nhi intermediate {path_length}",
        now=NOW,
        ttl=timedelta(days=30),
        path_length=path_length,
    )


def test_verify_chain_with_intermediate() -> None:
    root = ca(KeyAlgorithm.ECDSA_P384)
    inter = intermediate()
    cert = issue(ca_cert=inter, ca_key=key(KeyAlgorithm.ED25519, 2))
    verify_chain(cert, [inter], root, NOW)
    with pytest.raises(CryptoError, match="was not issued by"):
        verify_chain(cert, [], root, NOW)
    with pytest.raises(CryptoError, match="does not verify"):
        verify_chain(cert, [inter], ca(KeyAlgorithm.ECDSA_P256), NOW)


def test_verify_chain_path_length_exceeded() -> None:
    root = ca(KeyAlgorithm.ECDSA_P384)
    inter0 = intermediate(0)
    sub = issue_intermediate_ca(
        ca_cert=inter0,
        ca_key=key(KeyAlgorithm.ED25519, 2),
        public_key=key(KeyAlgorithm.ECDSA_P256, 3).public_key(),
        common_name="too deep",
        now=NOW,
        ttl=timedelta(days=1),
    )
    cert = issue(ca_cert=sub, ca_key=key(KeyAlgorithm.ECDSA_P256, 3))
    with pytest.raises(CryptoError, match="path length constraint 0 exceeded"):
        verify_chain(cert, [sub, inter0], root, NOW)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_verify_chain_rejects_wrong_root_and_time(alg: KeyAlgorithm) -> None:
    cert = leaf(alg)
    # Same subject name, different key: only the signature can tell them apart.
    rogue = build_self_signed_ca("nhi test root", key(alg, 1), NOW, CA_TTL)
    with pytest.raises(CryptoError, match="does not verify"):
        verify_chain(cert, [], rogue, NOW)
    with pytest.raises(CryptoError, match="expired"):
        verify_chain(cert, [], ca(alg), NOW + LEAF_TTL + timedelta(seconds=1))
    with pytest.raises(CryptoError, match="not valid before"):
        verify_chain(cert, [], ca(alg), NOW - timedelta(minutes=2))


def test_verify_chain_rejects_non_ca_issuer() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    issuer = leaf(p256)  # CA:FALSE
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(issuer.subject)
        .public_key(key(p256, 2).public_key())
        .serial_number(7)
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .sign(key(p256, 1), hashes.SHA256())
    )
    with pytest.raises(CryptoError, match="is not a CA certificate"):
        verify_chain(forged, [issuer], ca(p256), NOW)


# --------------------------------------------------------------------------------------- CRL


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_crl(alg: KeyAlgorithm) -> None:
    root = ca(alg)
    revoked_cert = leaf(alg)
    other = issue(alg)
    revoked = [
        RevokedSerial(revoked_cert.serial_number, NOW - timedelta(hours=1), None),
        RevokedSerial(12345, NOW - timedelta(hours=2), x509.ReasonFlags.key_compromise),
    ]
    crl = build_crl(
        ca_cert=root,
        ca_key=key(alg),
        revoked=revoked,
        now=NOW,
        next_update=timedelta(hours=6),
        crl_number=7,
    )
    assert crl.issuer == root.subject
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(hours=6)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(root, x509.SubjectKeyIdentifier).value.digest
    assert {r.serial_number for r in crl} == {revoked_cert.serial_number, 12345}
    entry = crl.get_revoked_certificate_by_serial_number(12345)
    assert entry is not None
    assert entry.revocation_date_utc == NOW - timedelta(hours=2)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    verify_crl(crl, root)

    pem = crl_pem(crl)
    assert pem.startswith(b"-----BEGIN X509 CRL-----")
    assert is_revoked(pem, root, revoked_cert.serial_number)
    assert is_revoked(pem, root, 12345)
    assert not is_revoked(pem, root, other.serial_number)

    # A CRL signed by another CA (same name, other key) is rejected, not trusted.
    rogue = build_self_signed_ca("nhi test root", key(alg, 1), NOW, CA_TTL)
    rogue_crl = build_crl(
        ca_cert=rogue,
        ca_key=key(alg, 1),
        revoked=[RevokedSerial(other.serial_number, NOW, None)],
        now=NOW,
        next_update=timedelta(hours=6),
        crl_number=1,
    )
    with pytest.raises(CryptoError, match="signature does not verify"):
        is_revoked(crl_pem(rogue_crl), root, other.serial_number)


def test_crl_other_ca_name_and_garbage_rejected() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    other_ca = ca(KeyAlgorithm.ECDSA_P384)
    crl = build_crl(
        ca_cert=other_ca,
        ca_key=key(KeyAlgorithm.ECDSA_P384),
        revoked=[],
        now=NOW,
        next_update=timedelta(hours=1),
        crl_number=0,
    )
    assert not is_revoked(crl_pem(crl), other_ca, 1)
    # Same subject name ("nhi test root") but different key type: still rejected.
    with pytest.raises(CryptoError, match="signature does not verify"):
        is_revoked(crl_pem(crl), ca(p256), 1)
    renamed = ca(p256, "another root")
    with pytest.raises(CryptoError, match="is not the CA"):
        is_revoked(crl_pem(crl), renamed, 1)
    with pytest.raises(CryptoError, match="invalid CRL PEM"):
        is_revoked(b"not a crl", ca(p256), 1)


def test_crl_dedupes_and_validates() -> None:
    p256 = KeyAlgorithm.ECDSA_P256
    make = functools.partial(build_crl, ca_cert=ca(p256), ca_key=key(p256), now=NOW)
    crl = make(
        revoked=[
            RevokedSerial(5, NOW - timedelta(minutes=5), None),
            RevokedSerial(5, NOW - timedelta(minutes=10), None),
            RevokedSerial(3, NOW, x509.ReasonFlags.superseded),
        ],
        next_update=timedelta(hours=1),
        crl_number=2,
    )
    assert [r.serial_number for r in crl] == [3, 5]
    entry = crl.get_revoked_certificate_by_serial_number(5)
    assert entry is not None and entry.revocation_date_utc == NOW - timedelta(minutes=10)
    with pytest.raises(CryptoError, match="crl_number"):
        make(revoked=[], next_update=timedelta(hours=1), crl_number=-1)
    with pytest.raises(CryptoError, match="next_update must be positive"):
        make(revoked=[], next_update=timedelta(0), crl_number=1)
    with pytest.raises(CryptoError, match="revoked_at must be timezone-aware"):
        make(
            revoked=[RevokedSerial(1, NOW.replace(tzinfo=None), None)],
            next_update=timedelta(hours=1),
            crl_number=1,
        )
    with pytest.raises(CryptoError, match="does not match"):
        build_crl(
            ca_cert=ca(p256),
            ca_key=key(p256, 1),
            revoked=[],
            now=NOW,
            next_update=timedelta(hours=1),
            crl_number=1,
        )


# ------------------------------------------------------------------------------ identifiers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "00"),
        (1, "01"),
        (255, "ff"),
        (256, "01:00"),
        (0x5F3A07, "5f:3a:07"),
        (2**159 - 1, "7f" + ":ff" * 19),
    ],
)
def test_serial_hex(value: int, text: str) -> None:
    assert serial_hex(value) == text
    assert parse_serial_hex(text) == value
    assert parse_serial_hex(text.upper()) == value
    assert parse_serial_hex(" " + text.replace(":", "") + "\n") == value


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_serial_hex_roundtrips_certificates(alg: KeyAlgorithm) -> None:
    for cert in (ca(alg), leaf(alg)):
        text = serial_hex(cert)
        assert text == text.lower()
        assert all(len(octet) == 2 for octet in text.split(":"))
        assert parse_serial_hex(text) == cert.serial_number


@pytest.mark.parametrize("bad", ["", ":", "5f:", ":5f", "5f::3a", "0x5f", "zz", "5f-3a", "abc:d"])
def test_parse_serial_hex_rejects(bad: str) -> None:
    with pytest.raises(CryptoError, match="serial must be hex"):
        parse_serial_hex(bad)


def test_serial_hex_rejects_negative_and_bool() -> None:
    with pytest.raises(CryptoError):
        serial_hex(-1)
    with pytest.raises(CryptoError):
        serial_hex(True)


def test_fingerprints() -> None:
    cert = leaf(KeyAlgorithm.ECDSA_P256)
    fp = fingerprint_sha256(cert)
    assert fp.startswith("sha256:")
    assert len(fp) == len("sha256:") + 64
    assert fp == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    pk = public_key_fingerprint(cert)
    assert pk == public_key_fingerprint(key(KeyAlgorithm.ECDSA_P256, 1))
    assert pk == public_key_fingerprint(key(KeyAlgorithm.ECDSA_P256, 1).public_key())
    assert pk != fp


def test_secret_fingerprint() -> None:
    value = "s3cr3t-value-0123456789"
    fp = secret_fingerprint(value.encode())
    assert fp == secret_fingerprint(value)
    assert fp.startswith("sha256:")
    assert len(fp) == len("sha256:") + 16
    assert all(c in string.hexdigits.lower() for c in fp.removeprefix("sha256:"))
    assert value not in fp
    assert secret_fingerprint(b"other") != fp
    # Domain separated: not the plain SHA-256 of the value.
    assert fp.removeprefix("sha256:") not in hashlib.sha256(value.encode()).hexdigest()


# ----------------------------------------------------------------------------- static secret


@pytest.mark.parametrize(
    ("charset", "alphabet"),
    [
        ("alphanumeric", string.ascii_letters + string.digits),
        ("hex", "0123456789abcdef"),
        ("base64url", string.ascii_letters + string.digits + "-_"),
        ("ascii-printable", "".join(chr(c) for c in range(33, 127))),
    ],
)
@pytest.mark.parametrize("length", [8, 32, 4096])
def test_generate_secret(charset: str, alphabet: str, length: int) -> None:
    value = generate_secret(length, charset)
    assert len(value) == length
    assert set(value) <= set(alphabet)
    assert not any(c.isspace() for c in value)
    assert generate_secret(length, charset) != value
    if length == 4096:  # large enough that every symbol shows up
        assert set(value) == set(alphabet)


def test_generate_secret_default_charset() -> None:
    value = generate_secret(64)
    assert set(value) <= set(string.ascii_letters + string.digits)
    assert generate_secret(16, Charset.HEX).isalnum()


@pytest.mark.parametrize(
    ("length", "charset", "field"),
    [
        (7, "alphanumeric", "generator.length"),
        (4097, "alphanumeric", "generator.length"),
        (0, "hex", "generator.length"),
        (-5, "hex", "generator.length"),
        (True, "hex", "generator.length"),
        ("32", "hex", "generator.length"),
        (32, "emoji", "generator.charset"),
        (32, "", "generator.charset"),
        (32, "ALPHANUMERIC", "generator.charset"),
    ],
)
def test_generate_secret_rejects(length: object, charset: str, field: str) -> None:
    with pytest.raises(CryptoError, match=field):
        generate_secret(length, charset)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- PEM & summary


def test_cert_pem_and_chain_roundtrip() -> None:
    chain = [leaf(KeyAlgorithm.ECDSA_P256), ca(KeyAlgorithm.ECDSA_P256)]
    pem = chain_pem(chain)
    assert pem == cert_pem(chain[0]) + cert_pem(chain[1])
    assert load_cert_chain(pem) == chain
    assert load_cert_chain(pem.decode()) == chain


@pytest.mark.parametrize("garbage", [b"", b"secret-ish garbage value 123", b"-----BEGIN CERT"])
def test_load_cert_chain_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(CryptoError, match="invalid certificate PEM") as info:
        load_cert_chain(garbage)
    if garbage:
        assert garbage.decode() not in str(info.value)


@pytest.mark.parametrize("alg", ALL_ALGS, ids=str)
def test_cert_summary(alg: KeyAlgorithm) -> None:
    cert = leaf(alg)
    summary = cert_summary(cert)
    assert summary == {
        "subject": "",
        "issuer": "CN=nhi test root",
        "serial": serial_hex(cert),
        "notBefore": "2030-01-15T11:59:00Z",
        "notAfter": "2030-01-16T12:00:00Z",
        "spiffeId": SPIFFE,
        "dnsNames": ",".join(DNS),
        "keyAlgorithm": alg.value,
        "fingerprint": fingerprint_sha256(cert),
    }
    assert all(isinstance(v, str) for v in summary.values())
    assert cert_summary(ca(alg))["spiffeId"] == ""


def test_provenance_tags_are_bound_to_the_key_the_uid_and_the_purpose() -> None:
    key = new_provenance_key()
    tag = provenance_tag(key, "uid-1", "trust-bundle")
    assert tag.startswith("v1.")
    assert tag == provenance_tag(key, "uid-1", "trust-bundle")  # deterministic
    assert provenance_valid(key, "uid-1", "trust-bundle", tag)
    assert not provenance_valid(key, "uid-2", "trust-bundle", tag)
    assert not provenance_valid(key, "uid-1", "crl/ClusterIdentityIssuer//mesh", tag)
    assert not provenance_valid(new_provenance_key(), "uid-1", "trust-bundle", tag)
    assert not provenance_valid(key, "", "trust-bundle", provenance_tag(key, "", "trust-bundle"))
    assert not provenance_valid(key, "uid-1", "trust-bundle", None)


def _jwt(claims: object) -> str:
    import base64
    import json

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return ".".join((part(b'{"alg":"RS256"}'), part(json.dumps(claims).encode()), part(b"sig")))


def test_a_token_is_named_by_its_jwt_id_as_the_audit_events_name_it() -> None:
    jti = "6b7c1f3e-54c2-4c9d-9a36-0c1a2d3e4f50"
    token = _jwt({"jti": jti, "sub": "system:serviceaccount:team:app"})
    assert token_credential_id(token) == f"JTI={jti}"
    assert jti in token_credential_id(token) and "sig" not in token_credential_id(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.!!!.c",
        _jwt({"sub": "no jti"}),
        _jwt({"jti": 5}),
        _jwt({"jti": "x" * 200}),
        _jwt({"jti": "has space"}),
        _jwt(["a", "list"]),
    ],
)
def test_a_token_without_a_usable_jwt_id_has_no_credential_id(token: str) -> None:
    assert token_credential_id(token) == ""
