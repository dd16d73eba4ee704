"""The signers identities use: read-only, prepared by the issuer controller.

An identity that issues an X.509 credential asks :meth:`SignerCache.signer` for its issuer's
signing material. The answer comes from memory: the :class:`Signer` the issuer controller
installed after its last reconcile, or the reason it cannot sign (:class:`IssuerNotReady`).
For an issuer the controller has not reconciled yet, the cache asks the controller to (its
``prepare`` callable queues the issuer and waits for that run); the cache itself never
reconciles anything and makes no request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nhi.crypto import Certificate, PreparedIssuer, PrivateKey, fingerprint_sha256
from nhi.models.duration import rfc3339
from nhi.models.issuer import KINDS, IssuerKey, IssuerReason, issuer_key


class IssuerNotReady(Exception):
    """The issuer cannot sign now; ``reason`` is a CamelCase constant for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RemoteSigning(Protocol):
    """A CA whose key the operator does not hold (Vault/OpenBao PKI): it signs CSRs."""

    async def sign(
        self,
        key: PrivateKey,
        *,
        spiffe_id: str,
        dns_names: Sequence[str],
        ttl: dt.timedelta,
    ) -> tuple[Certificate, tuple[Certificate, ...]]:
        """A certificate for ``key`` and the chain to send with it (intermediates)."""
        ...

    async def revoke(self, serials: Sequence[int]) -> str:
        """Put ``serials`` on the CA's own CRL; return that CRL (PEM). IssuerNotReady when
        the server cannot now (the serials are sent again later)."""
        ...


@dataclass(frozen=True)
class RemoteCA:
    """The CA of a signer whose key stays on the server: its certificate, and who signs."""

    cert: Certificate
    signing: RemoteSigning = field(repr=False, compare=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint_sha256(self.cert))


@dataclass(frozen=True)
class Signer:
    kind: str  # IdentityIssuer | ClusterIdentityIssuer
    name: str
    namespace: str  # the issuer's namespace ('' for ClusterIdentityIssuer)
    trust_domain: str
    #: The CA certificate and key, checked once when loaded, that signs leaves here; or a
    #: remote CA (Vault) that signs CSRs.
    ca: PreparedIssuer | RemoteCA
    chain: tuple[Certificate, ...]  # intermediates between ca_cert and the root, if any
    bundle_pem: bytes  # every root a verifier should trust now (old + new during CA rotation)

    @property
    def ca_cert(self) -> Certificate:
        return self.ca.cert

    @property
    def ca_key(self) -> PrivateKey:
        if isinstance(self.ca, RemoteCA):
            raise ValueError(f"{self.ref} signs remotely: the operator holds no CA key")
        return self.ca.key

    @property
    def remote(self) -> RemoteCA | None:
        return self.ca if isinstance(self.ca, RemoteCA) else None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def key(self) -> IssuerKey:
        return (self.kind, self.namespace, self.name)


def not_found(key: IssuerKey) -> str:
    kind, namespace, name = key
    where = f" in namespace {namespace}" if namespace else ""
    return f"{kind} {name} does not exist{where}"


def material(signer: Signer | None) -> tuple[Any, ...] | None:
    """What identities depend on: a change re-queues them."""
    if signer is None:
        return None
    return (
        fingerprint_sha256(signer.ca_cert),
        tuple(fingerprint_sha256(c) for c in signer.chain),
        signer.bundle_pem,
        signer.trust_domain,
    )


class SignerCache:
    """Each issuer's signer, or why it has none, as its controller last settled it.

    Written only by the issuer controller (:meth:`put`, :meth:`drop`); read by identities.
    """

    def __init__(
        self,
        clock: Callable[[], dt.datetime],
        *,
        prepare: Callable[[IssuerKey], Awaitable[None]],
        absent: Callable[[IssuerKey], bool],
        look_again: Callable[[IssuerKey], None],
    ) -> None:
        self.clock = clock
        #: Has the controller reconcile an issuer it never settled, and waits for that run;
        #: IssuerNotReady when the issuer does not exist or is being deleted.
        self._prepare = prepare
        #: True when the issuer is known to be gone (its watch said so).
        self._absent = absent
        #: Asks the controller to look at the issuer again soon.
        self._look_again = look_again
        self._entries: dict[IssuerKey, Signer | IssuerNotReady] = {}

    # ------------------------------------------------------------------ controller side

    def put(self, key: IssuerKey, entry: Signer | IssuerNotReady) -> None:
        self._entries[key] = entry

    def drop(self, key: IssuerKey) -> bool:
        """Forget an issuer; True when something was known about it."""
        return self._entries.pop(key, None) is not None

    def settled(self, key: IssuerKey) -> bool:
        """True once the controller installed a signer or a problem for the issuer."""
        return key in self._entries

    def get(self, key: IssuerKey) -> Signer | None:
        entry = self._entries.get(key)
        return entry if isinstance(entry, Signer) else None

    def problem(self, key: IssuerKey) -> IssuerNotReady | None:
        entry = self._entries.get(key)
        return entry if isinstance(entry, IssuerNotReady) else None

    # ------------------------------------------------------------------ identity side

    async def signer(self, kind: str, name: str, identity_namespace: str) -> Signer:
        """The signing material of an issuer, from memory; IssuerNotReady when it cannot sign.

        For an IdentityIssuer, the issuer lives in ``identity_namespace``. The first call for
        an issuer the controller has not reconciled yet waits for it to; later calls make no
        API request.
        """
        key = issuer_key(kind, name, identity_namespace)
        if kind not in KINDS:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, f"unknown issuer kind {kind!r}")
        entry = self._entries.get(key)
        if entry is None:
            await self._prepare(key)
            entry = self._entries.get(key)
        elif self._absent(key):
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
        if entry is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
        if isinstance(entry, IssuerNotReady):
            raise IssuerNotReady(entry.reason, entry.message)
        if self.clock() < entry.ca_cert.not_valid_after_utc:
            return entry
        self._look_again(key)
        raise IssuerNotReady(
            IssuerReason.CA_EXPIRED,
            f"the CA certificate of {kind} {name} expired at "
            f"{rfc3339(entry.ca_cert.not_valid_after_utc)}",
        )


def changed(
    before: tuple[Signer | None, IssuerNotReady | None],
    after: tuple[Signer | None, IssuerNotReady | None],
) -> bool:
    """Whether identities must hear of the change: other material or another problem."""

    def problem(p: IssuerNotReady | None) -> tuple[str, str] | None:
        return None if p is None else (p.reason, p.message)

    return material(before[0]) != material(after[0]) or problem(before[1]) != problem(after[1])
