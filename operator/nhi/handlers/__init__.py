"""kopf handlers. Importing this package registers them all."""

from __future__ import annotations

from nhi.handlers import identity, lifecycle

__all__ = ["identity", "lifecycle"]
