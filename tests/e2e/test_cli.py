"""The ``nhi`` console script as a user runs it, against the real control plane and operator.

One identity holds the three credential types: a bound ServiceAccount token, a StaticSecret
and an X509 SVID from a self-signed ClusterIdentityIssuer created (and deleted) here. The
script is the installed console script, given ``--kubeconfig`` explicitly (``KUBECONFIG`` is
removed from its environment).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nhi.crypto import secret_fingerprint
from tests import conftest
from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

NHI = Path(sys.executable).parent / "nhi"
OPERATOR_NAMESPACE = "nhi-system"
AUDIENCE = "payments.example.com"
NAME = "payments"


@dataclass
class Env:
    cluster: Cluster
    namespace: str
    issuer: str


def run_nhi(
    cluster: Cluster, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [str(NHI), "--kubeconfig", str(kubeconfig or cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def ok(cluster: Cluster, *args: str, kubeconfig: Path | None = None) -> str:
    proc = run_nhi(cluster, *args, kubeconfig=kubeconfig)
    assert proc.returncode == 0, f"nhi {' '.join(args)}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def ready(obj: dict[str, Any] | None) -> bool:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return bool(c["status"] == "True")
    return False


def secret_data(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    secret = cluster.get("secret", name, namespace)
    assert secret is not None, f"Secret {name} missing"
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def rotation_counts(cluster: Cluster, namespace: str) -> dict[str, int]:
    obj = cluster.get("machineidentity", NAME, namespace) or {}
    creds = (obj.get("status") or {}).get("credentials") or []
    return {c["name"]: int(c.get("rotationCount", 0)) for c in creds}


@pytest.fixture(scope="module")
def env(operator: OperatorProcess) -> Iterator[Env]:
    assert conftest._CLUSTER is not None
    cluster = conftest._CLUSTER
    if cluster.get("namespace", OPERATOR_NAMESPACE) is None:
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    issuer = f"cli-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "ClusterIdentityIssuer",
            "metadata": {"name": issuer},
            "spec": {"trustDomain": "example.org", "selfSigned": {"ttl": "48h"}},
        }
    )
    try:
        wait_for(
            lambda: ready(cluster.get("clusteridentityissuer", issuer)),
            timeout=30,
            message=f"ClusterIdentityIssuer {issuer} Ready",
        )
        cluster.apply(
            {
                "apiVersion": "nhi.dev/v1alpha1",
                "kind": "MachineIdentity",
                "metadata": {"name": NAME, "namespace": namespace, "labels": {"team": "pay"}},
                "spec": {
                    "owner": "team-payments",
                    "credentials": [
                        {
                            "name": "api",
                            "type": "ServiceAccountToken",
                            "audiences": [AUDIENCE],
                            "ttl": "1h",
                        },
                        {"name": "key", "type": "StaticSecret", "ttl": "24h"},
                        {
                            "name": "mtls",
                            "type": "X509",
                            "ttl": "24h",
                            "issuerRef": {"kind": "ClusterIdentityIssuer", "name": issuer},
                            "dnsNames": [f"payments.{namespace}.svc"],
                        },
                    ],
                },
            }
        )
        wait_for(
            lambda: (
                ready(cluster.get("machineidentity", NAME, namespace))
                and len(rotation_counts(cluster, namespace)) == 3
            ),
            timeout=60,
            message=f"MachineIdentity {NAME} Ready with three credentials",
        )
        yield Env(cluster, namespace, issuer)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "clusteridentityissuer", issuer, "--wait=false", check=False)


# -------------------------------------------------------------------------------- status


def test_status_lists_the_identity_ready_with_its_credentials(env: Env) -> None:
    out = ok(env.cluster, "status", "-n", env.namespace)
    lines = out.splitlines()
    assert lines[0].split()[:7] == [
        "NAME",
        "PHASE",
        "READY",
        "OWNER",
        "CREDENTIAL",
        "TYPE",
        "SECRET",
    ]
    rows = [line.split() for line in lines[1:] if line.startswith(NAME + " ")]
    assert [r[4] for r in rows] == ["api", "key", "mtls"]
    for row in rows:
        assert row[1:4] == ["Active", "True", "team-payments"]
    assert [r[6] for r in rows] == ["payments.api", "payments.key", "payments.mtls"]
    # Fingerprints for the token and the static secret, the serial for the certificate.
    assert rows[0][7].startswith("sha256:") and rows[1][7].startswith("sha256:")
    assert ":" in rows[2][7] and not rows[2][7].startswith("sha256:")


def test_status_all_namespaces_json_and_one_identity_yaml(env: Env) -> None:
    data = json.loads(ok(env.cluster, "status", "-A", "-o", "json"))
    mine = [i for i in data["items"] if i["namespace"] == env.namespace]
    assert [i["name"] for i in mine] == [NAME]
    ident = mine[0]
    assert (ident["phase"], ident["ready"], ident["owner"]) == ("Active", "True", "team-payments")
    creds = {c["name"]: c for c in ident["credentials"]}
    assert set(creds) == {"api", "key", "mtls"}
    assert creds["mtls"]["issuer"] == f"ClusterIdentityIssuer/{env.issuer}"
    assert creds["mtls"]["serialNumber"]
    assert creds["api"]["fingerprint"].startswith("sha256:")
    assert all(c["notAfter"] and c["renewalTime"] for c in creds.values())

    one = yaml.safe_load(ok(env.cluster, "status", NAME, "-n", env.namespace, "-o", "yaml"))
    assert one["name"] == NAME and one["serviceAccount"] == NAME

    labelled = json.loads(ok(env.cluster, "status", "-A", "-l", "team=pay", "-o", "json"))
    assert [i["name"] for i in labelled["items"] if i["namespace"] == env.namespace] == [NAME]
    nothing = json.loads(ok(env.cluster, "status", "-A", "-l", "team=none", "-o", "json"))
    assert nothing == {"items": []}


def test_default_namespace_comes_from_the_kubeconfig_context(env: Env, tmp_path: Path) -> None:
    copy = tmp_path / "kubeconfig"
    copy.write_text(env.cluster.kubeconfig.read_text())
    env.cluster.kubectl(
        "config", "set-context", "--current", f"--namespace={env.namespace}", f"--kubeconfig={copy}"
    )
    out = ok(env.cluster, "status", "-o", "json", kubeconfig=copy)
    assert [i["name"] for i in json.loads(out)["items"]] == [NAME]


# ------------------------------------------------------------------------------- inspect


def test_inspect_x509_shows_the_svid_and_never_the_key(env: Env) -> None:
    data = secret_data(env.cluster, env.namespace, "payments.mtls")
    out = ok(env.cluster, "inspect", "secret", "payments.mtls", "-n", env.namespace)
    assert f"spiffe://example.org/ns/{env.namespace}/sa/{NAME}" in out
    assert f"DNS:payments.{env.namespace}.svc" in out
    assert "ECDSA-P256, matches the certificate" in out
    assert f"nhi.dev/issuer=ClusterIdentityIssuer/{env.issuer}" in out
    key_pem = data["tls.key"]
    assert key_pem not in out and "PRIVATE KEY" not in out
    assert all(line not in out for line in key_pem.splitlines() if "-----" not in line)

    as_json = json.loads(
        ok(env.cluster, "inspect", "secret", "payments.mtls", "-n", env.namespace, "-o", "json")
    )
    details = as_json["details"]
    assert details["spiffeId"] == f"spiffe://example.org/ns/{env.namespace}/sa/{NAME}"
    assert details["chainLength"] >= 1 and details["caBundle"]
    obj = env.cluster.get("machineidentity", NAME, env.namespace) or {}
    status = next(c for c in obj["status"]["credentials"] if c["name"] == "mtls")
    assert details["serial"] == status["serialNumber"]
    assert details["fingerprint"] == status["fingerprint"]


def test_inspect_token_shows_its_claims_and_never_the_token(env: Env) -> None:
    token = secret_data(env.cluster, env.namespace, "payments.api")["token"]
    out = ok(env.cluster, "inspect", "secret", "payments.api", "-n", env.namespace)
    assert AUDIENCE in out
    assert f"system:serviceaccount:{env.namespace}:{NAME}" in out
    assert "Secret/payments.api" in out
    _header, payload, signature = token.split(".")
    assert token not in out
    assert signature not in out and payload not in out
    as_json = json.loads(
        ok(env.cluster, "inspect", "secret", "payments.api", "-n", env.namespace, "-o", "json")
    )
    details = as_json["details"]
    assert details["audiences"] == [AUDIENCE]
    secret = env.cluster.get("secret", "payments.api", env.namespace) or {}
    assert details["boundObject"] == {
        "kind": "Secret",
        "name": "payments.api",
        "uid": secret["metadata"]["uid"],
    }
    assert details["fingerprint"] == secret_fingerprint(token)


def test_inspect_static_secret_shows_fingerprints_never_values(env: Env) -> None:
    data = secret_data(env.cluster, env.namespace, "payments.key")
    out = ok(env.cluster, "inspect", "secret", "payments.key", "-n", env.namespace)
    assert secret_fingerprint(data["current"]) in out
    assert data["current"] not in out
    assert "nhi.dev/not-after=" in out


# ------------------------------------------------------------------------ renew, history


def test_renew_rotates_every_credential_once_and_history_shows_it(env: Env) -> None:
    before = secret_data(env.cluster, env.namespace, "payments.key")["current"]
    out = ok(env.cluster, "renew", NAME, "-n", env.namespace)
    assert f"machineidentity {env.namespace}/{NAME}: renewal requested" in out
    wait_for(
        lambda: rotation_counts(env.cluster, env.namespace) == {"api": 1, "key": 1, "mtls": 1},
        timeout=60,
        message="rotationCount 1 on every credential",
    )
    after = secret_data(env.cluster, env.namespace, "payments.key")
    assert after["previous"] == before and after["current"] != before
    static = ok(env.cluster, "inspect", "secret", "payments.key", "-n", env.namespace)
    assert secret_fingerprint(before) in static and before not in static

    text = ok(env.cluster, "history", NAME, "-n", env.namespace)
    assert "Issued" in text and "Rotated" in text
    h = json.loads(ok(env.cluster, "history", NAME, "-n", env.namespace, "-o", "json"))
    reasons = [e["reason"] for e in h["events"]]
    # Changes of one reconcile share one Event per reason, each change listed in it.
    issued = " ".join(e["message"] for e in h["events"] if e["reason"] == "Issued")
    rotated = " ".join(e["message"] for e in h["events"] if e["reason"] == "Rotated")
    for cred in ("api", "key", "mtls"):
        assert f"credential {cred} " in issued and f"credential {cred} " in rotated
    assert max(i for i, r in enumerate(reasons) if r == "Issued") < min(
        i for i, r in enumerate(reasons) if r == "Rotated"
    )
    assert [e["time"] for e in h["events"]] == sorted(e["time"] for e in h["events"])
    assert {c["name"]: c["rotationCount"] for c in h["credentials"]} == {
        "api": 1,
        "key": 1,
        "mtls": 1,
    }
    assert all(c["lastRotationTime"] for c in h["credentials"])

    # Every distinct request renews again: by label selector this time.
    out = ok(env.cluster, "renew", "-l", "team=pay", "-n", env.namespace)
    assert f"{env.namespace}/{NAME}: renewal requested" in out
    wait_for(
        lambda: rotation_counts(env.cluster, env.namespace) == {"api": 2, "key": 2, "mtls": 2},
        timeout=60,
        message="rotationCount 2 on every credential",
    )


# -------------------------------------------------------------------------------- revoke


def test_revoke_sets_the_annotation(env: Env) -> None:
    env.cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "MachineIdentity",
            "metadata": {"name": "doomed", "namespace": env.namespace},
            "spec": {"owner": "team-a"},
        }
    )
    out = ok(env.cluster, "revoke", "doomed", "-n", env.namespace)
    assert "revocation requested (nhi.dev/revoke=true)" in out
    assert "operator will revoke" in out
    obj = env.cluster.get("machineidentity", "doomed", env.namespace) or {}
    assert obj["metadata"]["annotations"]["nhi.dev/revoke"] == "true"


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("status", "nope"), 'machineidentity "nope" not found in namespace'),
        (("renew", "nope"), 'machineidentity "nope" not found in namespace'),
        (("revoke", "nope"), 'machineidentity "nope" not found in namespace'),
        (("history", "nope"), 'machineidentity "nope" not found in namespace'),
        (("inspect", "secret", "nope"), 'secret "nope" not found in namespace'),
    ],
)
def test_unknown_names_exit_1_with_one_line(env: Env, args: tuple[str, ...], expected: str) -> None:
    proc = run_nhi(env.cluster, *args, "-n", env.namespace)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and expected in proc.stderr


def kubeconfig_with_token(env: Env, path: Path, token: str) -> Path:
    config = yaml.safe_load(env.cluster.kubeconfig.read_text())
    ctx = config["contexts"][0]
    config["users"].append({"name": "someone", "user": {"token": token}})
    ctx["context"]["user"] = "someone"
    config["current-context"] = ctx["name"]
    path.write_text(yaml.safe_dump(config))
    return path


def test_unauthorized_and_forbidden_are_one_line(env: Env, tmp_path: Path) -> None:
    bad = kubeconfig_with_token(env, tmp_path / "bad", "not-a-valid-token")
    proc = run_nhi(env.cluster, "status", "-n", env.namespace, kubeconfig=bad)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: unauthorized")

    # A ServiceAccount without any RBAC: authenticated, then refused.
    env.cluster.kubectl("create", "serviceaccount", "nobody", "-n", env.namespace)
    token = env.cluster.kubectl("create", "token", "nobody", "-n", env.namespace).stdout.strip()
    weak = kubeconfig_with_token(env, tmp_path / "weak", token)
    for args in (("status",), ("inspect", "secret", "payments.key"), ("renew", NAME)):
        proc = run_nhi(env.cluster, *args, "-n", env.namespace, kubeconfig=weak)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: forbidden: "), proc.stderr
        assert "cannot" in proc.stderr
