"""Vault access for the workload (``spec.vault.access``): a policy and a Kubernetes-auth role.

The ACL policy ``nhi.<namespace>.<identity>`` grants read on exactly the identity's own KV
copies; the role of the same name (on the Kubernetes auth mount) is bound to the identity's
ServiceAccount and namespace, with that policy and the token TTL. The policy starts with a
header naming the identity's UID, which proves it is the operator's for this identity: a
policy or role of that name made by anyone else is never overwritten nor deleted.

Revocation and deletion delete the role and the policy, and the Vault entity of the
ServiceAccount (its alias on the auth mount is the ServiceAccount's UID): every Vault token
already issued through the role is refused from then on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from nhi.models.identity import MachineIdentity
from nhi.models.vault_storage import kv_path
from nhi.reconcilers.issuers import IssuerService
from nhi.vault import VaultClient, VaultError, VaultReason

log = logging.getLogger("nhi.reconcilers.identity")


def access_name(identity: MachineIdentity) -> str:
    """The policy's and the role's name."""
    # A namespace has no dot, so no two identities share a name.
    return f"nhi.{identity.namespace}.{identity.name}"


def header(identity: MachineIdentity) -> str:
    return f"# nhi-operator: MachineIdentity {identity.namespace}/{identity.name} {identity.uid}"


def policy_hcl(identity: MachineIdentity) -> str:
    """Read on exactly the identity's own KV copies (nothing else)."""
    lines = [header(identity)]
    for cred in identity.spec.credentials:
        if cred.kv is None:
            continue
        path = f"{cred.kv.mount}/data/{kv_path(identity.namespace, cred.kv)}"
        lines.append(f'path "{path}" {{\n  capabilities = ["read"]\n}}')
    return "\n".join(lines) + "\n"


