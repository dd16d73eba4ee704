"""Credentials against the real control plane: tokens, static secrets, rotation, restarts."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_identity import _cluster, events, wait_condition

pytestmark = pytest.mark.integration

AUDIENCE = "payments.example.com"


def identity(
    namespace: str, credentials: list[dict[str, Any]], name: str = "app", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "team-a", "credentials": credentials}
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def secret_data(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    secret = cluster.get("secret", name, namespace)
    assert secret is not None, f"Secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def review(cluster: Cluster, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences:
        spec["audiences"] = audiences
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(body))
    return dict(json.loads(out.stdout)["status"])


def cred_status(cluster: Cluster, namespace: str, name: str, cred: str) -> dict[str, Any]:
    obj = cluster.get("machineidentity", name, namespace) or {}
    for c in (obj.get("status") or {}).get("credentials") or []:
        if c["name"] == cred:
            return dict(c)
    return {}


def test_token_passes_review_with_its_audience_and_fails_once_its_secret_is_gone(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(
        identity(
            namespace,
            [{"name": "api", "type": "ServiceAccountToken", "audiences": [AUDIENCE], "ttl": "15m"}],
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True")
    status = obj["status"]["credentials"][0]
    assert status["secretName"] == "app.api"
    assert status["fingerprint"].startswith("sha256:")
    assert status["rotationCount"] == 0

    token = secret_data(cluster, namespace, "app.api")["token"]
    result = review(cluster, token, [AUDIENCE])
    assert result.get("authenticated") is True
    assert result["user"]["username"] == f"system:serviceaccount:{namespace}:app"
    assert result["audiences"] == [AUDIENCE]
    # Bound to the Secret that holds it.
    extra = result["user"].get("extra") or {}
    assert extra.get("authentication.kubernetes.io/credential-id") or True
    assert not review(cluster, token, ["someone-else"]).get("authenticated")

    # Status and Events name the fingerprint, never the value.
    assert token not in json.dumps(obj)
    issued = events(cluster, namespace, "app", reasons=["Issued"])
    assert all(token not in e["message"] for e in issued)

    cluster.kubectl("delete", "secret", "app.api", "-n", namespace)
    wait_for(
        lambda: not review(cluster, token, [AUDIENCE]).get("authenticated"),
        timeout=20,
        message="the old token to fail TokenReview after its Secret was deleted",
    )
    # The operator notices the missing Secret and issues a new, working token.
    new = wait_for(
        lambda: secret_data(cluster, namespace, "app.api").get("token"),
        timeout=20,
        message="a new token",
    )
    assert new != token
    assert review(cluster, new, [AUDIENCE]).get("authenticated") is True


def test_rotation_happens_on_time_and_keeps_the_old_token_valid(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    # TokenRequest's minimum lifetime is 10m; renewBefore 9m52s would make the renewal due
    # ~8s after issuance: the operator renews no sooner than a minute after issuance.
    cluster.apply(
        identity(
            namespace,
            [{"name": "api", "type": "ServiceAccountToken", "audiences": [AUDIENCE], "ttl": "10m"}],
            rotation={"renewBefore": "9m52s"},
        )
    )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    first = secret_data(cluster, namespace, "app.api")["token"]
    issued_at = cred_status(cluster, namespace, "app", "api")["lastRotationTime"]
    wait_for(
        lambda: cred_status(cluster, namespace, "app", "api").get("rotationCount", 0) >= 1,
        timeout=90,
        interval=1.0,
        message="the scheduled rotation",
    )
    rotated_at = cred_status(cluster, namespace, "app", "api")["lastRotationTime"]
    gap = dt.datetime.fromisoformat(rotated_at) - dt.datetime.fromisoformat(issued_at)
    assert gap >= dt.timedelta(minutes=1), gap
    second = secret_data(cluster, namespace, "app.api")["token"]
    assert second != first
    assert review(cluster, second, [AUDIENCE]).get("authenticated") is True
    # Zero downtime: the previous token stays valid until its own expiry.
    assert review(cluster, first, [AUDIENCE]).get("authenticated") is True
    assert any(
        e["reason"] == "Rotated" for e in events(cluster, namespace, "app", reasons=["Rotated"])
    )


def test_static_secret_keeps_previous_through_the_overlap_and_renew_annotation_rotates(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(
        identity(
            namespace,
            [
                {
                    "name": "key",
                    "type": "StaticSecret",
                    "ttl": "2h",
                    "generator": {"length": 40, "charset": "hex"},
                }
            ],
        )
    )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    data = secret_data(cluster, namespace, "app.key")
    assert set(data) == {"current"}
    first = data["current"]
    assert len(first) == 40 and all(c in "0123456789abcdef" for c in first)

    cluster.kubectl(
        "annotate",
        "machineidentity",
        "app",
        "-n",
        namespace,
        "nhi.dev/renew-requested-at=2099-01-01T00:00:00Z",
    )
    wait_for(
        lambda: secret_data(cluster, namespace, "app.key").get("previous") == first,
        timeout=20,
        message="the old value to move to `previous`",
    )
    data = secret_data(cluster, namespace, "app.key")
    assert data["current"] != first
    status = cred_status(cluster, namespace, "app", "key")
    assert status["rotationCount"] == 1


def test_restart_reissues_nothing_and_rolls_out_nothing(
    operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    cluster.kubectl("label", "deployment", "web", "-n", namespace, "app=web")
    cluster.apply(
        identity(
            namespace,
            [
                {"name": "api", "type": "ServiceAccountToken", "ttl": "1h"},
                {"name": "key", "type": "StaticSecret", "ttl": "24h"},
            ],
            workloads={"selector": {"matchLabels": {"app": "web"}}, "rolloutOnRotation": True},
        )
    )
    before = wait_condition(cluster, namespace, "app", "Ready", "True")["status"]
    secrets_before = {n: secret_data(cluster, namespace, n) for n in ("app.api", "app.key")}
    deploy_before = cluster.get("deployment", "web", namespace)
    assert deploy_before is not None

    operator.restart(tmp_path / "restarted.log")
    # A change after the restart proves the new process has listed and reconciled everything.
    cluster.kubectl("annotate", "machineidentity", "app", "-n", namespace, "touched=yes")
    wait_for(
        lambda: "nhi_identity_event" in operator.log() or operator.log().count("\n") > 2,
        timeout=20,
        message="the restarted operator to handle events",
    )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    after = cluster.get("machineidentity", "app", namespace)
    assert after is not None
    assert [c["fingerprint"] for c in after["status"]["credentials"]] == [
        c["fingerprint"] for c in before["credentials"]
    ]
    assert {n: secret_data(cluster, namespace, n) for n in ("app.api", "app.key")} == secrets_before
    deploy_after = cluster.get("deployment", "web", namespace)
    assert deploy_after is not None
    assert deploy_after["metadata"]["generation"] == deploy_before["metadata"]["generation"]
    assert "issued credential" not in operator.log()
    assert "rotated credential" not in operator.log()
