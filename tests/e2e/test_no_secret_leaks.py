"""No secret the operator issues ever leaves the Secret it is stored in.

An operator of its own (the session's is paused meanwhile) runs with --log-level DEBUG through
a whole life: a self-signed ClusterIdentityIssuer and one signing through OpenBao (logged in
with a Vault token kept in a Secret), an identity with a token, an X509 certificate from each
and a StaticSecret, a renewal on request (so StaticSecret ``previous`` is filled),
and the deletion of both. Then every value that was issued, and the key of the provenance
tags of the operator's ConfigMaps, is looked for in everything that is not a Secret: each line
of the operator's log, every Event of the cluster, the identity and the issuer as the API
returns them (status included), the ConfigMaps the operator writes (trust bundles, CRLs), the
metrics page and the API server's audit log for the period.

Each value is searched raw and base64-encoded, and for PEM keys each base64 body line of 40+
characters as well (a key logged as JSON has its newlines escaped, so only the lines match);
a token's signature is searched on its own. The search is checked to find a value planted in
a copy of the collected text, so an empty result means something.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import Cluster, OperatorProcess, start_operator, wait_for

pytestmark = pytest.mark.e2e

SYSTEM = os.environ.get("NHI_NAMESPACE", "nhi-system")
MIN_LINE = 40  # PEM body lines (64 chars) and token signatures are far longer


@dataclass(frozen=True)
class Needle:
    source: str  # "<secret>/<key>": where the value lives
    form: str  # raw, base64, PEM line, signature
    value: str

    @property
    def what(self) -> str:  # what a failure names: never the value itself
        return f"{self.source} ({self.form})"


def needles_for(source: str, value: str) -> list[Needle]:
    out = [
        Needle(source, "raw", value),
        Needle(source, "base64", base64.b64encode(value.encode()).decode()),
    ]
    if "-----BEGIN" in value:
        lines = [ln.strip() for ln in value.splitlines()]
        body = [ln for ln in lines if ln and not ln.startswith("-----")]
        out += [Needle(source, "PEM line", ln) for ln in body if len(ln) >= MIN_LINE]
    if value.startswith("eyJ") and value.count(".") == 2:
        out.append(Needle(source, "signature", value.rsplit(".", 1)[1]))
    return out


def find_leaks(texts: dict[str, str], needles: list[Needle]) -> list[tuple[str, str]]:
    """(where, what) for every needle found in any text."""
    return [(where, n.what) for where, text in texts.items() for n in needles if n.value in text]


def secret_values(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    secret = cluster.get("secret", name, namespace)
    assert secret is not None, f"Secret {namespace}/{name} missing"
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


@contextlib.contextmanager
def session_operator_paused() -> Iterator[None]:
    """Freeze the session's operator (if one runs) so that only ours acts and logs."""
    op = conftest._OPERATOR
    if op is None or op.proc.poll() is not None:
        yield
        return
    os.killpg(op.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(op.proc.pid, signal.SIGCONT)


def kubectl_json(cluster: Cluster, *args: str) -> str:
    return cluster.kubectl(*args, "-o", "json").stdout


def ready(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> bool:
    obj = cluster.get(kind, name, namespace) or {}
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def rotation_counts(cluster: Cluster, namespace: str) -> dict[str, int]:
    obj = cluster.get("machineidentity", "app", namespace) or {}
    return {
        c["name"]: int(c.get("rotationCount", 0))
        for c in (obj.get("status") or {}).get("credentials") or []
    }


def scrape(op: OperatorProcess) -> str:
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.timeout(300)
def test_issued_secrets_appear_nowhere_but_in_their_secrets(
    crds: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster = crds
    if cluster.get("namespace", SYSTEM) is None:
        cluster.kubectl("create", "namespace", SYSTEM, check=False)
    audit: Path | None = None
    audit_start = 0
    if cluster.control_plane is not None and cluster.control_plane.audit_log is not None:
        audit = Path(cluster.control_plane.audit_log)
        audit_start = audit.stat().st_size if audit.exists() else 0
    issuer = f"leak-{uuid.uuid4().hex[:6]}"
    vault_issuer = f"{issuer}-vault"
    texts: dict[str, str] = {}
    needles: list[Needle] = []
    # OpenBao runs beside the local control plane only.
    bao = cluster.control_plane.start_openbao(SYSTEM) if cluster.control_plane else None
    vault_secrets: dict[str, str] = {}
    if bao is not None:
        vault_secrets = {"vault-token/token": bao.operator_token(), "root/token": bao.root_token}
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{vault_issuer}-token", "namespace": SYSTEM},
                "stringData": {"token": vault_secrets["vault-token/token"]},
            }
        )
    credentials: list[dict[str, object]] = [
        {
            "name": "api",
            "type": "ServiceAccountToken",
            "ttl": "15m",
            "audiences": ["leaks.example.org"],
        },
        {
            "name": "mtls",
            "type": "X509",
            "ttl": "1h",
            "issuerRef": {"kind": "ClusterIdentityIssuer", "name": issuer},
        },
        {"name": "key", "type": "StaticSecret", "ttl": "2h"},
    ]
    if bao is not None:
        credentials.append(
            {
                "name": "vault",
                "type": "X509",
                "ttl": "1h",
                "issuerRef": {"kind": "ClusterIdentityIssuer", "name": vault_issuer},
            }
        )
    names = [str(c["name"]) for c in credentials]

    def collect_values() -> None:
        for secret, keys in (
            ("app.api", ("token",)),
            ("app.mtls", ("tls.key",)),
            ("app.key", ("current", "previous")),
            *((("app.vault", ("tls.key",)),) if bao is not None else ()),
        ):
            data = secret_values(cluster, namespace, secret)
            for key in keys:
                if key in data:
                    needles.extend(needles_for(f"{secret}/{key}", data[key]))
        root = secret_values(cluster, SYSTEM, f"nhi-issuer-{issuer}")
        needles.extend(needles_for(f"nhi-issuer-{issuer}/tls.key", root["tls.key"]))
        # The key of the ConfigMaps' provenance tags (random bytes: searched as base64).
        provenance = cluster.get("secret", "nhi-provenance-key", SYSTEM)
        assert provenance is not None
        needles.append(Needle("nhi-provenance-key/key", "base64", provenance["data"]["key"]))
        for source, value in vault_secrets.items():
            needles.extend(needles_for(source, value))

    def collect_objects(stage: str) -> None:
        texts[f"events ({stage})"] = kubectl_json(cluster, "get", "events", "-A")
        texts[f"configmaps ({stage})"] = kubectl_json(
            cluster, "get", "configmaps", "-n", namespace
        ) + kubectl_json(cluster, "get", "configmaps", "-n", SYSTEM)
        texts[f"metrics ({stage})"] = scrape(op)

    with session_operator_paused():
        op = start_operator(cluster, tmp_path / "operator.log", "--log-level", "DEBUG")
        try:
            cluster.apply(
                {
                    "apiVersion": "nhi.dev/v1alpha1",
                    "kind": "ClusterIdentityIssuer",
                    "metadata": {"name": issuer},
                    "spec": {
                        "trustDomain": "leaks.example.org",
                        "selfSigned": {"ttl": "48h"},
                        "crl": {"configMapName": f"{issuer}-crl"},
                    },
                }
            )
            wait_for(lambda: ready(cluster, "clusteridentityissuer", issuer), timeout=60)
            if bao is not None:
                cluster.apply(
                    {
                        "apiVersion": "nhi.dev/v1alpha1",
                        "kind": "ClusterIdentityIssuer",
                        "metadata": {"name": vault_issuer},
                        "spec": {
                            "trustDomain": "leaks.example.org",
                            "vault": {
                                "address": bao.address,
                                "caBundle": bao.ca_pem,
                                "pki": {"role": "nhi"},
                                "auth": {"tokenSecretRef": {"name": f"{vault_issuer}-token"}},
                            },
                        },
                    }
                )
                wait_for(lambda: ready(cluster, "clusteridentityissuer", vault_issuer), timeout=60)
            cluster.apply(
                {
                    "apiVersion": "nhi.dev/v1alpha1",
                    "kind": "MachineIdentity",
                    "metadata": {"name": "app", "namespace": namespace},
                    "spec": {
                        "owner": "team-security",
                        "credentials": credentials,
                        # Every value is also kept in OpenBao's KV: its copies are values too.
                        **(
                            {"vault": {"issuerRef": {"name": vault_issuer}}}
                            if bao is not None
                            else {}
                        ),
                    },
                }
            )
            wait_for(
                lambda: ready(cluster, "machineidentity", "app", namespace),
                timeout=60,
                message="the identity to be Ready",
            )
            collect_values()

            cluster.kubectl(
                "annotate",
                "machineidentity",
                "app",
                "-n",
                namespace,
                "nhi.dev/renew-requested-at=2099-01-01T00:00:00Z",
            )
            wait_for(
                lambda: (
                    (c := rotation_counts(cluster, namespace))
                    and all(c.get(n, 0) >= 1 for n in names)
                ),
                timeout=60,
                message="every credential to be renewed",
            )
            wait_for(lambda: ready(cluster, "machineidentity", "app", namespace), timeout=30)
            collect_values()
            assert "previous" in secret_values(cluster, namespace, "app.key")

            texts["identity"] = kubectl_json(
                cluster, "get", "machineidentity", "app", "-n", namespace
            )
            texts["issuer"] = kubectl_json(cluster, "get", "clusteridentityissuer", issuer)
            if bao is not None:
                texts["vault issuer"] = kubectl_json(
                    cluster, "get", "clusteridentityissuer", vault_issuer
                )
            collect_objects("live")
            assert f'namespace="{namespace}"' in texts["metrics (live)"]

            cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=60s")
            cluster.kubectl("delete", "clusteridentityissuer", issuer, "--timeout=60s")
            if bao is not None:
                cluster.kubectl("delete", "clusteridentityissuer", vault_issuer, "--timeout=60s")
            wait_for(
                lambda: cluster.get("secret", f"nhi-issuer-{issuer}", SYSTEM) is None,
                timeout=30,
                message="the issuer's root Secret to be removed",
            )
            collect_objects("deleted")
        finally:
            op.stop()
            cluster.kubectl(
                "delete",
                "clusteridentityissuer",
                issuer,
                vault_issuer,
                "--wait=false",
                "--ignore-not-found",
                check=False,
            )

    log = op.log()
    texts["operator log"] = log
    if audit is not None and audit.exists():
        with audit.open("rb") as f:
            f.seek(audit_start)
            texts["audit log"] = f.read().decode(errors="replace")

    # The collection is not empty: the scenario really ran, at DEBUG, and was recorded.
    lines = [ln for ln in log.splitlines() if ln.strip()]
    records = []
    unstructured = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except ValueError:
            unstructured.append(ln)
    assert not unstructured, f"log lines outside the JSON formatter: {unstructured[:5]}"
    assert any(r.get("level") == "debug" for r in records), "the operator did not log at DEBUG"
    events = [r["event"] for r in records]
    if bao is not None:
        assert sum(e == "stored credential in Vault" for e in events) >= 2 * len(names), events
    assert sum(e == "issued credential" for e in events) >= len(names), events
    assert sum(e == "rotated credential" for e in events) >= len(names), events
    # The issuer controller's per-issuer lines (its root created, its CRL published) are
    # part of what was searched.
    assert any(
        str(r.get("issuer", "")).endswith(f"/{issuer}") and "fingerprint" in r for r in records
    ), "no log line about the issuer's root"
    assert any(
        str(r.get("issuer", "")).endswith(f"/{issuer}") and r.get("event") == "published CRL"
        for r in records
    ), "no log line about the issuer's CRL"
    assert '"reason": "Rotated"' in texts["events (live)"]
    if "audit log" in texts:
        assert f'"namespace":"{namespace}"' in texts["audit log"]
        assert '"resource":"secrets"' in texts["audit log"]
    assert {n.source for n in needles} == {
        "app.api/token",
        "app.mtls/tls.key",
        "app.key/current",
        "app.key/previous",
        f"nhi-issuer-{issuer}/tls.key",
        "nhi-provenance-key/key",
    } | ({"app.vault/tls.key", "vault-token/token", "root/token"} if bao is not None else set())
    assert {n.form for n in needles} == {"raw", "base64", "PEM line", "signature"}

    # The search finds what is there: one value of each secret and form planted in a copy of
    # the collected text is found, and so is a key logged JSON-escaped (through its lines).
    corpus = "\n".join(texts.values())
    samples = {(n.source, n.form): n for n in needles}
    for n in samples.values():
        assert find_leaks({"copy": f"{corpus}\nplanted {n.value}\n"}, [n]) == [("copy", n.what)]
    key = samples[("app.mtls/tls.key", "raw")].value
    escaped = {"copy": corpus + json.dumps({"event": "oops", "key": key})}
    assert key not in escaped["copy"]
    assert find_leaks(escaped, [n for n in needles if n.source == "app.mtls/tls.key"])

    leaks = find_leaks(texts, needles)
    print(
        f"\nsearched {len(needles)} needles from {len({n.source for n in needles})} secrets in "
        + ", ".join(f"{where} ({len(text)} chars)" for where, text in texts.items())
        + f"; operator log: {len(records)} lines"
    )
    assert not leaks, "secret values found outside their Secrets:\n" + "\n".join(
        sorted({f"  {what} in {where}" for where, what in leaks})
    )
