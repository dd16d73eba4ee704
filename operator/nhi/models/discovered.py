"""What the inventory makes of the discovered objects: identities (ServiceAccounts) with
their workloads, grants, tokens, state and owner. Built by :mod:`nhi.policies.inventory`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nhi.models.inventory import ObjectRef, TokenSecretInfo, WorkloadInfo
from nhi.models.inventory_rbac import Rule

State = Literal["managed", "system", "unmanaged"]
STATES: tuple[State, ...] = ("managed", "system", "unmanaged")
UNKNOWN = "unknown"
SaKey = tuple[str, str]


@dataclass(frozen=True)
class Grant:
    """Permissions one binding gives an identity: ``rules`` in ``namespace`` ("": the
    whole cluster), by ``binding`` to ``role``; ``group`` when by a group subject."""

    binding: ObjectRef
    role: ObjectRef
    namespace: str
    rules: tuple[Rule, ...]
    role_found: bool = True
    group: str = ""


@dataclass(frozen=True)
class Identity:
    namespace: str
    name: str
    uid: str
    created: dt.datetime | None
    state: State
    owner: str
    owner_source: str
    labels: Mapping[str, str]
    automount: bool | None
    managed_by: ObjectRef | None = None
    workloads: tuple[WorkloadInfo, ...] = ()
    grants: tuple[Grant, ...] = ()
    tokens: tuple[TokenSecretInfo, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("ServiceAccount", self.namespace, self.name)

    @property
    def key(self) -> SaKey:
        return (self.namespace, self.name)

    @property
    def direct_grants(self) -> tuple[Grant, ...]:
        return tuple(g for g in self.grants if not g.group)

    def permissions(self) -> list[tuple[str, Rule]]:
        """Every rule it holds, with where it applies ("": cluster-wide)."""
        return [(g.namespace, r) for g in self.grants for r in g.rules]
