"""nhi.crypto: the pure cryptography layer of the operator.

Imports only the standard library and ``cryptography``. Every time-dependent function takes
``now`` (a timezone-aware datetime) instead of reading the clock, and no exception message
or repr produced here contains key material or secret values.
"""

from __future__ import annotations

from nhi.crypto.certs import (
    CLOCK_SKEW,
    Certificate,
    PreparedIssuer,
    build_self_signed_ca,
    cert_pem,
    cert_summary,
    chain_pem,
    dns_names_of,
    issue_intermediate_ca,
    issue_leaf,
    load_cert_chain,
    spiffe_id_of,
    verify_chain,
)
from nhi.crypto.crl import (
    CertificateRevocationList,
    RevokedSerial,
    build_crl,
    crl_entries,
    crl_number,
    crl_pem,
    is_revoked,
    load_crl,
    verify_crl,
)
from nhi.crypto.csr import build_csr, check_signed, split_chain
from nhi.crypto.errors import CryptoError
from nhi.crypto.identifiers import (
    fingerprint_sha256,
    parse_serial_hex,
    public_key_fingerprint,
    secret_fingerprint,
    serial_hex,
    token_credential_id,
)
from nhi.crypto.keys import (
    DEFAULT_KEY_ALGORITHM,
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    generate_key,
    key_algorithm_of,
    load_private_key,
    parse_key_algorithm,
    private_key_pem,
    public_key_pem,
    same_public_key,
    signing_hash,
)
from nhi.crypto.provenance import (
    PROVENANCE_KEY_BYTES,
    new_provenance_key,
    provenance_tag,
    provenance_valid,
)
from nhi.crypto.spiffe import spiffe_id, trust_domain_of, validate_spiffe_id
from nhi.crypto.static_secrets import DEFAULT_CHARSET, Charset, generate_secret
from nhi.crypto.validity import next_expiry, still_valid, trusted_since
from nhi.models.duration import rfc3339

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_CHARSET",
    "DEFAULT_KEY_ALGORITHM",
    "PROVENANCE_KEY_BYTES",
    "Certificate",
    "CertificateRevocationList",
    "Charset",
    "CryptoError",
    "KeyAlgorithm",
    "PreparedIssuer",
    "PrivateKey",
    "PublicKey",
    "RevokedSerial",
    "build_crl",
    "build_csr",
    "build_self_signed_ca",
    "cert_pem",
    "cert_summary",
    "chain_pem",
    "check_signed",
    "crl_entries",
    "crl_number",
    "crl_pem",
    "dns_names_of",
    "fingerprint_sha256",
    "generate_key",
    "generate_secret",
    "is_revoked",
    "issue_intermediate_ca",
    "issue_leaf",
    "key_algorithm_of",
    "load_cert_chain",
    "load_crl",
    "load_private_key",
    "new_provenance_key",
    "next_expiry",
    "parse_key_algorithm",
    "parse_serial_hex",
    "private_key_pem",
    "provenance_tag",
    "provenance_valid",
    "public_key_fingerprint",
    "public_key_pem",
    "rfc3339",
    "same_public_key",
    "secret_fingerprint",
    "serial_hex",
    "signing_hash",
    "spiffe_id",
    "spiffe_id_of",
    "split_chain",
    "still_valid",
    "token_credential_id",
    "trust_domain_of",
    "trusted_since",
    "validate_spiffe_id",
    "verify_chain",
    "verify_crl",
]
