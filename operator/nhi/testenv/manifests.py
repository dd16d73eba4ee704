"""What the local control plane installs from the repository: the CRDs (and the PolicyReport
CRDs the inventory writes, when the cluster has none), and the admission policies the chart
installs by default (the finalizer, authority and AccessGrant policies).

Each install waits until the API server acts on what was applied. ``kubectl`` is
:meth:`ControlPlane.kubectl <nhi.testenv.controlplane.ControlPlane.kubectl>`.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Protocol

import yaml

from nhi import API_VERSION, IDENTITY_FINALIZER
from nhi.models.meta import ADOPT_ANNOTATION
from nhi.testenv.errors import ControlPlaneError

#: The repository root when running from a checkout (``operator/nhi/testenv/..``).
REPO_ROOT = Path(__file__).resolve().parents[3]


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


def authority_policy(name: str = "") -> str:
    """manifests/base/authoritypolicy.yaml (as JSON), its objects renamed to ``name``."""
    docs = [
        d
        for d in yaml.safe_load_all(
            (REPO_ROOT / "manifests" / "base" / "authoritypolicy.yaml").read_text()
        )
        if d
    ]
    if name:
        for doc in docs:
            doc["metadata"]["name"] = name
            if doc["kind"].endswith("Binding"):
                doc["spec"]["policyName"] = name
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def grant_policies(prefix: str = "") -> str:
    """manifests/base/accessgrantpolicy.yaml (as JSON), ``nhi-operator-`` in its objects'
    names replaced by ``prefix`` (the tests install them beside a Helm release's)."""
    docs = [
        d
        for d in yaml.safe_load_all(
            (REPO_ROOT / "manifests" / "base" / "accessgrantpolicy.yaml").read_text()
        )
        if d
    ]
    if prefix:
        for doc in docs:
            doc["metadata"]["name"] = doc["metadata"]["name"].replace("nhi-operator-", prefix)
            if doc["kind"].endswith("Binding"):
                doc["spec"]["policyName"] = doc["spec"]["policyName"].replace(
                    "nhi-operator-", prefix
                )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def install_grant_policies(kubectl: Kubectl, timeout: float = 60.0, prefix: str = "") -> float:
    """Apply the AccessGrant admission policies and wait until the API server enforces them
    (a server-side dry run comes back with ``spec.requester`` recorded). Returns the seconds
    waited."""
    kubectl("apply", "--server-side", "-f", "-", input=grant_policies(prefix))
    probe = json.dumps(
        {
            "apiVersion": API_VERSION,
            "kind": "AccessGrant",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {
                "identityRef": {"name": "probe"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
                "duration": "1m",
                "reason": "probe",
            },
        }
    )
    started = time.monotonic()
    while True:
        proc = kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=probe, check=False
        )
        if proc.returncode == 0 and json.loads(proc.stdout)["spec"].get("requester"):
            return time.monotonic() - started
        # For a moment the validating policy may answer before the mutating one records
        # the requester: that refusal is one more reason to ask again.
        waiting = ("ServiceUnavailable" in proc.stderr) or (
            "spec.requester: must be" in proc.stderr
        )
        if proc.returncode != 0 and not waiting:
            raise ControlPlaneError(f"probing the AccessGrant policies: {proc.stderr.strip()}")
        if time.monotonic() - started > timeout:
            raise ControlPlaneError(
                f"the AccessGrant policies did not answer within {timeout:.0f}s"
            )
        time.sleep(0.2)


def install_crds(kubectl: Kubectl) -> None:
    """Apply the repository's CRDs (server-side) and wait until they are Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=nhi-operator",
    )


#: The report CRDs installed when the cluster lacks one (hack/crds): the policy working
#: group's and OpenReports'.
REPORT_CRDS = (
    "policyreports.wgpolicyk8s.io",
    "clusterpolicyreports.wgpolicyk8s.io",
    "reports.openreports.io",
    "clusterreports.openreports.io",
)


def install_report_crds(kubectl: Kubectl) -> bool:
    """Install the report CRDs (wgpolicyk8s.io/v1alpha2, openreports.io/v1alpha1) from
    hack/crds unless the cluster has them; wait until they are Established. Returns whether
    they were installed here."""
    have = kubectl("get", "crd", *REPORT_CRDS, "-o", "name", check=False)
    if have.returncode == 0 and len(have.stdout.split()) == len(REPORT_CRDS):
        return False
    kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "hack" / "crds"))
    # Right after the apply a CRD may have no status yet, and kubectl wait then fails at once
    # ("<nil> is of the type <nil>") instead of waiting: ask again until it answers.
    deadline = time.monotonic() + 60
    while True:
        proc = kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=10s",
            "crd",
            *REPORT_CRDS,
            check=False,
        )
        if proc.returncode == 0:
            return True
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"the report CRDs were not Established: {proc.stderr}")
        time.sleep(0.5)


def install_authority_policy(kubectl: Kubectl, timeout: float = 60.0, name: str = "") -> float:
    """Apply manifests/base/authoritypolicy.yaml and wait until the API server enforces it.

    ``name`` renames the policy and its binding (the tests install it beside a Helm
    release that brings its own). Like the finalizer policy, it answers 503 for a few
    seconds after the CRDs are Established; a server-side dry run that asks for an
    adoption is repeated until it is admitted (the admin may adopt). Returns the seconds
    waited.
    """
    kubectl("apply", "--server-side", "-f", "-", input=authority_policy(name))
    probe = json.dumps(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineIdentity",
            "metadata": {
                "name": "adoption-probe",
                "namespace": "default",
                "annotations": {ADOPT_ANNOTATION: "true"},
            },
            "spec": {"owner": "nhi-operator"},
        }
    )
    started = time.monotonic()
    while True:
        proc = kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
        if proc.returncode == 0:
            return time.monotonic() - started
        if "ServiceUnavailable" not in proc.stderr:
            raise ControlPlaneError(f"probing the authority policy: {proc.stderr.strip()}")
        if time.monotonic() - started > timeout:
            raise ControlPlaneError(f"the authority policy did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def install_finalizer_policy(kubectl: Kubectl, timeout: float = 60.0) -> float:
    """Apply manifests/base/admissionpolicy.yaml and wait until it admits MachineIdentities.

    Until a CRD's schema has reached the API server's type converter, a few seconds after
    the CRD is Established, every create that a MutatingAdmissionPolicy matches is answered
    503 ("There can be a delay between when CustomResourceDefinitions are created and when
    they are available"), whatever the policy's failurePolicy. A server-side dry run is
    repeated until the policy's finalizer comes back on it. Returns the seconds waited.
    """
    kubectl(
        "apply",
        "--server-side",
        "-f",
        str(REPO_ROOT / "manifests" / "base" / "admissionpolicy.yaml"),
    )
    probe = json.dumps(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineIdentity",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {"owner": "nhi-operator"},
        }
    )
    started = time.monotonic()
    while True:
        proc = kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=probe, check=False
        )
        if proc.returncode == 0:
            finalizers = json.loads(proc.stdout)["metadata"].get("finalizers") or []
            if IDENTITY_FINALIZER in finalizers:
                return time.monotonic() - started
        elif "ServiceUnavailable" not in proc.stderr:
            raise ControlPlaneError(f"probing the finalizer policy: {proc.stderr.strip()}")
        if time.monotonic() - started > timeout:
            raise ControlPlaneError(
                f"the finalizer policy did not admit a MachineIdentity within {timeout:.0f}s"
            )
        time.sleep(0.2)
