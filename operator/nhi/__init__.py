"""nhi-operator: declarative lifecycle of non-human identities on Kubernetes."""

from __future__ import annotations

from importlib import metadata

GROUP = "nhi.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = "nhi.dev/finalizer"
#: Held by every MachineIdentity until the operator has removed what it made for it.
IDENTITY_FINALIZER = "nhi.dev/cleanup"
FIELD_MANAGER = "nhi-operator"

try:
    __version__ = metadata.version("nhi-operator")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"
