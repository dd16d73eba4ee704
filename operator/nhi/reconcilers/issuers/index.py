"""Where issuer bodies come from: kopf's indexes once a handler passed them, else the API.

kopf passes every index to every handler; the issuer handlers (and the admission webhook)
hand them over with :meth:`IssuerIndex.capture`. Until then, a body is read from the API
server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nhi.k8s.client import Api
from nhi.models.issuer import CLUSTER_ISSUER_KIND, ISSUER_KIND, IssuerKey

#: kopf index ids (the handlers register them; :meth:`IssuerIndex.capture` picks them up).
ISSUER_INDEX = "nhi_identityissuers"
CLUSTER_ISSUER_INDEX = "nhi_clusteridentityissuers"
INDEX_OF_KIND = {ISSUER_KIND: ISSUER_INDEX, CLUSTER_ISSUER_KIND: CLUSTER_ISSUER_INDEX}


class IssuerIndex:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.indexes: dict[str, Mapping[Any, Any]] = {}

    def capture(self, kwargs: Mapping[str, Any]) -> None:
        """Keep the kopf indexes of issuers (kopf passes every index to every handler)."""
        for name in (ISSUER_INDEX, CLUSTER_ISSUER_INDEX):
            if name not in self.indexes and name in kwargs:
                self.indexes[name] = kwargs[name]

    def indexed(self, key: IssuerKey) -> tuple[bool, Mapping[str, Any] | None]:
        """(whether the kopf index is known, the issuer's body from it or None)."""
        idx = self.indexes.get(INDEX_OF_KIND.get(key[0], ""))
        if idx is None:
            return False, None
        try:
            values = list(idx[key])
        except KeyError:
            return True, None
        return True, (values[0] if values else None)

    def absent(self, key: IssuerKey) -> bool:
        """True when the index says the issuer does not exist."""
        return self.indexed(key) == (True, None)

    async def fetch(self, key: IssuerKey) -> Mapping[str, Any] | None:
        """The issuer's body: from the index, or from the API server before it is known."""
        indexed, body = self.indexed(key)
        if indexed:
            return body
        kind, namespace, name = key
        got = await self.api.get(kind, namespace or None, name)
        if got is not None:
            got.setdefault("kind", kind)
        return got
