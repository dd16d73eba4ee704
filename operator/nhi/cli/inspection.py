"""``nhi inspect secret``: what a credential Secret holds, without ever showing a value.

Pure: takes the Secret as read from the API server and the current time. What comes out is
made of identifiers (subjects, serials, fingerprints, claims, times) only: no private key,
no token (nor its signature), no static value ever reaches the result, and no error message
carries any part of the data it failed to decode.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from nhi import crypto
from nhi.cli.render import NONE, expires_in, parse_moment, render_kv
from nhi.crypto.serving import subject_alt_names
from nhi.models import issued

TYPE_ANNOTATION = "nhi.dev/credential-type"
IDENTITY_LABEL = "nhi.dev/identity"
CREDENTIAL_LABEL = "nhi.dev/credential"
ANNOTATION_PREFIX = "nhi.dev/"

TOKEN = "ServiceAccountToken"  # noqa: S105 - a credential type, not a secret
X509 = "X509"
STATIC = "StaticSecret"


class InspectError(Exception):
    """The Secret cannot be decoded. Messages name keys and rules, never data."""


# ------------------------------------------------------------------------------------ JWT


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWS, without verifying the signature.

    Raises :class:`InspectError` (naming no part of the token) when it is not a JWT.
    """
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise InspectError("the token is not a JWT (expected three dot-separated parts)")
    try:
        header = json.loads(_b64url(parts[0]))
        payload = json.loads(_b64url(parts[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InspectError("the token is not a JWT (header or payload is not JSON)") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InspectError("the token is not a JWT (header or payload is not a JSON object)")
    return header, payload


def decode_jwt_payload(token: str) -> dict[str, Any]:
    """The claims of a JWT, without verifying it."""
    return decode_jwt(token)[1]


def _epoch(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return crypto.rfc3339(dt.datetime.fromtimestamp(int(value), dt.UTC))
        except (OverflowError, OSError, ValueError):
            return None
    return None


def token_summary(token: str, now: dt.datetime) -> dict[str, Any]:
    """Claims of a ServiceAccount token: audiences, subject, times and the bound object."""
    header, claims = decode_jwt(token)
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else [str(a) for a in aud or []]
    k8s = claims.get("kubernetes.io")
    k8s = k8s if isinstance(k8s, Mapping) else {}
    bound: dict[str, str] = {}
    for kind in ("secret", "pod", "node"):
        ref = k8s.get(kind)
        if isinstance(ref, Mapping):
            bound = {
                "kind": kind.capitalize(),
                "name": str(ref.get("name", "")),
                "uid": str(ref.get("uid", "")),
            }
            break
    sa = k8s.get("serviceaccount")
    out: dict[str, Any] = {
        "type": TOKEN,
        "algorithm": str(header.get("alg", "")),
        "keyId": str(header.get("kid", "")),
        "issuer": str(claims.get("iss", "")),
        "subject": str(claims.get("sub", "")),
        "audiences": audiences,
        "issuedAt": _epoch(claims.get("iat")),
        "notBefore": _epoch(claims.get("nbf")),
        "expiresAt": _epoch(claims.get("exp")),
        "expiresIn": expires_in(parse_moment(_epoch(claims.get("exp"))), now),
        "namespace": str(k8s.get("namespace", "")),
        "serviceAccount": (
            {"name": str(sa.get("name", "")), "uid": str(sa.get("uid", ""))}
            if isinstance(sa, Mapping)
            else None
        ),
        "boundObject": bound or None,
        "fingerprint": crypto.secret_fingerprint(token),
    }
    return out


# ----------------------------------------------------------------------------------- X509


def x509_summary(
    tls_crt: bytes, tls_key: bytes | None, ca_crt: bytes | None, now: dt.datetime
) -> dict[str, Any]:
    """The leaf (an X.509-SVID), its chain, the CA bundle and whether the key matches."""
    try:
        chain = crypto.load_cert_chain(tls_crt)
    except crypto.CryptoError:
        raise InspectError("tls.crt holds no parseable PEM certificate") from None
    leaf = chain[0]
    facts = crypto.cert_summary(leaf)
    out: dict[str, Any] = {
        "type": X509,
        "subject": facts["subject"],
        "spiffeId": facts["spiffeId"],
        "sans": subject_alt_names(leaf),
        "serial": facts["serial"],
        "notBefore": facts["notBefore"],
        "notAfter": facts["notAfter"],
        "expiresIn": expires_in(leaf.not_valid_after_utc, now),
        "keyAlgorithm": facts["keyAlgorithm"],
        "fingerprint": facts["fingerprint"],
        "issuer": facts["issuer"],
        "chainLength": len(chain),
        "chain": [c.subject.rfc4514_string() or "<empty subject>" for c in chain[1:]],
    }
    bundle: list[str] = []
    if ca_crt:
        try:
            bundle = [
                c.subject.rfc4514_string() or "<empty subject>"
                for c in crypto.load_cert_chain(ca_crt)
            ]
        except crypto.CryptoError:
            bundle = ["<unparseable ca.crt>"]
    out["caBundle"] = bundle
    key: dict[str, Any] = {"present": bool(tls_key)}
    if tls_key:
        try:
            private = crypto.load_private_key(tls_key)
            key["algorithm"] = crypto.key_algorithm_of(private).value
            key["matchesCertificate"] = crypto.public_key_fingerprint(
                private
            ) == crypto.public_key_fingerprint(leaf)
        except crypto.CryptoError as err:
            # CryptoError messages never contain the input.
            key["error"] = str(err)
    out["privateKey"] = key
    return out


# ---------------------------------------------------------------------------- StaticSecret


def static_summary(
    current: bytes | None, previous: bytes | None, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """Fingerprints of ``current`` and ``previous`` and when each stops being valid."""
    out: dict[str, Any] = {"type": STATIC}
    out["current"] = (
        {
            "fingerprint": crypto.secret_fingerprint(current),
            "notAfter": annotations.get(issued.A_NOT_AFTER),
        }
        if current is not None
        else None
    )
    out["previous"] = (
        {
            "fingerprint": crypto.secret_fingerprint(previous),
            "notAfter": annotations.get(issued.A_PREVIOUS_NOT_AFTER),
        }
        if previous is not None
        else None
    )
    return out


# ----------------------------------------------------------------------------------- Secret


def _data(secret: Mapping[str, Any], key: str) -> bytes | None:
    value = (secret.get("data") or {}).get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InspectError(f"data key {key!r} is not valid base64") from None


def credential_type(secret: Mapping[str, Any]) -> str | None:
    """The credential type a Secret holds: its annotation, else what its keys suggest."""
    meta = secret.get("metadata") or {}
    declared = (meta.get("annotations") or {}).get(TYPE_ANNOTATION)
    if declared in (TOKEN, X509, STATIC):
        return str(declared)
    keys = set(secret.get("data") or {})
    if "tls.crt" in keys:
        return X509
    if "token" in keys:
        return TOKEN
    if "current" in keys:
        return STATIC
    return None


def inspect_secret(secret: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Everything ``nhi inspect secret`` shows about a credential Secret (no values)."""
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = {
        str(k): str(v)
        for k, v in (meta.get("annotations") or {}).items()
        if str(k).startswith(ANNOTATION_PREFIX)
    }
    kind = credential_type(secret)
    out: dict[str, Any] = {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "secretType": secret.get("type", ""),
        "identity": labels.get(IDENTITY_LABEL, ""),
        "credential": labels.get(CREDENTIAL_LABEL, ""),
        "credentialType": kind or "",
        "keys": sorted(secret.get("data") or {}),
        "annotations": dict(sorted(annotations.items())),
    }
    name = meta.get("name", "")
    if kind is None:
        raise InspectError(
            f"Secret {name} holds no nhi credential (expected a token, tls.crt or current key)"
        )
    if kind == X509:
        crt = _data(secret, "tls.crt")
        if crt is None:
            raise InspectError(f"Secret {name} has no tls.crt yet (not issued)")
        out["details"] = x509_summary(crt, _data(secret, "tls.key"), _data(secret, "ca.crt"), now)
    elif kind == TOKEN:
        token = _data(secret, "token")
        if token is None:
            raise InspectError(f"Secret {name} has no token yet (not issued)")
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            raise InspectError("the token is not a JWT (not ASCII)") from None
        out["details"] = token_summary(text, now)
    else:
        current, previous = _data(secret, "current"), _data(secret, "previous")
        if current is None:
            raise InspectError(f"Secret {name} has no current value yet (not issued)")
        out["details"] = static_summary(current, previous, annotations)
    return out


# --------------------------------------------------------------------------------- render


def _ref(ref: Mapping[str, Any] | None) -> str:
    if not ref:
        return NONE
    text = f"{ref.get('kind', '')}/{ref['name']}" if ref.get("kind") else str(ref.get("name"))
    return f"{text} (uid {ref['uid']})" if ref.get("uid") else text


def render_inspect(result: Mapping[str, Any]) -> str:
    """The human view of :func:`inspect_secret`: key/value blocks."""
    d = result.get("details") or {}
    head: list[tuple[str, Any]] = [
        ("Secret", f"{result['namespace']}/{result['name']} ({result['secretType']})"),
        ("Identity", result["identity"]),
        ("Credential", result["credential"]),
        ("Type", result["credentialType"]),
        ("Keys", ", ".join(result["keys"])),
    ]
    body: list[tuple[str, Any]] = []
    if d.get("type") == X509:
        key = d.get("privateKey") or {}
        if not key.get("present"):
            key_text = "absent"
        elif "error" in key:
            key_text = f"unreadable: {key['error']}"
        else:
            match = "matches" if key.get("matchesCertificate") else "DOES NOT MATCH"
            key_text = f"{key.get('algorithm')}, {match} the certificate"
        body = [
            ("Subject", d["subject"] or "<empty>"),
            ("SPIFFE ID", d["spiffeId"]),
            ("SANs", d["sans"]),
            ("Serial", d["serial"]),
            ("Not Before", d["notBefore"]),
            ("Not After", f"{d['notAfter']} ({d['expiresIn']})"),
            ("Key Algorithm", d["keyAlgorithm"]),
            ("Private Key", key_text),
            ("Fingerprint", d["fingerprint"]),
            ("Issuer", d["issuer"]),
            ("Chain Length", d["chainLength"]),
            ("CA Bundle", d["caBundle"]),
        ]
    elif d.get("type") == TOKEN:
        sa = d.get("serviceAccount")
        body = [
            ("Subject", d["subject"]),
            ("Audiences", d["audiences"]),
            ("Issuer", d["issuer"]),
            ("Issued At", d["issuedAt"]),
            ("Expires At", f"{d['expiresAt']} ({d['expiresIn']})" if d["expiresAt"] else None),
            ("Service Account", _ref(sa)),
            ("Bound Object", _ref(d.get("boundObject"))),
            ("Signing Key ID", d["keyId"]),
            ("Fingerprint", d["fingerprint"]),
        ]
    elif d.get("type") == STATIC:
        for label, entry in (("Current", d.get("current")), ("Previous", d.get("previous"))):
            if entry is None:
                body.append((label, "none"))
            else:
                until = entry.get("notAfter") or NONE
                body.append((label, f"{entry['fingerprint']} (not after {until})"))
    annotations = [f"{k}={v}" for k, v in (result.get("annotations") or {}).items()]
    return render_kv([*head, *body, ("Annotations", annotations)])
