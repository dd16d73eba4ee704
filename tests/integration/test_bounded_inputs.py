"""What a hostile tenant (who may only create MachineIdentities in her namespace) found, against
the real API server and the running operator: no input makes it loop, stall or crash.

- a duration too large for any clock is refused at admission, and one stored before the rule
  existed ends Stalled naming the field, and is deleted with its namespace;
- renewBeforeFraction 0.95 on a 10m certificate issues about once a minute, not a thousand
  times;
- an emoji in a text field round-trips into every object made from it;
- a commonName that fits 64 characters but not 64 bytes is refused at admission.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Cluster, OperatorProcess, wait_for
from tests.integration.test_credentials import cred_status
from tests.integration.test_identity import _cluster, condition, wait_condition
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.integration

HUGE = "99999999999999h"  # 3.6e17 s: more than a timedelta, a Go duration or a datetime holds


def identity(namespace: str, name: str = "app", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "team-a"}
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def submit(cluster: Cluster, obj: dict[str, Any]) -> tuple[bool, str]:
    proc = cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj), check=False)
    return proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ durations


def test_a_duration_too_large_for_any_clock_is_refused_naming_the_field(
    crds: Cluster, namespace: str
) -> None:
    ok, err = submit(crds, identity(namespace, revocation={"gracePeriod": HUGE}))
    assert not ok
    assert "spec.revocation.gracePeriod" in err
    assert "must be at most 87600h (10 years)" in err
    ok, err = submit(crds, identity(namespace, lifetime={"validFor": "87601h"}))
    assert not ok and "lifetime.validFor must be at most 87600h (10 years)" in err
    ok, err = submit(crds, identity(namespace, lifetime={"validFor": "87600h"}))
    assert ok, err


@pytest.fixture
def without_the_grace_period_rule(crds: Cluster) -> Iterator[Callable[[], None]]:
    """The MachineIdentity CRD as it was before its durations were bounded: objects stored
    then are still there after an upgrade. Yields the upgrade: the canonical CRDs applied
    again (and in any case after the test)."""
    crd = json.loads(crds.kubectl("get", "crd", "machineidentities.nhi.dev", "-o", "json").stdout)
    path = (
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/revocation"
        "/properties/gracePeriod/x-kubernetes-validations"
    )
    assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["revocation"]["properties"]["gracePeriod"]["x-kubernetes-validations"]
    crds.kubectl(
        "patch",
        "crd",
        "machineidentities.nhi.dev",
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": path}]),
    )

    def upgrade() -> None:
        crds.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))

    try:
        yield upgrade
    finally:
        upgrade()


def test_an_invalid_identity_stored_before_the_rule_stalls_and_its_namespace_goes(
    operator: OperatorProcess, without_the_grace_period_rule: Callable[[], None]
) -> None:
    cluster = _cluster(operator)
    namespace = f"t-stored-{int(time.time() * 1000) % 10**8}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        body = identity(namespace, revocation={"gracePeriod": HUGE})
        # The API server takes a moment to serve the relaxed schema.
        wait_for(lambda: submit(cluster, body)[0], timeout=30, message="the object stored")
        without_the_grace_period_rule()  # the upgrade: the object stays, the rule is back
        wait_for(
            lambda: not submit(cluster, identity(namespace, "probe", **body["spec"]))[0],
            timeout=30,
            message="the bounded schema served again",
        )
        obj = wait_condition(cluster, namespace, "app", "Stalled", "True", reason="InvalidSpec")
        ready = condition(obj, "Ready")
        assert ready is not None and ready["status"] == "False"
        assert ready["message"].startswith("spec.revocation.gracePeriod: must be at most 87600h")
        assert "nhi.dev/cleanup" in obj["metadata"]["finalizers"]
        # Stalled means settled: the operator is not retrying it.
        seen = obj["metadata"]["resourceVersion"]
        time.sleep(3)
        again = cluster.get("machineidentity", "app", namespace)
        assert again is not None and again["metadata"]["resourceVersion"] == seen
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for(
        lambda: cluster.get("namespace", namespace) is None,
        timeout=60,
        message="the namespace (and the identity's finalizer) to go",
    )
    assert operator.proc.poll() is None


# ------------------------------------------------------------------------------ rotation


@pytest.fixture
def issuer(operator: OperatorProcess, namespace: str) -> str:
    cluster = _cluster(operator)
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityIssuer",
            "metadata": {"name": "local", "namespace": namespace},
            "spec": {"trustDomain": "example.org", "selfSigned": {"ttl": "48h"}},
        }
    )

    def ready() -> bool:
        obj = cluster.get("identityissuer", "local", namespace)
        return (condition(obj, "Ready") or {}).get("status") == "True"

    wait_for(ready, timeout=60, message="the issuer to be Ready")
    return "local"


def rotations(op: OperatorProcess, namespace: str, credential: str) -> float:
    page = scrape(op)
    found = page.find(
        "nhi_credential_rotations",
        namespace=namespace,
        identity="app",
        credential=credential,
        result="success",
    )
    return sum(s.value for s in found)


def test_a_renewal_fraction_near_one_issues_about_once_a_minute(
    operator: OperatorProcess, namespace: str, issuer: str
) -> None:
    """0.95 of a 10m certificate (notBefore back-dated 1m) asked for a renewal 27 s before
    the certificate was issued: over a thousand issuances a minute."""
    cluster = _cluster(operator)
    cred = {
        "name": "mtls",
        "type": "X509",
        "ttl": "10m",
        "issuerRef": {"kind": "IdentityIssuer", "name": issuer},
    }
    cluster.apply(identity(namespace, credentials=[cred], rotation={"renewBeforeFraction": 0.95}))
    wait_condition(cluster, namespace, "app", "Ready", "True", timeout=60)
    first = cred_status(cluster, namespace, "app", "mtls")
    issued_at = first["lastRotationTime"]
    renewal = first["renewalTime"]
    assert renewal > issued_at  # RFC 3339 in UTC compares as text
    time.sleep(30)
    now = cred_status(cluster, namespace, "app", "mtls")
    assert now["rotationCount"] <= 1, now  # at most one renewal in 30 s
    assert rotations(operator, namespace, "mtls") <= 2
    assert operator.proc.poll() is None


# ------------------------------------------------------------------------------ Unicode


def test_any_unicode_in_text_fields_round_trips(operator: OperatorProcess, namespace: str) -> None:
    """json.dumps wrote the emoji as a surrogate pair, which YAML (apply patches) refuses:
    every apply failed, for ever."""
    cluster = _cluster(operator)
    owner = "équipe 💳 paiements 支付 \u2028 🚀"
    cluster.apply(
        identity(
            namespace,
            owner=owner,
            purpose="Charges cards 💳 via the PSP — « vite »",
            credentials=[{"name": "api", "type": "ServiceAccountToken", "ttl": "15m"}],
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True", timeout=60)
    assert obj["spec"]["owner"] == owner
    sa = cluster.get("serviceaccount", "app", namespace)
    assert sa is not None
    assert sa["metadata"]["annotations"]["nhi.dev/owner"] == owner
    info = scrape(operator).find("nhi_identity_info", namespace=namespace, identity="app")
    assert [s.labels["owner"] for s in info] == [owner]


# ------------------------------------------------------------------------------ X.509 lengths


def test_a_common_name_longer_than_64_bytes_is_refused_naming_the_field(crds: Cluster) -> None:
    """64 characters pass maxLength, but X.509 counts UTF-8 bytes: 128 here."""

    def cluster_issuer(common_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "ClusterIdentityIssuer",
            "metadata": {"name": "long-cn"},
            "spec": {"trustDomain": "example.org", "selfSigned": {"commonName": common_name}},
        }

    proc = crds.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(cluster_issuer("é" * 64)),
        check=False,
    )
    assert proc.returncode != 0
    assert "spec.selfSigned.commonName" in proc.stderr
    assert "must be at most 64 bytes in UTF-8" in proc.stderr
    fits = crds.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(cluster_issuer("é" * 32)),
        check=False,
    )
    assert fits.returncode == 0, fits.stderr
