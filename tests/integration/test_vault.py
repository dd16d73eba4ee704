"""The Vault issuer source against a real OpenBao server and the real control plane.

OpenBao (nhi.testenv.openbao) signs with its pki engine; the operator logs in with Kubernetes
auth (a real TokenReview per login), AppRole or a token from a Secret. What a user would see
break: the certificate, Vault's CRL and its mirror, the refusal of another namespace's
Secret, the reasons and backoff while the server fails, and no Vault secret anywhere visible.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from nhi.crypto import (
    dns_names_of,
    is_revoked,
    load_cert_chain,
    serial_hex,
    spiffe_id_of,
    verify_chain,
)
from nhi.testenv.openbao import LOGIN_SERVICE_ACCOUNT, OPERATOR_ROLE, PKI_ROLE, OpenBao
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_credentials import secret_data
from tests.integration.test_identity import condition, wait_condition
from tests.integration.test_issuer import wait_ready as ready

pytestmark = pytest.mark.integration

SYSTEM = "nhi-system"
TENANT = "vera"


@pytest.fixture
def kube(operator: OperatorProcess, openbao: OpenBao) -> Cluster:
    assert operator.cluster is not None
    return operator.cluster


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def vault_spec(bao: OpenBao, auth: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": bao.address,
        "caBundle": bao.ca_pem,
        "pki": {"mount": "pki", "role": PKI_ROLE},
        "auth": auth,
    }


KUBERNETES_AUTH = {
    "kubernetes": {"role": OPERATOR_ROLE, "serviceAccountName": LOGIN_SERVICE_ACCOUNT}
}


def issuer(name: str, vault: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityIssuer" if namespace else "ClusterIdentityIssuer",
        "metadata": meta,
        "spec": {"trustDomain": "example.org", "vault": vault},
    }


def identity(namespace: str, issuer_ref: dict[str, str], ttl: str = "1h") -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "owner": "team-a",
            "credentials": [
                {
                    "name": "mtls",
                    "type": "X509",
                    "ttl": ttl,
                    "issuerRef": issuer_ref,
                    "dnsNames": ["app.svc", "app.example.org"],
                }
            ],
        },
    }


def secret(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def vault_ca(bao: OpenBao) -> x509.Certificate:
    return load_cert_chain(bao.text("pki/ca/pem"))[0]


def test_certificate_is_signed_by_vault_and_revocation_reaches_its_crl(
    kube: Cluster, openbao: OpenBao, namespace: str
) -> None:
    name = unique("vault")
    kube.apply(issuer(name, vault_spec(openbao, KUBERNETES_AUTH)))
    obj = ready(kube, "clusteridentityissuer", name, None, "True", "CAReady")
    status = obj["status"]
    assert status["vault"] == {
        "address": openbao.address,
        "crlURL": f"{openbao.address}/v1/pki/crl",
        "maxTTL": "259200s",
    }
    assert "caps certificates at 259200s" in condition(obj, "Ready")["message"]  # type: ignore[index]
    ca = vault_ca(openbao)
    assert status["notAfter"] == ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    # 100h asked, the role caps at 72h: the certificate says what Vault gave.
    kube.apply(identity(namespace, {"kind": "ClusterIdentityIssuer", "name": name}, ttl="100h"))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    data = secret_data(kube, namespace, "app.mtls")
    chain = load_cert_chain(data["tls.crt"])
    leaf = chain[0]
    verify_chain(leaf, chain[1:], ca, now=dt.datetime.now(dt.UTC))
    assert load_cert_chain(data["ca.crt"]) == [ca]
    assert spiffe_id_of(leaf) == f"spiffe://example.org/ns/{namespace}/sa/app"
    assert sorted(dns_names_of(leaf)) == ["app.example.org", "app.svc"]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(hours=71) < lifetime <= dt.timedelta(hours=72, minutes=1)
    # The key was made here: Vault holds no record of it, only the certificate it signed.
    assert "PRIVATE KEY" in data["tls.key"]

    kube.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true")
    wait_for(
        lambda: is_revoked(openbao.text("pki/crl/pem"), ca, leaf.serial_number),
        timeout=30,
        message="the serial on Vault's CRL",
    )
    crl_name = f"nhi-crl-clusteridentityissuer-{name}"
    wait_for(
        lambda: (
            (cm := kube.get("configmap", crl_name, SYSTEM))
            and is_revoked(cm["data"]["ca.crl"], ca, leaf.serial_number)
        ),
        timeout=30,
        message="the serial in the mirrored CRL ConfigMap",
    )
    mirrored = ready(kube, "clusteridentityissuer", name, None, "True", "CAReady")
    assert mirrored["status"]["revokedCount"] >= 1
    kube.kubectl("delete", "clusteridentityissuer", name, "--wait=false")


def test_token_and_approle_auth_and_a_forbidden_token(
    kube: Cluster, openbao: OpenBao, namespace: str
) -> None:
    kube.apply(secret("vault-token", namespace, token="not-a-valid-token"))
    tok = {"tokenSecretRef": {"name": "vault-token"}}
    kube.apply(issuer("by-token", vault_spec(openbao, tok), namespace))
    obj = ready(kube, "identityissuer", "by-token", namespace, "False", "VaultForbidden")
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert openbao.address in message and "HTTP 403" in message
    assert "not-a-valid-token" not in json.dumps(obj)

    # A valid token in the same Secret: the Secret's watch re-checks the issuer.
    kube.apply(secret("vault-token", namespace, token=openbao.operator_token()))
    ready(kube, "identityissuer", "by-token", namespace, "True", "CAReady", timeout=60)

    kube.apply(secret("approle", namespace, secretId=openbao.new_secret_id()))
    approle = {
        "appRole": {"roleId": openbao.approle_role_id, "secretIdSecretRef": {"name": "approle"}}
    }
    kube.apply(issuer("by-approle", vault_spec(openbao, approle), namespace))
    ready(kube, "identityissuer", "by-approle", namespace, "True", "CAReady", timeout=60)
    kube.apply(identity(namespace, {"kind": "IdentityIssuer", "name": "by-approle"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    leaf = load_cert_chain(secret_data(kube, namespace, "app.mtls")["tls.crt"])[0]
    leaf.verify_directly_issued_by(vault_ca(openbao))


def test_a_namespaced_issuer_may_not_use_another_namespaces_secret(
    kube: Cluster, openbao: OpenBao, namespace: str
) -> None:
    victim = unique("victim")
    kube.kubectl("create", "namespace", victim)
    try:
        kube.apply(secret("vault-token", victim, token=openbao.operator_token()))
        kube.kubectl(
            "create",
            "role",
            "issuer-writer",
            "-n",
            namespace,
            "--verb=create,get,list,watch,update,patch,delete",
            "--resource=identityissuers.nhi.dev",
        )
        kube.kubectl(
            "create",
            "rolebinding",
            "vera",
            "-n",
            namespace,
            "--role=issuer-writer",
            f"--user={TENANT}",
        )
        # Vera cannot read the victim's Secret herself...
        assert (
            kube.kubectl(
                "get", "secret", "vault-token", "-n", victim, as_user=TENANT, check=False
            ).returncode
            != 0
        )
        # ...and her issuer cannot make the operator read it for her.
        stolen = {"tokenSecretRef": {"name": "vault-token", "namespace": victim}}
        kube.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps(issuer("stolen", vault_spec(openbao, stolen), namespace)),
            as_user=TENANT,
        )
        obj = ready(kube, "identityissuer", "stolen", namespace, "False", "InvalidSpec")
        message = condition(obj, "Ready")["message"]  # type: ignore[index]
        assert message.startswith("spec.vault.auth.tokenSecretRef.namespace: ")
        assert f"only use Secrets of its own namespace ({namespace}), not {victim}" in message
        assert condition(obj, "Stalled")["status"] == "True"  # type: ignore[index]
        assert "status" not in obj or "vault" not in obj["status"]
    finally:
        kube.kubectl("delete", "namespace", victim, "--wait=false", check=False)


def seen_sealed(kube: Cluster, name: str) -> None:
    """Make the ClusterIdentityIssuer ``name`` look at its (sealed) server at once, through a
    spec edit, and wait until it says so."""
    kube.kubectl(
        "patch",
        "clusteridentityissuer",
        name,
        "--type=merge",
        "-p",
        '{"spec":{"crl":{"validity":"25h"}}}',
    )
    ready(kube, "clusteridentityissuer", name, None, "False", "VaultSealed", timeout=30)


def _unconfirmed(kube: Cluster, name: str) -> list[str]:
    obj = kube.get("clusteridentityissuer", name) or {}
    return list(((obj.get("status") or {}).get("vault") or {}).get("pendingRevocations") or [])


def test_a_revocation_the_server_cannot_take_is_kept_across_a_restart(
    kube: Cluster, openbao: OpenBao, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    name = unique("unconfirmed")
    kind = "clusteridentityissuer"
    kube.apply(issuer(name, vault_spec(openbao, KUBERNETES_AUTH)))
    ready(kube, kind, name, None, "True", "CAReady", timeout=60)
    leaves = {}
    for app in ("early", "late"):
        obj = identity(namespace, {"kind": "ClusterIdentityIssuer", "name": name})
        obj["metadata"]["name"] = app
        kube.apply(obj)
    for app in ("early", "late"):
        wait_condition(kube, namespace, app, "Ready", "True", timeout=60)
        leaves[app] = load_cert_chain(secret_data(kube, namespace, f"{app}.mtls")["tls.crt"])[0]
    ca = vault_ca(openbao)

    def revoke(app: str) -> None:
        kube.kubectl("annotate", "machineidentity", app, "-n", namespace, "nhi.dev/revoke=true")
        # The identity is revoked all the same; the serial Vault could not take is kept in
        # the issuer's status.
        wait_for(
            lambda: kube.get("secret", f"{app}.mtls", namespace) is None,
            timeout=30,
            message=f"the revoked identity {app}'s Secret gone",
        )
        wait_for(
            lambda: serial_hex(leaves[app]) in _unconfirmed(kube, name),
            timeout=30,
            message=f"{app}'s serial in status.vault.pendingRevocations",
        )

    openbao.seal()
    try:
        # Sealed while the issuer still looks Ready: the revoke call itself fails.
        revoke("early")
        # Sealed and known to be: the issuer cannot sign, the serial is kept all the same.
        seen_sealed(kube, name)
        revoke("late")
        # An operator started afresh, with nothing in memory, still sends them.
        operator.restart(tmp_path / "after.log")
    finally:
        openbao.unseal()
    for app, leaf in leaves.items():
        wait_for(
            lambda leaf=leaf: is_revoked(openbao.text("pki/crl/pem"), ca, leaf.serial_number),
            timeout=120,
            message=f"{app}'s serial on Vault's CRL after the restart",
        )
    wait_for(
        lambda: not _unconfirmed(kube, name),
        timeout=60,
        message="status.vault.pendingRevocations emptied once Vault confirmed",
    )
    kube.kubectl("delete", kind, name, "--wait=false")


def _failures(operator: OperatorProcess, name: str) -> list[float]:
    """The retry delays the operator logged for the issuer ``name``, in order."""
    out = []
    for line in operator.log().splitlines():
        if "reconcile failed, retrying" not in line or f"'{name}'" not in line:
            continue
        found = re.search(r'"retry_in": ([0-9.]+)', line)
        if found:
            out.append(float(found.group(1)))
    return out


def test_paused_and_sealed_server_are_reported_and_retried_with_backoff(
    kube: Cluster, openbao: OpenBao, operator: OperatorProcess, namespace: str
) -> None:
    steady, paused, sealed = unique("steady"), unique("paused"), unique("sealed")
    kind = "clusteridentityissuer"
    kube.apply(issuer(steady, vault_spec(openbao, KUBERNETES_AUTH)))
    ready(kube, kind, steady, None, "True", "CAReady", timeout=60)
    kube.apply(identity(namespace, {"kind": "ClusterIdentityIssuer", "name": steady}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    before = kube.get("secret", "app.mtls", namespace)
    assert before is not None

    openbao.pause()
    try:
        kube.apply(issuer(paused, vault_spec(openbao, KUBERNETES_AUTH)))
        obj = ready(kube, kind, paused, None, "False", timeout=60)
        c = condition(obj, "Ready")
        assert c is not None
        assert c["reason"] in ("VaultTimeout", "VaultUnreachable"), c
        assert openbao.address in c["message"] and "did not answer" in c["message"]
        # A slow Vault delays nothing that does not use it: a self-signed issuer and an
        # identity of its own are Ready meanwhile, as fast as ever.
        started = time.monotonic()
        kube.apply(
            {
                "apiVersion": "nhi.dev/v1alpha1",
                "kind": "IdentityIssuer",
                "metadata": {"name": "local", "namespace": namespace},
                "spec": {"trustDomain": "example.org", "selfSigned": {"ttl": "24h"}},
            }
        )
        other = identity(namespace, {"kind": "IdentityIssuer", "name": "local"})
        other["metadata"]["name"] = "other"
        kube.apply(other)
        wait_condition(kube, namespace, "other", "Ready", "True", timeout=20)
        assert time.monotonic() - started < 20
        time.sleep(max(0.0, 25 - (time.monotonic() - started)))
        delays = _failures(operator, paused)
    finally:
        openbao.resume()
    # Each attempt waits for a 10 s timeout, then the retries back off: a few, not dozens.
    assert 1 <= len(delays) <= 4, delays
    assert delays == sorted(delays), delays
    ready(kube, kind, paused, None, "True", "CAReady", timeout=90)
    # The certificate issued before the pause stayed as it was.
    after = kube.get("secret", "app.mtls", namespace)
    assert after is not None and after["data"] == before["data"]

    openbao.seal()
    try:
        kube.apply(issuer(sealed, vault_spec(openbao, KUBERNETES_AUTH)))
        obj = ready(kube, kind, sealed, None, "False", "VaultSealed")
        message = condition(obj, "Ready")["message"]  # type: ignore[index]
        assert openbao.address in message and "HTTP 503" in message
        time.sleep(12)
        delays = _failures(operator, sealed)
    finally:
        openbao.unseal()
    # Immediate failures, retried after 1 s, 2 s, 4 s, 8 s...: about five in 12 s, not
    # hundreds (a creation's own watch events may add one run at the start).
    assert 3 <= len(delays) <= 7, delays
    assert delays == sorted(delays) and delays[-1] >= 4.0, delays
    assert all(b in (a, a * 2) for a, b in itertools.pairwise(delays)), delays
    ready(kube, kind, sealed, None, "True", "CAReady", timeout=60)
    kube.kubectl("delete", kind, steady, paused, sealed, "--wait=false")


def test_no_vault_secret_in_logs_events_status_or_metrics(
    kube: Cluster, openbao: OpenBao, operator: OperatorProcess, namespace: str
) -> None:
    token = openbao.operator_token()
    secret_id = openbao.new_secret_id()
    kube.apply(secret("vault-token", namespace, token=token))
    kube.apply(secret("approle", namespace, secretId=secret_id))
    kube.apply(
        issuer("t", vault_spec(openbao, {"tokenSecretRef": {"name": "vault-token"}}), namespace)
    )
    approle = {
        "appRole": {"roleId": openbao.approle_role_id, "secretIdSecretRef": {"name": "approle"}}
    }
    kube.apply(issuer("a", vault_spec(openbao, approle), namespace))
    cluster_issuer = unique("k")
    kube.apply(issuer(cluster_issuer, vault_spec(openbao, KUBERNETES_AUTH)))
    ready(kube, "clusteridentityissuer", cluster_issuer, None, "True", "CAReady", timeout=60)
    for name in ("t", "a"):
        ready(kube, "identityissuer", name, namespace, "True", "CAReady", timeout=60)
    kube.apply(identity(namespace, {"kind": "IdentityIssuer", "name": "t"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    # A wrong token too: the 403 it gets is reported, the token is not.
    kube.apply(secret("vault-token", namespace, token=f"wrong-{token}"))
    ready(kube, "identityissuer", "t", namespace, "False", "VaultForbidden", timeout=90)

    seen = [operator.log()]
    seen.append(kube.kubectl("get", "events", "-A", "-o", "json").stdout)
    for name in ("t", "a"):
        seen.append(json.dumps(kube.get("identityissuer", name, namespace)))
    seen.append(json.dumps(kube.get("clusteridentityissuer", cluster_issuer)))
    seen.append(json.dumps(kube.get("machineidentity", "app", namespace)))
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
    ) as r:
        seen.append(r.read().decode())
    text = "\n".join(seen)
    values = {
        "token": token,
        "secret ID": secret_id,
        "root token": openbao.root_token,
    }
    planted = f"{text}\n{token}"
    assert token in planted  # the search finds a value that is there
    for what, value in values.items():
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in text, f"the Vault {what} leaked"
    kube.kubectl("delete", "clusteridentityissuer", cluster_issuer, "--wait=false")


def test_a_namespaced_issuer_logs_in_as_a_service_account_of_its_own_namespace(
    kube: Cluster, openbao: OpenBao, namespace: str
) -> None:
    # Without serviceAccountName the operator's own token would be sent to the address the
    # tenant wrote: refused at admission.
    own = vault_spec(openbao, {"kubernetes": {"role": OPERATOR_ROLE}})
    refused = kube.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps(issuer("own-token", own, namespace)),
        check=False,
    )
    assert refused.returncode != 0
    assert "serviceAccountName" in refused.stderr

    # A ServiceAccount of the namespace, and a Vault role bound to it for the audience vault.
    kube.kubectl("create", "serviceaccount", "vault-login", "-n", namespace)
    role = f"t-{namespace}"
    openbao.request(
        "POST",
        f"auth/kubernetes/role/{role}",
        {
            "bound_service_account_names": ["vault-login"],
            "bound_service_account_namespaces": [namespace],
            "token_policies": ["nhi-operator"],
            "audience": "vault",
            "token_ttl": "1h",
        },
    )
    auth = {"kubernetes": {"role": role, "serviceAccountName": "vault-login"}}
    kube.apply(issuer("tenant", vault_spec(openbao, auth), namespace))
    ready(kube, "identityissuer", "tenant", namespace, "True", "CAReady", timeout=60)
    kube.apply(identity(namespace, {"kind": "IdentityIssuer", "name": "tenant"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    leaf = load_cert_chain(secret_data(kube, namespace, "app.mtls")["tls.crt"])[0]
    assert spiffe_id_of(leaf) == f"spiffe://example.org/ns/{namespace}/sa/app"
