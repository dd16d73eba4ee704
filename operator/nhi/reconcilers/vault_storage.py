"""Copies of an identity's credentials in Vault's KV v2 (``spec.vault``; ``store: Both``).

Each issuance writes a new version at the credential's path, with custom metadata naming
the identity (its UID proves whose the path is), its owner, the credential, the value's
not-after, serial or fingerprint and rotation count, never a value. A path whose metadata
names another identity, or that holds data the operator did not write, is never written nor
destroyed: the credential is refused with a message naming the path. Revocation and deletion
destroy every version and the metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nhi.models.duration import rfc3339
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import Issued
from nhi.models.vault_storage import kv_path
from nhi.reconcilers.issuers import IssuerService
from nhi.vault import VaultClient, VaultError, VaultReason

log = logging.getLogger("nhi.reconcilers.credentials")

#: The custom metadata key that says which identity a path belongs to.
OWNER_UID = "nhi.dev/identity-uid"


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


class KVStore:
    def __init__(self, issuers: IssuerService) -> None:
        self.issuers = issuers

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
        await self._check_owner(client, identity, cred.kv.mount, path)
        metadata = {
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
        version = await client.kv_write(cred.kv.mount, path, values, metadata)
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
