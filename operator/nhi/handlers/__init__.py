"""kopf handlers. Importing this package registers them all."""

from __future__ import annotations

from nhi.handlers import identity, lifecycle
from nhi.handlers import issuer as issuer

__all__ = ["identity", "lifecycle"]
