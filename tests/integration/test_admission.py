"""Invalid MachineIdentities are rejected by the API server with a message naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration

INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))


def expectation(path: Path) -> str:
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1).strip()


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_identity_is_rejected_naming_the_field(crds: Cluster, path: Path) -> None:
    proc = crds.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert expectation(path) in proc.stderr, proc.stderr


def test_samples_are_accepted(crds: Cluster) -> None:
    proc = crds.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-R",
        "-f",
        str(ROOT / "manifests" / "samples"),
        check=False,
    )
    # The namespace does not exist yet in a dry run, so namespaced samples may fail on that
    # alone; everything else must be accepted.
    errors = [
        line
        for line in proc.stderr.splitlines()
        if line and 'namespaces "shop" not found' not in line
    ]
    assert not errors, proc.stderr


def test_service_account_name_is_immutable(crds: Cluster, namespace: str) -> None:
    body = f"""
apiVersion: nhi.dev/v1alpha1
kind: MachineIdentity
metadata: {{name: fixed, namespace: {namespace}}}
spec:
  owner: team-a
  serviceAccount: {{name: first}}
"""
    crds.kubectl("apply", "--server-side", "-f", "-", input=body)
    proc = crds.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        check=False,
        input=body.replace("name: first", "name: second"),
    )
    assert proc.returncode != 0
    assert "serviceAccount.name" in proc.stderr and "immutable" in proc.stderr
