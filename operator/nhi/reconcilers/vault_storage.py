"""Copies of an identity's credentials in Vault's KV v2 (``spec.vault``; ``store: Both``).

Each issuance writes a new version at the credential's path, with custom metadata naming
the identity (its UID proves whose the path is), its owner, the credential, the value's
not-after, serial or fingerprint and rotation count, never a value. A path whose metadata
names another identity, or that holds data the operator did not write, is never written nor
destroyed: the credential is refused with a message naming the path. Revocation and deletion
destroy every version and the metadata.

Every ``check_interval`` seconds (and at the first look after a start) each copy is checked:
a path deleted, a current version deleted or destroyed, or a version written by someone else
is restored from the credential's Secret as a new version.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from nhi.k8s.client import Api
from nhi.models.duration import rfc3339
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import Issued
from nhi.models.vault_storage import kv_path
from nhi.reconcilers.issuers import IssuerNotReady, IssuerService
from nhi.reconcilers.owned import uid_of
from nhi.vault import VaultClient, VaultError, VaultReason

log = logging.getLogger("nhi.reconcilers.credentials")

#: The custom metadata key that says which identity a path belongs to.
OWNER_UID = "nhi.dev/identity-uid"
#: The custom metadata key holding the version the operator wrote last.
VERSION = "nhi.dev/version"
#: Seconds between checks of each copy (``--vault-kv-check-interval``).
DEFAULT_KV_CHECK_INTERVAL = 600.0
#: Why a credential kept in Vault only is issued again: its copy was changed or deleted.
VAULT_COPY_CHANGED = "VaultCopyChanged"


class VaultPathTaken(VaultError):
    """The KV path belongs to someone else: nothing is written or destroyed there."""

    def __init__(self, address: str, where: str, holder: str) -> None:
        super().__init__(
            address,
            f"write {where}",
            None,
            f"the path holds {holder}; it is left as it is. Choose another "
            "spec.vault.kv.path or credentials[].vault.kv.path",
            reason=VaultReason.REJECTED,
        )


def drift(meta: Mapping[str, Any] | None, uid: str, issued: Issued) -> tuple[str, bool] | None:
    """What happened to a copy since the operator wrote it, and whether it may be restored
    (False: the path now holds someone else's data); None: it is as written."""
    if meta is None:
        return "the path was deleted", True
    custom = meta.get("custom_metadata") or {}
    if not isinstance(custom, Mapping) or custom.get(OWNER_UID) != uid:
        return "the path now holds data the operator did not write", False
    current = str(meta.get("current_version") or "")
    version = ((meta.get("versions") or {}).get(current)) or {}
    if custom.get(VERSION) != current:
        return f"version {current} was written by someone else", True
    if version.get("destroyed") or version.get("deletion_time"):
        return f"version {current} was deleted", True
    ids = (("nhi.dev/serial", issued.serial), ("nhi.dev/fingerprint", issued.fingerprint))
    if any(value and custom.get(key) != value for key, value in ids):
        return "the copy is not the current value", True
    return None


class KVStore:
    def __init__(
        self,
        issuers: IssuerService,
        api: Api | None = None,
        *,
        check_interval: float = DEFAULT_KV_CHECK_INTERVAL,
    ) -> None:
        self.issuers = issuers
        self.api = api
        self.check_interval = dt.timedelta(seconds=check_interval)
        #: (identity UID, credential) -> when its copy was last written or checked.
        self._checked: dict[tuple[str, str], dt.datetime] = {}
        #: What was issued into each VaultOnly copy (read back from its metadata once).
        self._state: dict[tuple[str, str], Issued | None] = {}
        #: VaultOnly copies found changed: issued anew at the next look.
        self._changed: set[tuple[str, str]] = set()
        #: Copies this process wrote or found the identity's (written without a metadata read).
        self._owned: set[tuple[str, str]] = set()

    async def _client(self, identity: MachineIdentity) -> VaultClient:
        storage = identity.spec.vault
        assert storage is not None
        return await self.issuers.vault_client(
            storage.issuer_kind, storage.issuer_name, identity.namespace
        )

    async def _check_owner(
        self, client: VaultClient, identity: MachineIdentity, mount: str, path: str
    ) -> bool:
        """True when the path holds the identity's data, False when it holds nothing;
        VaultPathTaken when it holds anyone else's."""
        meta = await client.kv_metadata(mount, path)
        if meta is None:
            return False
        custom = meta.get("custom_metadata") or {}
        owner = custom.get(OWNER_UID) if isinstance(custom, Mapping) else None
        if owner == identity.uid:
            return True
        holder = (
            f"the credentials of another identity ({custom.get('nhi.dev/identity', '?')})"
            if owner
            else "data the operator did not write"
        )
        raise VaultPathTaken(client.address, f"{mount}/data/{path}", holder)

    async def write(
        self,
        identity: MachineIdentity,
        cred: Credential,
        data: Mapping[str, bytes],
        issued: Issued,
    ) -> int:
        """A new version with ``data`` at the credential's path; returns the version."""
        assert cred.kv is not None
        client = await self._client(identity)
        path = kv_path(identity.namespace, cred.kv)
        key = (identity.uid, cred.name)
        metadata = {
            # What was issued (the annotations a Secret would carry; never a value): the
            # state of a credential kept in Vault only.
            **issued.annotations(),
            OWNER_UID: identity.uid,
            "nhi.dev/identity": f"{identity.namespace}/{identity.name}",
            "nhi.dev/owner": identity.spec.owner,
            "nhi.dev/credential": cred.name,
            "nhi.dev/type": cred.type,
            "nhi.dev/not-after": rfc3339(issued.not_after),
            "nhi.dev/rotation-count": str(issued.rotation_count),
        }
        if issued.serial:
            metadata["nhi.dev/serial"] = issued.serial
        if issued.fingerprint:
            metadata["nhi.dev/fingerprint"] = issued.fingerprint
        values = {k: v.decode() for k, v in data.items()}
        version = await self._put(client, identity, cred.kv.mount, path, values, key)
        metadata[VERSION] = str(version)
        await client.kv_set_metadata(cred.kv.mount, path, metadata)
        self._owned.add(key)
        self._checked[key] = issued.issued_at
        self._state[key] = issued
        self._changed.discard(key)
        log.info(
            "stored credential in Vault",
            extra={
                "namespace": identity.namespace,
                "identity": identity.name,
                "credential": cred.name,
                "kv_path": f"{cred.kv.mount}/data/{path}",
                "kv_version": version,
            },
        )
        return version

    async def _put(
        self,
        client: VaultClient,
        identity: MachineIdentity,
        mount: str,
        path: str,
        values: Mapping[str, str],
        key: tuple[str, str],
    ) -> int:
        """A new version, only where the identity's own copy is (or nothing is yet)."""
        if key in self._owned:
            return await client.kv_put(mount, path, values)
        try:
            # Nothing there yet (the usual first write): one request, no metadata read.
            return await client.kv_put(mount, path, values, cas=0)
        except VaultError as err:
            if err.status != 400:
                raise
        # Something is there: whose?
        await self._check_owner(client, identity, mount, path)
        return await client.kv_put(mount, path, values)

    async def state(self, identity: MachineIdentity, cred: Credential) -> Issued | None:
        """What was issued into a VaultOnly credential's copy (None: nothing, or not the
        identity's: issuing then says whose it is)."""
        assert cred.kv is not None
        key = (identity.uid, cred.name)
        if key not in self._state:
            client = await self._client(identity)
            meta = await client.kv_metadata(cred.kv.mount, kv_path(identity.namespace, cred.kv))
            custom = (meta or {}).get("custom_metadata") or {}
            ours = isinstance(custom, Mapping) and custom.get(OWNER_UID) == identity.uid
            self._state[key] = Issued.from_annotations(custom) if ours else None
        return self._state[key]

    async def read(self, identity: MachineIdentity, cred: Credential) -> dict[str, bytes] | None:
        """The current version's data of the identity's own copy (None: none, or not its)."""
        assert cred.kv is not None
        client = await self._client(identity)
        path = kv_path(identity.namespace, cred.kv)
        if not await self._check_owner(client, identity, cred.kv.mount, path):
            return None
        found = await client.kv_read(cred.kv.mount, path)
        if found is None:
            return None
        return {k: str(v).encode() for k, v in found[0].items()}

    def changed(self, identity: MachineIdentity, cred: Credential) -> bool:
        """True when a VaultOnly copy was found changed by someone else (issue it anew)."""
        return (identity.uid, cred.name) in self._changed

    async def check(
        self,
        identity: MachineIdentity,
        cred: Credential,
        stored: Mapping[str, Any] | None,
        issued: Issued,
        now: dt.datetime,
    ) -> dt.datetime:
        """Check the credential's copy when due, restoring it if need be; the next check."""
        key = (identity.uid, cred.name)
        last = self._checked.get(key)
        if last is not None and now < last + self.check_interval:
            return last + self.check_interval
        self._checked[key] = now
        try:
            await self._check(identity, cred, stored, issued)
            if key in self._changed:
                return now + dt.timedelta(seconds=1)  # issued anew at once
        except (VaultError, IssuerNotReady) as err:
            log.warning(
                "could not check a credential's copy in Vault",
                extra={
                    "namespace": identity.namespace,
                    "identity": identity.name,
                    "credential": cred.name,
                    "error": str(err),
                },
            )
        return now + self.check_interval

    async def _check(
        self,
        identity: MachineIdentity,
        cred: Credential,
        stored: Mapping[str, Any] | None,
        issued: Issued,
    ) -> None:
        assert cred.kv is not None
        client = await self._client(identity)
        path = kv_path(identity.namespace, cred.kv)
        found = drift(await client.kv_metadata(cred.kv.mount, path), identity.uid, issued)
        if found is None:
            return
        what, restorable = found
        if not restorable:
            self._owned.discard((identity.uid, cred.name))  # someone else's now: ask again
        where = f"{cred.kv.mount}/data/{path}"
        extra = {
            "namespace": identity.namespace,
            "identity": identity.name,
            "credential": cred.name,
            "kv_path": where,
            "drift": what,
        }
        if restorable and cred.kv.vault_only:
            # No Secret to restore from: a new value is issued (and written) at once.
            self._changed.add((identity.uid, cred.name))
            log.warning("a credential's copy in Vault changed; issuing it anew", extra=extra)
            return
        data = (
            await self._secret_data(identity, cred, stored)
            if restorable and stored is not None
            else None
        )
        if data is None:
            log.warning("left a changed credential copy in Vault as it is", extra=extra)
            return
        await self.write(identity, cred, data, issued)
        log.warning("restored credential in Vault", extra=extra)

    async def _secret_data(
        self, identity: MachineIdentity, cred: Credential, stored: Mapping[str, Any]
    ) -> dict[str, bytes] | None:
        """The value in the identity's own Secret (never a namesake that replaced it)."""
        if self.api is None:
            return None
        secret = await self.api.get("Secret", identity.namespace, cred.secret_name)
        if secret is None or uid_of(secret) != uid_of(stored):
            return None
        data = secret.get("data") or {}
        return {k: base64.b64decode(v) for k, v in data.items()} or None

    async def destroy(self, identity: MachineIdentity, cred: Credential) -> str | None:
        """Every version and the metadata of the credential's path, if the identity's; the
        path destroyed, or None."""
        assert cred.kv is not None
        client = await self._client(identity)
        path = kv_path(identity.namespace, cred.kv)
        try:
            if not await self._check_owner(client, identity, cred.kv.mount, path):
                return None
        except VaultPathTaken as err:
            log.warning(
                "left a Vault path that is not the identity's",
                extra={
                    "namespace": identity.namespace,
                    "identity": identity.name,
                    "credential": cred.name,
                    "error": err.message,
                },
            )
            return None
        await client.kv_destroy(cred.kv.mount, path)
        key = (identity.uid, cred.name)
        self._checked.pop(key, None)
        self._state.pop(key, None)
        self._changed.discard(key)
        self._owned.discard(key)
        where = f"{cred.kv.mount}/data/{path}"
        log.info(
            "destroyed credential in Vault",
            extra={
                "namespace": identity.namespace,
                "identity": identity.name,
                "credential": cred.name,
                "kv_path": where,
            },
        )
        return where
