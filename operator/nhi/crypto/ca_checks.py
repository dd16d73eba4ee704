"""What a certificate says about itself: is it a CA, may it sign, who signed it.

Read-only questions asked of parsed certificates; the rooms that load CA material (the
issuers' ``ca`` source, the CA Secret builder) phrase the answers as their own errors.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from nhi.crypto.identifiers import serial_hex


def describe(cert: x509.Certificate) -> str:
    """The subject and serial, to name a certificate in a message (never key material)."""
    return f"{cert.subject.rfc4514_string() or '<empty subject>'} (serial {serial_hex(cert)})"


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def key_usage_of(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA:TRUE is present."""
    bc = basic_constraints(cert)
    return bc is not None and bc.ca


def may_sign_certs_and_crls(cert: x509.Certificate) -> bool:
    """No keyUsage at all, or one that allows both keyCertSign and cRLSign."""
    ku = key_usage_of(cert)
    return ku is None or (ku.key_cert_sign and ku.crl_sign)


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """``parent``'s name is ``child``'s issuer and its key verifies ``child``'s signature."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, cert)
