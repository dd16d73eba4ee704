"""A fuzz run against the real API server with the operator running: a few hundred
MachineIdentities a tenant could write, valid and not, are applied at once.

The specs come from a seeded generator (the same ones every run): Unicode in every text
field (emoji, CJK, line separators, NUL), durations from 0s to 99999999999999h, fractions
next to 0 and 1 and outside, out-of-range generator lengths, DNS names with 64-character
labels, label keys that are not label keys, unknown enum values, names too long. Whatever
the API server admits, the operator must settle (Ready or Stalled) without crashing,
without retrying at speed and without issuing a credential more than once a minute; and
every identity must go when deleted (no finalizer left behind).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_identity import _cluster, condition
from tests.integration.test_metrics import Page, scrape

pytestmark = pytest.mark.integration

SEED = 20261204
COUNT = 200
SETTLE = 30.0  # seconds for every admitted identity to be Ready or Stalled
WATCH = 75.0  # seconds from the first apply to the count of issuances and retries
MINUTE = dt.timedelta(minutes=1)

#: Text as a tenant writes it: any Unicode.
TEXTS = [
    "team-a",
    "équipe paiements",
    "支付团队",
    "💳🚀 payments",
    "line\u2028separator",
    "nel\u0085next",
    "nul\u0000byte",
    "tab\tand\nnewline",
    "del\x7f",
    'quote " backslash \\ud83d',
    "\U0010ffff",
    "x" * 256,
]
#: Text the schema refuses somewhere (over a maxLength, blank).
BAD_TEXTS = ["x" * 1025, "   ", ""]
TTLS = {
    "ServiceAccountToken": ["10m", "15m", "0.5h", "1h", "48h"],
    "X509": ["10m", "1h", "1.5h", "24h", "8760h"],
    "StaticSecret": ["1h", "90m", "720h", "8760h"],
}
BAD_DURATIONS = ["0s", "9m", "49h", "87601h", "99999999999999h", "9999999h9999999h", "1d", ""]
DURATIONS = ["1m", "2m", "90s", "1h30m", "72h", "87600h"]
FRACTIONS: list[Any] = [0.95, 0.99, 0.999999, 1e-9, 0.33, 0.5]
BAD_FRACTIONS: list[Any] = [1, 0, -1, 1e300, "0.5", True]
DNS_NAMES = ["app.svc", "a" * 63 + ".svc", "api.shop.svc.cluster.local"]
BAD_DNS_NAMES = ["a" * 64 + ".svc", "UPPER.svc", "x" * 254, "é.svc"]
LABEL_KEYS = ["app", "app.kubernetes.io/name", "k" * 63]
BAD_LABEL_KEYS = ["app name", "é", "-bad", "a/b/c", "k" * 64]


def generated(rng: random.Random, index: int, namespace: str, issuer: str) -> dict[str, Any]:
    """One MachineIdentity a tenant could write: every field plausible, one in ten not."""

    def pick(good: list[Any], bad: list[Any] | None = None) -> Any:
        return rng.choice(bad) if bad and rng.random() < 0.1 else rng.choice(good)

    spec: dict[str, Any] = {"owner": pick(TEXTS, BAD_TEXTS)}
    if rng.random() < 0.5:
        spec["purpose"] = pick(TEXTS, BAD_TEXTS)
    credentials = []
    for c in range(rng.choice([0, 1, 1, 2, 3])):
        kind = rng.choice(list(TTLS))
        cred: dict[str, Any] = {"name": f"c{c}", "type": kind}
        if rng.random() < 0.7:
            cred["ttl"] = pick(TTLS[kind], BAD_DURATIONS)
        if kind == "ServiceAccountToken" and rng.random() < 0.4:
            cred["audiences"] = [pick(TEXTS[:6])]
        if kind == "X509":
            cred["issuerRef"] = {"kind": "ClusterIdentityIssuer", "name": issuer}
            cred["keyAlgorithm"] = rng.choice(["ECDSA-P256", "ECDSA-P384", "Ed25519"])
            if rng.random() < 0.5:
                cred["dnsNames"] = [pick(DNS_NAMES, BAD_DNS_NAMES)]
        if kind == "StaticSecret" and rng.random() < 0.5:
            cred["generator"] = {
                "length": pick([8, 32, 4096], [7, 4097]),
                "charset": pick(["hex", "ascii-printable", "base64url"], ["emoji"]),
            }
        credentials.append(cred)
    if credentials or rng.random() < 0.5:
        spec["credentials"] = credentials
    roll = rng.random()
    if roll < 0.45:
        spec["rotation"] = {"renewBeforeFraction": pick(FRACTIONS, BAD_FRACTIONS)}
    elif roll < 0.55:
        spec["rotation"] = {"renewBefore": pick(["1m", "5m", "9m"], BAD_DURATIONS)}
    if rng.random() < 0.25:
        spec["lifetime"] = {"validFor": pick(["72h", "87600h"], BAD_DURATIONS)}
    if rng.random() < 0.4:
        spec["revocation"] = {
            "onWorkloadDeletion": pick(["Revoke", "Retain"], ["Bogus"]),
            "gracePeriod": pick(DURATIONS, BAD_DURATIONS),
        }
    if rng.random() < 0.3:
        spec["workloads"] = {
            "selector": {
                "matchLabels": {pick(LABEL_KEYS, BAD_LABEL_KEYS): pick(["web", ""], ["é", "a b"])}
            }
        }
    if rng.random() < 0.3:
        spec["permissions"] = {
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": [pick(TEXTS)]}]
        }
    elif rng.random() < 0.05:
        spec["permissions"] = {
            "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
        }
    name = f"fz-{index:03d}" if rng.random() < 0.97 else f"fz-{index:03d}-" + "n" * 60
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def healthy(op: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5) as r:
        return int(r.status) == 200


def total(page: Page, family: str, sample: str = "", **match: str) -> float:
    """The sum of a family's samples (of one sample name, e.g. a histogram's _count)."""
    return sum(s.value for s in page.find(family, **match) if not sample or s.name == sample)


def identities(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "machineidentities", "-n", namespace, "-o", "json").stdout
    return list(json.loads(out)["items"])


def settled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    if status.get("phase") in ("Revoked", "Expired"):
        return True
    return any((condition(obj, t) or {}).get("status") == "True" for t in ("Ready", "Stalled"))


@pytest.fixture
def fuzz_issuer(operator: OperatorProcess) -> Iterator[str]:
    cluster = _cluster(operator)
    name = f"fuzz-{uuid.uuid4().hex[:6]}"
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "ClusterIdentityIssuer",
            "metadata": {"name": name},
            "spec": {"trustDomain": "fuzz.example", "selfSigned": {"ttl": "48h"}},
        }
    )
    wait_for(
        lambda: (
            (condition(cluster.get("clusteridentityissuer", name), "Ready") or {}).get("status")
            == "True"
        ),
        timeout=60,
        message="the fuzz issuer to be Ready",
    )
    yield name
    cluster.kubectl("delete", "clusteridentityissuer", name, "--wait=false", check=False)


def test_fuzzed_identities_settle_without_loops_and_all_go(
    operator: OperatorProcess, namespace: str, fuzz_issuer: str
) -> None:
    cluster = _cluster(operator)
    rng = random.Random(SEED)
    bodies = [generated(rng, i, namespace, fuzz_issuer) for i in range(COUNT)]
    log_before = len(operator.log())
    before = scrape(operator)
    started = dt.datetime.now(dt.UTC)

    # Applied in a few batches; kubectl goes on past an object the API server refuses and
    # reports it (--validate=false: no client-side check, every object meets the server).
    refused = 0
    for i in range(0, COUNT, 50):
        batch = {"apiVersion": "v1", "kind": "List", "items": bodies[i : i + 50]}
        proc = cluster.kubectl(
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            "-",
            input=json.dumps(batch),
            check=False,
        )
        refused += proc.stderr.count("Error from server") + proc.stderr.count("error:")
    admitted = identities(cluster, namespace)
    names = {o["metadata"]["name"] for o in admitted}
    # A fair share of both: the generator is meant to hit the rules, and to pass them.
    assert 40 <= len(names) <= COUNT - 40, (len(names), refused)

    def all_settled() -> list[dict[str, Any]] | None:
        assert operator.proc.poll() is None, "the operator exited"
        objs = identities(cluster, namespace)
        pending = [o["metadata"]["name"] for o in objs if not settled(o)]
        return objs if not pending else None

    objs = wait_for(all_settled, timeout=SETTLE + 30, interval=1.0, message="every identity")
    settled_at = dt.datetime.now(dt.UTC)
    assert healthy(operator)
    ready = [o for o in objs if (condition(o, "Ready") or {}).get("status") == "True"]
    stalled = [o for o in objs if (condition(o, "Stalled") or {}).get("status") == "True"]
    assert ready and stalled, (len(ready), len(stalled))
    for obj in stalled:  # a Stalled identity names what is wrong
        message = (condition(obj, "Ready") or {}).get("message", "")
        assert message.startswith(("spec", "the API server refused", "IdentityPolicy")), message

    # Nothing issued more than once a minute, nothing retried at speed: watched past the
    # first minute, when values with renewBeforeFraction near 1 are renewed.
    time.sleep(max(5.0, WATCH - (dt.datetime.now(dt.UTC) - started).total_seconds()))
    assert healthy(operator)
    after = scrape(operator)
    elapsed = dt.datetime.now(dt.UTC) - started
    per_credential = 1 + int(elapsed / MINUTE)
    credentials = sum(
        len((o.get("status") or {}).get("credentials") or [])
        for o in identities(cluster, namespace)
    )
    issued = total(after, "nhi_credential_rotations", namespace=namespace, result="success")
    assert issued <= credentials * per_credential + 5, (issued, credentials, elapsed)
    for obj in identities(cluster, namespace):
        for cred in (obj.get("status") or {}).get("credentials") or []:
            assert cred["rotationCount"] <= per_credential, (obj["metadata"]["name"], cred)
    kind = {"kind": "MachineIdentity"}
    errors = total(after, "nhi_reconcile_errors", **kind) - total(
        before, "nhi_reconcile_errors", **kind
    )
    histogram, count = "nhi_reconcile_duration_seconds", "nhi_reconcile_duration_seconds_count"
    reconciles = total(after, histogram, count, **kind) - total(before, histogram, count, **kind)
    assert errors <= 20, errors
    assert reconciles <= 20 * len(names), (reconciles, len(names))
    new_log = operator.log()[log_before:]
    assert "watch-cache consumer failed" not in new_log
    assert "Traceback" not in new_log
    print(
        f"fuzz: {COUNT} applied, {len(names)} admitted ({len(ready)} Ready, {len(stalled)} "
        f"Stalled) in {(settled_at - started).total_seconds():.0f}s; {issued:.0f} issuances "
        f"for {credentials} credentials, {reconciles:.0f} reconciles, {errors:.0f} retries"
    )

    # Every identity goes when deleted: no finalizer left behind.
    cluster.kubectl("delete", "machineidentities", "--all", "-n", namespace, "--wait=false")
    wait_for(
        lambda: not identities(cluster, namespace),
        timeout=90,
        interval=1.0,
        message="every identity to be deleted",
    )
    assert healthy(operator)
    assert operator.proc.poll() is None
