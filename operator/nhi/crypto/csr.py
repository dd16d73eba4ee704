"""Certificate signing requests for a CA the operator does not hold (Vault/OpenBao PKI).

The key pair is made in the operator and only the CSR leaves it; what comes back is checked
against what was asked: the key, the SPIFFE ID, the DNS names, and a signature by the CA.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nhi.crypto.certs import dns_names_of, spiffe_id_of
from nhi.crypto.errors import CryptoError
from nhi.crypto.keys import PrivateKey, same_public_key, signing_hash
from nhi.crypto.spiffe import validate_spiffe_id


def build_csr(key: PrivateKey, *, spiffe_id: str | None, dns_names: Sequence[str]) -> bytes:
    """A PEM CSR with an empty subject and the SPIFFE URI SAN and DNS names as SANs."""
    sans: list[x509.GeneralName] = []
    if spiffe_id is not None:
        sans.append(x509.UniformResourceIdentifier(validate_spiffe_id(spiffe_id)))
    sans.extend(x509.DNSName(name) for name in dns_names)
    if not sans:
        raise CryptoError("a CSR needs a SPIFFE ID or a DNS name")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, signing_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_signed(
    cert: x509.Certificate,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    spiffe_id: str | None,
    dns_names: Sequence[str],
) -> None:
    """Raise :class:`CryptoError` unless ``cert`` is for ``key``, carries the SPIFFE ID and
    every DNS name asked for, and was signed by ``ca_cert``."""
    if not same_public_key(key, cert.public_key()):
        raise CryptoError("the signed certificate is not for the key of the CSR")
    if spiffe_id is not None and spiffe_id_of(cert) != spiffe_id:
        raise CryptoError(f"the signed certificate lacks the SPIFFE ID {spiffe_id}")
    missing = sorted(set(dns_names) - set(dns_names_of(cert)))
    if missing:
        raise CryptoError(f"the signed certificate lacks the DNS names {', '.join(missing)}")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as err:
        raise CryptoError(f"the signed certificate was not issued by the CA: {err}") from None
    except Exception:
        raise CryptoError("the signed certificate's signature does not verify") from None


def split_chain(
    certs: Sequence[x509.Certificate],
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """(intermediates, roots) of a CA chain: the self-signed certificates are the roots; a
    chain without one has its last certificate as the root verifiers must trust."""
    roots = tuple(c for c in certs if _self_signed(c))
    if not roots and certs:
        roots = (certs[-1],)
    return tuple(c for c in certs if c not in roots), roots


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:
        return False
    return True
