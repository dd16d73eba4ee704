"""nhi.vault: Vault and OpenBao, the only code that imports hvac.

:class:`VaultClient` signs CSRs, revokes serials, reads the CA and the CRL, and writes, reads
and destroys KV v2 secrets, off the event loop (:class:`VaultPool`); every failure is a
:class:`VaultError` naming the server and the HTTP status, never a secret.
"""

from __future__ import annotations

from nhi.vault.client import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT,
    AppRoleLogin,
    KubernetesLogin,
    Login,
    SignedCertificate,
    TokenLogin,
    VaultClient,
    VaultPool,
)
from nhi.vault.errors import VaultError, VaultReason, reason_for, scrub

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TIMEOUT",
    "AppRoleLogin",
    "KubernetesLogin",
    "Login",
    "SignedCertificate",
    "TokenLogin",
    "VaultClient",
    "VaultError",
    "VaultPool",
    "VaultReason",
    "reason_for",
    "scrub",
]
