"""kopf entry points and the operator's wiring. Importing this package registers the handlers.

kopf entry points: :mod:`~nhi.handlers.lifecycle` (start-up, shut-down),
:mod:`~nhi.handlers.issuer` (the issuers' events), :mod:`~nhi.handlers.admission` (the
validating webhook). Wiring: :mod:`~nhi.handlers.runtime` composes the controllers of
:mod:`nhi.runtime` with the reconcilers; :mod:`~nhi.handlers.identity_cache` and
:mod:`~nhi.handlers.entries` are what the MachineIdentity controller keeps of its watch
caches; :mod:`~nhi.handlers.policy_status` drives the IdentityPolicy status.
"""

from __future__ import annotations

from nhi.handlers import admission as admission
from nhi.handlers import issuer, lifecycle

__all__ = ["issuer", "lifecycle"]