def role_body(
    identity: MachineIdentity, policy: str, ttl: int, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The role; ``extra``: named policies an IdentityPolicy allows (checked before)."""
    return {
        "bound_service_account_names": [identity.spec.service_account],
        "bound_service_account_namespaces": [identity.namespace],
        "token_policies": [policy, *extra],
        "token_ttl": ttl,
        "token_max_ttl": ttl,
    }


def _ours(role: Mapping[str, Any] | None, identity: MachineIdentity, policy: str) -> bool:
    """A role the operator wrote for this identity (bound to its namespace, with its
    policy), or none."""
    if role is None:
        return True
    data = role.get("data") or {}
    policies = list(data.get("token_policies") or [])
    namespaces = list(data.get("bound_service_account_namespaces") or [])
    return namespaces == [identity.namespace] and policies[:1] == [policy]


class VaultAccessTaken(VaultError):
    def __init__(self, address: str, what: str) -> None:
        super().__init__(
            address,
            f"write {what}",
            None,
            "it exists and was not written by the operator for this identity; it is left as it is",
            reason=VaultReason.REJECTED,
        )


class VaultAccess:
    def __init__(self, issuers: IssuerService) -> None:
        self.issuers = issuers
        self._applied: dict[str, str] = {}  # identity UID -> digest of what was written

    async def _client(self, identity: MachineIdentity) -> VaultClient:
        storage = identity.spec.vault
        assert storage is not None
        return await self.issuers.vault_client(
            storage.issuer_kind, storage.issuer_name, identity.namespace
        )

    async def ensure(self, identity: MachineIdentity) -> None:
        """The identity's policy and role as the spec says (written only when changed)."""
        storage = identity.spec.vault
        if storage is None or storage.access is None:
            return
        access = storage.access
        name = access_name(identity)
        hcl = policy_hcl(identity)
        role = role_body(identity, name, access.token_ttl, access.policies)
        digest = hashlib.sha256(repr((hcl, sorted(role.items()), access.mount)).encode())
        if self._applied.get(identity.uid) == digest.hexdigest():
            return
        client = await self._client(identity)
        existing = await client.request("GET", f"sys/policies/acl/{name}")
        text = str(((existing or {}).get("data") or {}).get("policy") or "")
        if existing is not None and not text.startswith(header(identity)):
            raise VaultAccessTaken(client.address, f"policy {name}")
        current = await client.request("GET", f"auth/{access.mount}/role/{name}")
        if not _ours(current, identity, name):
            raise VaultAccessTaken(client.address, f"role auth/{access.mount}/role/{name}")
        await client.request("PUT", f"sys/policies/acl/{name}", {"policy": hcl})
        await client.request("POST", f"auth/{access.mount}/role/{name}", role)
        self._applied[identity.uid] = digest.hexdigest()
        log.info(
            "wrote Vault access",
            extra={
                "namespace": identity.namespace,
                "identity": identity.name,
                "policy": name,
                "role": f"auth/{access.mount}/role/{name}",
            },
        )

    async def withdraw(
        self, identity: MachineIdentity, keep: tuple[str, ...], service_account_uid: str
    ) -> list[str]:
        """An IdentityPolicy no longer allows some named policies of the workload's role: the
        role keeps only its own policy and ``keep``, and the Vault tokens already issued
        through it (with the refused policies in them) are revoked with the ServiceAccount's
        entity; the workload logs in again. Returns the policies taken away."""
        storage = identity.spec.vault
        if storage is None or storage.access is None:
            return []
        mount = storage.access.mount
        client = await self._client(identity)
        name = access_name(identity)
        role = await client.request("GET", f"auth/{mount}/role/{name}")
        if role is None or not _ours(role, identity, name):
            return []
        held = list((role.get("data") or {}).get("token_policies") or [])[1:]
        refused = [p for p in held if p not in keep]
        if not refused:
            return []
        self._applied.pop(identity.uid, None)
        body = role_body(identity, name, storage.access.token_ttl, keep)
        await client.request("POST", f"auth/{mount}/role/{name}", body)
        await self._drop_entity(client, mount, service_account_uid)
        log.warning(
            "withdrew Vault policies an IdentityPolicy no longer allows",
            extra={"namespace": identity.namespace, "identity": identity.name,
                   "role": f"auth/{mount}/role/{name}", "withdrawn": refused},
        )  # fmt: skip
        return refused

    async def remove(self, identity: MachineIdentity, service_account_uid: str) -> list[str]:
        """Delete the identity's role, policy and the entity of its ServiceAccount; what was
        removed."""
        storage = identity.spec.vault
        if storage is None or storage.access is None:
            return []
        mount = storage.access.mount
        self._applied.pop(identity.uid, None)
        client = await self._client(identity)
        name = access_name(identity)
        removed = []
        role = await client.request("GET", f"auth/{mount}/role/{name}")
        if role is not None and _ours(role, identity, name):
            await client.request("DELETE", f"auth/{mount}/role/{name}")
            removed.append(f"role auth/{mount}/role/{name}")
        policy = await client.request("GET", f"sys/policies/acl/{name}")
        text = str(((policy or {}).get("data") or {}).get("policy") or "")
        if policy is not None and text.startswith(header(identity)):
            await client.request("DELETE", f"sys/policies/acl/{name}")
            removed.append(f"policy {name}")
        entity = await self._drop_entity(client, mount, service_account_uid)
        if entity:
            removed.append(f"entity {entity}")
        if removed:
            log.info(
                "removed Vault access",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "removed": removed},
            )  # fmt: skip
        return removed

    async def _drop_entity(self, client: VaultClient, mount: str, uid: str) -> str:
        """Delete the ServiceAccount's entity (its tokens stop working); its ID, or ""."""
        entity = await self._entity(client, mount, uid) if uid else ""
        if entity:
            await client.request("DELETE", f"identity/entity/id/{entity}")
        return entity

    async def _entity(self, client: VaultClient, mount: str, alias: str) -> str:
        """The entity whose alias on the auth mount is ``alias`` (the ServiceAccount's UID)."""
        mounts = await client.request("GET", "sys/auth") or {}
        table = mounts.get("data") if isinstance(mounts.get("data"), Mapping) else mounts
        accessor = str(((table or {}).get(f"{mount}/") or {}).get("accessor") or "")
        if not accessor:
            return ""
        found = await client.request(
            "POST",
            "identity/lookup/entity",
            {"alias_name": alias, "alias_mount_accessor": accessor},
        )
        return str(((found or {}).get("data") or {}).get("id") or "")
