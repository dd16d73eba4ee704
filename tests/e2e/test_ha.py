"""High availability: two peered operators, the active one killed mid-batch, the other finishes.

The failover time (kill -9 of the active replica until every identity of the batch is Ready)
is printed and written to ``bench/ha-failover.json`` when NHI_RECORD_HA is set, for
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Cluster, OperatorProcess, start_operator, wait_for
from tests.e2e.test_packaging import session_operator_paused

pytestmark = pytest.mark.e2e

BATCH = 200
PEERING = "nhi-ha-test"


def identities(namespace: str) -> str:
    docs = []
    for i in range(BATCH):
        docs.append(
            {
                "apiVersion": "nhi.dev/v1alpha1",
                "kind": "MachineIdentity",
                "metadata": {"name": f"ha-{i:03d}", "namespace": namespace},
                "spec": {
                    "owner": "team-ha",
                    "permissions": {
                        "rules": [
                            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
                        ]
                    },
                    "credentials": [
                        {"name": "api", "type": "ServiceAccountToken", "ttl": "1h"},
                        {"name": "key", "type": "StaticSecret", "ttl": "24h"},
                    ],
                },
            }
        )
    return yaml.safe_dump_all(docs)


def ready_names(cluster: Cluster, namespace: str) -> set[str]:
    out = cluster.kubectl("get", "machineidentities", "-n", namespace, "-o", "json")
    names = set()
    for item in json.loads(out.stdout)["items"]:
        for c in (item.get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True":
                names.add(item["metadata"]["name"])
    return names


def secrets(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "secrets", "-n", namespace, "-o", "json", "-l", "nhi.dev/credential"
    )
    return list(json.loads(out.stdout)["items"])


def test_standby_takes_over_mid_batch_without_loss_or_duplicates(
    crds: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = crds
    # Namespace-restricted operators peer through a namespaced KopfPeering.
    crd = ROOT / "charts" / "nhi-operator" / "crds" / "kopf.dev_kopfpeerings.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev"
    )
    cluster.apply(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": PEERING, "namespace": namespace},
        }
    )
    common = ("--peering", f"--peering-name={PEERING}", f"--namespace={namespace}")
    with session_operator_paused():
        active = start_operator(cluster, tmp_path / "active.log", *common, "--peering-priority=200")
        standby: OperatorProcess | None = None
        try:
            standby = start_operator(
                cluster, tmp_path / "standby.log", *common, "--peering-priority=100"
            )
            # Both replicas register in the peering object; the lower priority stands by.
            wait_for(
                lambda: (
                    len((cluster.get("kopfpeering", PEERING, namespace) or {}).get("status") or {})
                    >= 2
                ),
                timeout=30,
                message="both replicas in the peering object",
            )
            # Applied in the background: the active replica keeps pace with the apply, so the
            # kill lands while identities are still arriving and the standby has work left.
            kubectl = [cluster.tool("kubectl"), f"--kubeconfig={cluster.kubeconfig}"]
            applying = subprocess.Popen(
                [*kubectl, "apply", "--server-side", "-f", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert applying.stdin is not None
            applying.stdin.write(identities(namespace))
            applying.stdin.close()
            wait_for(
                lambda: len(ready_names(cluster, namespace)) >= 5,
                timeout=60,
                interval=0.05,
                message="the first identities of the batch to be Ready",
            )
            before = len(ready_names(cluster, namespace))
            killed_at = time.monotonic()
            os.killpg(active.proc.pid, signal.SIGKILL)
            active.proc.wait(timeout=10)
            assert before < BATCH, "the batch finished before the kill; make it larger"
            assert applying.wait(timeout=120) == 0, applying.stderr and applying.stderr.read()

            wait_for(
                lambda: len(ready_names(cluster, namespace)) == BATCH,
                timeout=120,
                interval=0.5,
                message="the standby to finish the batch",
            )
            failover = time.monotonic() - killed_at
            assert "Resuming operations" in standby.log()
            resumed = standby.log().count("Resuming operations")
            assert resumed == 1, "the standby resumed exactly once, after the kill"
        finally:
            active.stop()
            if standby is not None:
                standby.stop()

    # Nothing lost: every identity Ready with both credentials; nothing duplicated: one Secret
    # per credential, every value issued once (no rotation), distinct fingerprints.
    found = secrets(cluster, namespace)
    assert len(found) == 2 * BATCH
    fingerprints = [s["metadata"]["annotations"]["nhi.dev/fingerprint"] for s in found]
    assert len(set(fingerprints)) == len(fingerprints)
    assert all(s["metadata"]["annotations"]["nhi.dev/rotation-count"] == "0" for s in found)
    result = {
        "batch": BATCH,
        "ready_before_kill": before,
        "failover_seconds": round(failover, 2),
        "peering_lifetime": 20,
    }
    print(f"HA failover: {json.dumps(result)}")
    if os.environ.get("NHI_RECORD_HA"):
        (ROOT / "bench" / "ha-failover.json").write_text(json.dumps(result, indent=2) + "\n")
