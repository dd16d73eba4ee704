"""Key generation, algorithm detection and PEM (de)serialisation of private keys."""

from __future__ import annotations

import enum
import functools
from typing import TypeAlias, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from nhi.crypto.errors import CryptoError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
"""The private key types this operator generates and accepts."""

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
"""The public halves of :data:`PrivateKey`."""

AnyKey: TypeAlias = PrivateKeyTypes | PublicKeyTypes | CertificatePublicKeyTypes
"""Anything ``cryptography`` may hand back as a key (e.g. ``Certificate.public_key()``)."""


class KeyAlgorithm(enum.StrEnum):
    """Supported key algorithms, spelled as in the API."""

    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"
    ED25519 = "Ed25519"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"


DEFAULT_KEY_ALGORITHM = KeyAlgorithm.ECDSA_P256

_PRIVATE_TYPES = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)
_PUBLIC_TYPES = (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)


class _Family(enum.Enum):
    EC = "EC"
    RSA = "RSA"
    ED25519 = "Ed25519"


_FAMILIES: tuple[tuple[_Family, type, type], ...] = (
    (_Family.EC, ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey),
    (_Family.RSA, rsa.RSAPrivateKey, rsa.RSAPublicKey),
    (_Family.ED25519, ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey),
)


@functools.cache
def _family_of(cls: type) -> tuple[_Family, bool] | None:
    """The key family of a class and whether it is a private key; None for other classes.

    The answer depends on the class alone, so it is kept per class: checks against the
    abstract key classes of ``cryptography`` cost more than the rest of a key check, and
    keys are checked on every issuance.
    """
    for family, private, public in _FAMILIES:
        if issubclass(cls, private):
            return family, True
        if issubclass(cls, public):
            return family, False
    return None


_RSA_SIZES: dict[int, KeyAlgorithm] = {
    2048: KeyAlgorithm.RSA_2048,
    3072: KeyAlgorithm.RSA_3072,
    4096: KeyAlgorithm.RSA_4096,
}
_EC_CURVES: dict[str, KeyAlgorithm] = {
    ec.SECP256R1.name: KeyAlgorithm.ECDSA_P256,
    ec.SECP384R1.name: KeyAlgorithm.ECDSA_P384,
}


def parse_key_algorithm(value: KeyAlgorithm | str) -> KeyAlgorithm:
    """Return the :class:`KeyAlgorithm` for ``value`` or raise :class:`CryptoError`."""
    if isinstance(value, KeyAlgorithm):
        return value
    try:
        return KeyAlgorithm(value)
    except ValueError:
        allowed = ", ".join(a.value for a in KeyAlgorithm)
        raise CryptoError(
            f"unsupported key algorithm {value!r}; expected one of: {allowed}"
        ) from None


def generate_key(alg: KeyAlgorithm | str = DEFAULT_KEY_ALGORITHM) -> PrivateKey:
    """Generate a fresh private key of the given algorithm."""
    algorithm = parse_key_algorithm(alg)
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    size = int(algorithm.value.removeprefix("RSA-"))
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def key_algorithm_of(key: AnyKey) -> KeyAlgorithm:
    """Return the :class:`KeyAlgorithm` of a private or public key.

    Raises :class:`CryptoError` for key types, curves or sizes this operator does not support.
    """
    kind = _family_of(type(key))
    if kind is None:
        raise CryptoError(f"unsupported key type {type(key).__name__}")
    family = kind[0]
    if family is _Family.ED25519:
        return KeyAlgorithm.ED25519
    if family is _Family.EC:
        curve = cast(ec.EllipticCurvePublicKey, key).curve.name
        found = _EC_CURVES.get(curve)
        if found is None:
            raise CryptoError(f"unsupported elliptic curve {curve}")
        return found
    size = cast(rsa.RSAPublicKey, key).key_size
    found = _RSA_SIZES.get(size)
    if found is None:
        raise CryptoError(f"unsupported RSA key size {size}")
    return found


def signing_hash(key: AnyKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """Hash algorithm to sign with ``key``: None for Ed25519, SHA-384 for P-384, else SHA-256."""
    algorithm = key_algorithm_of(key)
    if algorithm is KeyAlgorithm.ED25519:
        return None
    if algorithm is KeyAlgorithm.ECDSA_P384:
        return hashes.SHA384()
    return hashes.SHA256()


def ensure_supported_private_key(key: object) -> PrivateKey:
    """Narrow ``key`` to :data:`PrivateKey` of a supported algorithm or raise CryptoError."""
    if isinstance(key, _PRIVATE_TYPES):
        key_algorithm_of(key)
        return key
    raise CryptoError(f"unsupported private key type {type(key).__name__}")


def ensure_supported_public_key(key: AnyKey) -> PublicKey:
    """Narrow ``key`` to :data:`PublicKey` of a supported algorithm or raise CryptoError."""
    kind = _family_of(type(key))
    public = cast(PrivateKey, key).public_key() if kind is not None and kind[1] else key
    kind = _family_of(type(public))
    if kind is None or kind[1]:
        raise CryptoError(f"unsupported public key type {type(public).__name__}")
    key_algorithm_of(public)
    return cast(PublicKey, public)


def private_key_pem(key: PrivateKey) -> bytes:
    """Serialise ``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_private_key(pem: bytes | str) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8, or traditional PKCS#1/SEC1).

    Raises :class:`CryptoError` on malformed, encrypted or unsupported keys. The message
    never contains the input; the original exception is not chained because some parsers
    echo fragments of their input.
    """
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CryptoError("private key PEM must be bytes or str")
    try:
        key = serialization.load_pem_private_key(bytes(data), password=None)
    except TypeError:
        raise CryptoError("private key PEM is encrypted; an unencrypted key is required") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CryptoError("invalid private key PEM") from None
    return ensure_supported_private_key(key)


KeyLike: TypeAlias = PrivateKey | PublicKey | CertificatePublicKeyTypes
"""A supported private key, or any public key found in a certificate."""


def public_key_der(key: KeyLike) -> bytes:
    """DER SubjectPublicKeyInfo of a key (the public half for a private key)."""
    public = key.public_key() if isinstance(key, _PRIVATE_TYPES) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_pem(key: KeyLike) -> bytes:
    """PEM SubjectPublicKeyInfo of a key (the public half for a private key)."""
    public = key.public_key() if isinstance(key, _PRIVATE_TYPES) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: KeyLike, b: KeyLike) -> bool:
    """True when ``a`` and ``b`` have the same public key."""
    return public_key_der(a) == public_key_der(b)
