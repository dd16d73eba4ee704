"""Where issuer bodies come from: the runtime's watch caches once listed, else the API.

The runtime lists and watches IdentityIssuers and ClusterIdentityIssuers like every other
kind (:class:`~nhi.runtime.informer.Informer`) and hands their informers over with
:meth:`IssuerIndex.watch`. Until an informer has its first listing, a body is read from the
API server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nhi.k8s.client import Api
from nhi.models.issuer import IssuerKey
from nhi.runtime.informer import Informer


class IssuerIndex:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.informers: dict[str, list[Informer]] = {}

    def watch(self, informers: Sequence[Informer]) -> None:
        """Read issuer bodies from these informers (one kind, one or more namespaces)."""
        for informer in informers:
            self.informers.setdefault(informer.kind, []).append(informer)

    def indexed(self, key: IssuerKey) -> tuple[bool, Mapping[str, Any] | None]:
        """(whether the watch caches of the issuer's kind are listed, its body or None)."""
        kind, namespace, name = key
        informers = self.informers.get(kind)
        if not informers or not all(i.synced.is_set() for i in informers):
            return False, None
        for informer in informers:
            body = informer.objects.get((namespace, name))
            if body is not None:
                return True, body
        return True, None

    def absent(self, key: IssuerKey) -> bool:
        """True when the listed watch caches say the issuer does not exist."""
        return self.indexed(key) == (True, None)

    async def fetch(self, key: IssuerKey) -> Mapping[str, Any] | None:
        """The issuer's body: from the watch caches, or from the API server before them."""
        indexed, body = self.indexed(key)
        if indexed:
            return body
        kind, namespace, name = key
        got = await self.api.get(kind, namespace or None, name)
        if got is not None:
            got.setdefault("kind", kind)
        return got
