"""The one error of :mod:`nhi.vault`: which server, which operation, which HTTP status.

Messages are composed here from the server's address, the operation and the status, plus the
server's own error text with every secret the client holds removed: no token, secret ID or
JWT ever reaches a message.
"""

from __future__ import annotations

from collections.abc import Iterable


class VaultReason:
    """Condition reasons for a Vault/OpenBao that cannot serve (CamelCase, stable)."""

    UNREACHABLE = "VaultUnreachable"
    TIMEOUT = "VaultTimeout"
    SEALED = "VaultSealed"
    FORBIDDEN = "VaultForbidden"
    UNAUTHORIZED = "VaultUnauthorized"
    NOT_FOUND = "VaultNotFound"
    REJECTED = "VaultRequestRejected"
    SERVER_ERROR = "VaultServerError"
    AUTH_MATERIAL = "VaultAuthMaterial"


def reason_for(status: int | None) -> str:
    """The reason for an answer with HTTP ``status`` (None: no answer)."""
    if status is None:
        return VaultReason.UNREACHABLE
    if status == 503:
        return VaultReason.SEALED
    if status == 403:
        return VaultReason.FORBIDDEN
    if status == 401:
        return VaultReason.UNAUTHORIZED
    if status == 404:
        return VaultReason.NOT_FOUND
    if status >= 500:
        return VaultReason.SERVER_ERROR
    return VaultReason.REJECTED


class VaultError(Exception):
    """A request to Vault/OpenBao failed. ``status`` is None when no answer came."""

    def __init__(
        self,
        address: str,
        operation: str,
        status: int | None,
        detail: str = "",
        *,
        reason: str | None = None,
    ) -> None:
        self.address = address
        self.operation = operation
        self.status = status
        self.detail = detail
        self.reason = reason or reason_for(status)
        if status is not None:
            answered = f"answered HTTP {status}"
        elif self.reason in (VaultReason.UNREACHABLE, VaultReason.TIMEOUT):
            answered = "did not answer"
        else:
            answered = "failed"
        message = f"Vault {address}: {operation} {answered}"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.message = message

    @property
    def retryable(self) -> bool:
        """False only when the same request is refused the same way until someone acts."""
        return self.reason not in (VaultReason.REJECTED, VaultReason.NOT_FOUND)


def scrub(text: str, secrets: Iterable[str], limit: int = 300) -> str:
    """``text`` without any of ``secrets`` (each replaced by ``<redacted>``), at most
    ``limit`` characters."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
