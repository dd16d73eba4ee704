"""Generation of static secrets (passwords, API tokens) with the ``secrets`` module."""

from __future__ import annotations

import enum
import secrets
import string

from nhi.crypto.errors import CryptoError

MIN_SECRET_LENGTH = 8
MAX_SECRET_LENGTH = 4096


class Charset(enum.StrEnum):
    """Alphabets for :func:`generate_secret`, spelled as in the API (``generator.charset``)."""

    ALPHANUMERIC = "alphanumeric"
    HEX = "hex"
    BASE64URL = "base64url"
    ASCII_PRINTABLE = "ascii-printable"


DEFAULT_CHARSET = Charset.ALPHANUMERIC

ALPHABETS: dict[Charset, str] = {
    Charset.ALPHANUMERIC: string.ascii_letters + string.digits,
    Charset.HEX: "0123456789abcdef",
    Charset.BASE64URL: string.ascii_letters + string.digits + "-_",
    # Printable ASCII without whitespace: '!' (0x21) .. '~' (0x7e).
    Charset.ASCII_PRINTABLE: "".join(chr(c) for c in range(0x21, 0x7F)),
}


def parse_charset(charset: Charset | str) -> Charset:
    """Return the :class:`Charset` for ``charset`` or raise CryptoError naming the field."""
    if isinstance(charset, Charset):
        return charset
    try:
        return Charset(charset)
    except ValueError:
        allowed = ", ".join(c.value for c in Charset)
        shown = repr(charset[:64]) if isinstance(charset, str) else type(charset).__name__
        raise CryptoError(
            f"generator.charset: unknown charset {shown}; expected one of: {allowed}"
        ) from None


def generate_secret(length: int, charset: Charset | str = DEFAULT_CHARSET) -> str:
    """A uniformly random secret of ``length`` characters drawn from ``charset``.

    ``length`` must be within 8..4096 (field ``generator.length``); ``charset`` one of
    :class:`Charset` (field ``generator.charset``).
    """
    if not isinstance(length, int) or isinstance(length, bool):
        raise CryptoError("generator.length: must be an integer")
    if not MIN_SECRET_LENGTH <= length <= MAX_SECRET_LENGTH:
        raise CryptoError(
            f"generator.length: must be between {MIN_SECRET_LENGTH} and {MAX_SECRET_LENGTH}, "
            f"got {length}"
        )
    alphabet = ALPHABETS[parse_charset(charset)]
    return "".join(secrets.choice(alphabet) for _ in range(length))
