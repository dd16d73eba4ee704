"""Provenance tags: proof that the operator created an object, bound to its UID.

The API server gives every object a UID when it is created and never lets anyone change it.
Right after creating a ConfigMap, the operator writes ``v1.<HMAC-SHA256(key, uid, purpose)>``
into one of its annotations. Anyone may copy that value, but it only matches the UID of the
object it was computed for, and only the holder of the key (a Secret in the operator's own
namespace) can compute it for another UID. Labels, annotations and field managers, which
whoever can write a ConfigMap can set, prove nothing; this does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_VERSION = "v1"
_DOMAIN = b"nhi.dev/provenance\x00"
PROVENANCE_KEY_BYTES = 32


def new_provenance_key() -> bytes:
    return secrets.token_bytes(PROVENANCE_KEY_BYTES)


def provenance_tag(key: bytes, uid: str, purpose: str) -> str:
    """The tag of the object with ``uid``, created for ``purpose`` (e.g. ``trust-bundle``)."""
    mac = hmac.new(key, _DOMAIN + f"{uid}\x00{purpose}".encode(), hashlib.sha256).digest()
    return f"{_VERSION}.{base64.urlsafe_b64encode(mac).decode('ascii').rstrip('=')}"


def provenance_valid(key: bytes, uid: str, purpose: str, tag: object) -> bool:
    """True when ``tag`` is the tag of ``uid`` for ``purpose`` under ``key``."""
    if not isinstance(tag, str) or not uid:
        return False
    return hmac.compare_digest(tag.encode(), provenance_tag(key, uid, purpose).encode())
