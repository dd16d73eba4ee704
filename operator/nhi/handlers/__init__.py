"""kopf handlers. Importing this package registers them all."""

from __future__ import annotations

from nhi.handlers import admission as admission
from nhi.handlers import issuer, lifecycle

__all__ = ["issuer", "lifecycle"]
