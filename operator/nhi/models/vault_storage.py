"""Where a MachineIdentity keeps copies of its credentials in Vault's KV v2 (``spec.vault``).

``spec.vault.issuerRef`` names an issuer with a ``vault`` source: its server and login are
used. Every credential is kept at ``<mount>/data/nhi/<namespace>/<path>``: the identity's
namespace is always the first segment under ``nhi/``, so no identity can name a path of
another namespace; ``path`` defaults to ``<identity>/<credential>`` (``spec.vault.kv.path``
replaces ``<identity>``; a credential's own ``vault.kv.path`` replaces the whole of it).
``store`` (``spec.vault.store``, or a credential's ``vault.store``): ``Both`` (the default: the
Secret and the copy) or ``VaultOnly`` (no Secret at all).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.fields import SpecError, as_duration, as_list, as_object

KV_ROOT = "nhi"
DEFAULT_KV_MOUNT = "secret"
MIN_TOKEN_TTL = dt.timedelta(minutes=5)
MAX_TOKEN_TTL = dt.timedelta(hours=24)
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_SEGMENTS = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


BOTH = "Both"
VAULT_ONLY = "VaultOnly"
STORES = (BOTH, VAULT_ONLY)


@dataclass(frozen=True)
class KVLocation:
    mount: str
    path: str  # relative to nhi/<namespace>/
    store: str = BOTH

    @property
    def vault_only(self) -> bool:
        return self.store == VAULT_ONLY


@dataclass(frozen=True)
class VaultAccess:
    """``spec.vault.access``: a Kubernetes-auth role for the identity's ServiceAccount."""

    mount: str = "kubernetes"
    token_ttl: int = 3600  # seconds
    #: Named Vault policies added to the role: only those an IdentityPolicy allows.
    policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class VaultStorage:
    issuer_kind: str
    issuer_name: str
    kv: KVLocation  # the identity's defaults (its path is the credentials' parent)
    access: VaultAccess | None = None


def kv_path(namespace: str, location: KVLocation) -> str:
    """The path under the mount (without ``data/``): ``nhi/<namespace>/<path>``."""
    return f"{KV_ROOT}/{namespace}/{location.path}"


def _path(value: Any, path: str, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > 200 or not _SEGMENTS.match(value):
        raise SpecError(
            path,
            "must be a relative path of segments of letters, digits, '_', '.' and '-' "
            "separated by '/', at most 200 characters",
        )
    if any(part in (".", "..") for part in value.split("/")):
        raise SpecError(path, "must not contain '.' or '..' segments")
    return value


def _mount(value: Any, path: str, default: str) -> str:
    return _path(value, path, default)


def _policy_names(raw: Any) -> tuple[str, ...]:
    path = "spec.vault.access.policies"
    names = as_list(raw, path)
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or len(name) > 128 or not _POLICY_NAME.match(name):
            raise SpecError(f"{path}[{i}]", "must be a Vault policy name: letters, digits, '_.-'")
        if name == "root" or name.startswith("nhi."):
            raise SpecError(
                f"{path}[{i}]", "must not be root nor an nhi.* policy (the operator's own)"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def _store(value: Any, path: str, default: str) -> str:
    if value is None:
        return default
    if value not in STORES:
        raise SpecError(path, f"must be one of {', '.join(STORES)}")
    return str(value)


def parse_vault_storage(raw: Any, identity: str) -> VaultStorage | None:
    """``spec.vault`` (None when absent)."""
    if raw is None:
        return None
    spec = as_object(raw, "spec.vault")
    ref = as_object(spec.get("issuerRef"), "spec.vault.issuerRef")
    kind = ref.get("kind", "ClusterIdentityIssuer")
    if kind not in ("IdentityIssuer", "ClusterIdentityIssuer"):
        raise SpecError(
            "spec.vault.issuerRef.kind", "must be IdentityIssuer or ClusterIdentityIssuer"
        )
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("spec.vault.issuerRef.name", "is required")
    kv = as_object(spec.get("kv") or {}, "spec.vault.kv")
    access = None
    if spec.get("access") is not None:
        raw_access = as_object(spec.get("access"), "spec.vault.access")
        ttl = (
            as_duration(raw_access["tokenTTL"], "spec.vault.access.tokenTTL")
            if "tokenTTL" in raw_access
            else dt.timedelta(hours=1)
        )
        if not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
            raise SpecError("spec.vault.access.tokenTTL", "must be between 5m and 24h")
        access = VaultAccess(
            mount=_mount(raw_access.get("mountPath"), "spec.vault.access.mountPath", "kubernetes"),
            token_ttl=int(ttl.total_seconds()),
            policies=_policy_names(raw_access.get("policies")),
        )
    return VaultStorage(
        issuer_kind=str(kind),
        issuer_name=name,
        kv=KVLocation(
            mount=_mount(kv.get("mount"), "spec.vault.kv.mount", DEFAULT_KV_MOUNT),
            path=_path(kv.get("path"), "spec.vault.kv.path", identity),
            store=_store(spec.get("store"), "spec.vault.store", BOTH),
        ),
        access=access,
    )


def credential_location(
    raw: Mapping[str, Any], path: str, storage: VaultStorage | None, credential: str
) -> KVLocation | None:
    """Where credential ``credential`` is kept in KV, from its own ``vault`` and the
    identity's ``spec.vault`` (None: not kept in Vault)."""
    own = raw.get("vault")
    if own is None:
        if storage is None:
            return None
        return KVLocation(storage.kv.mount, f"{storage.kv.path}/{credential}", storage.kv.store)
    if storage is None:
        raise SpecError(f"{path}.vault", "needs spec.vault (the issuer whose Vault keeps it)")
    vault = as_object(own, f"{path}.vault")
    kv = as_object(vault.get("kv") or {}, f"{path}.vault.kv")
    return KVLocation(
        mount=_mount(kv.get("mount"), f"{path}.vault.kv.mount", storage.kv.mount),
        path=_path(kv.get("path"), f"{path}.vault.kv.path", f"{storage.kv.path}/{credential}"),
        store=_store(vault.get("store"), f"{path}.vault.store", storage.kv.store),
    )
