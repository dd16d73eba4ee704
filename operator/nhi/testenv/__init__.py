"""A real, local Kubernetes control plane for development and tests.

Starts etcd, kube-apiserver and kube-controller-manager (built by
``hack/build-controlplane.sh``) on loopback with random free ports and a
temporary data directory, writes an admin kubeconfig, waits for ``/readyz``
and stops everything cleanly.

Only the standard library and ``cryptography`` are used, so this module can
run before anything else of the operator is importable.
"""

from __future__ import annotations

from nhi.testenv.controlplane import ControlPlane, ControlPlaneError, build_binaries

__all__ = ["ControlPlane", "ControlPlaneError", "build_binaries"]
