"""The issuer parts against an in-memory API: rotation, bundles, CRLs and status, fake clock.

The real API server is exercised by tests/integration/test_issuer.py; here time is walked
forward by months without sleeping, and every request the service makes is counted.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import functools
import json
from collections.abc import Mapping
from typing import Any, cast

import pytest
from cryptography import x509

from nhi.builders.issuer import parse_root_secret
from nhi.crypto import (
    PrivateKey,
    build_self_signed_ca,
    cert_pem,
    fingerprint_sha256,
    generate_key,
    is_revoked,
    issue_leaf,
    load_cert_chain,
    load_crl,
    private_key_pem,
)
from nhi.k8s.client import Api, Conflict, Forbidden, Invalid, NotFound
from nhi.k8s.events import EventRecorder
from nhi.policies.provenance import configmap_origin
from nhi.reconcilers.issuers import (
    IssuerNotReady,
    IssuerOutcome,
    IssuerService,
    compute_status,
    trust_bundles,
)

pytestmark = pytest.mark.unit

START = dt.datetime(2030, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
OPNS = "nhi-system"
CRL = "nhi-crl-clusteridentityissuer-mesh"  # the default CRL of ClusterIdentityIssuer "mesh"


class FakeApi:
    """Just enough of nhi.k8s.client.Api, in memory, counting every request.

    Like the API server: a POST fails when the name is taken, an apply or delete that names
    a UID fails unless the object still has it, and every object gets a UID and a creation
    time of its own.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, str]] = []
        self.version = 0
        self.created = START - DAY  # the API server's clock, for creationTimestamp

    def _key(self, kind: str, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (kind, namespace or "", name)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def _new(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        meta["uid"] = f"uid-{meta['name']}-{self.version}"
        meta["creationTimestamp"] = self.created.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.created += dt.timedelta(seconds=1)

    def writes(self, kind: str | None = None) -> list[tuple[str, str, str, str]]:
        return [
            c
            for c in self.calls
            if c[0] in ("apply", "patch", "delete", "create") and (kind is None or c[1] == kind)
        ]

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        obj = copy.deepcopy(obj)
        if "uid" not in obj["metadata"]:
            self._new(obj)
        obj["metadata"].setdefault("generation", 1)
        self._bump(obj)
        self.objects[self._key(obj["kind"], meta.get("namespace"), meta["name"])] = obj

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, namespace or "", name))
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, namespace or "", label_selector or ""))
        wanted = dict(p.split("=", 1) for p in (label_selector or "").split(",") if p)
        out = []
        for (k, ns, _), obj in self.objects.items():
            labels = obj["metadata"].get("labels") or {}
            if k == kind and (namespace is None or ns == namespace):
                if all(labels.get(a) == b for a, b in wanted.items()):
                    out.append(copy.deepcopy(obj))
        return out

    async def apply(self, obj: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        meta = obj["metadata"]
        self.calls.append(("apply", obj["kind"], meta.get("namespace", ""), meta["name"]))
        key = self._key(obj["kind"], meta.get("namespace"), meta["name"])
        new = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        if meta.get("uid"):
            if old is None:
                raise Conflict(409, "Conflict", "uid mismatch: no existing object was found")
            if old["metadata"]["uid"] != meta["uid"]:
                raise Invalid(422, "Invalid", "metadata.uid: field is immutable")
        if old is None:
            self._new(new)
        else:
            for k in ("uid", "creationTimestamp"):
                new["metadata"][k] = old["metadata"][k]
        self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    async def patch(
        self, kind: str, namespace: str | None, name: str, patch: Any, **_: Any
    ) -> dict[str, Any]:
        self.calls.append(("patch", kind, namespace or "", name))
        obj = self.objects.get(self._key(kind, namespace, name))
        if obj is None:
            raise NotFound(404, "NotFound", "not found")
        if isinstance(patch, list):  # a finalizer's JSON patch (nhi.runtime.finalizers)
            _json_patch_finalizers(obj, patch)
            self._bump(obj)
            return copy.deepcopy(obj)
        status = obj.setdefault("status", {})
        for k, v in patch["status"].items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        return copy.deepcopy(obj)

    async def create(self, kind: str, namespace: str | None, body: Any, **_: Any) -> Any:
        name = body["metadata"]["name"]
        self.calls.append(("create", kind, namespace or "", name))
        key = self._key(kind, namespace, name)
        if key in self.objects:
            raise Conflict(409, "AlreadyExists", f"{name} already exists")
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["namespace"] = namespace or ""
        obj.setdefault("kind", kind)
        self._new(obj)
        self._bump(obj)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def delete(
        self, kind: str, namespace: str | None, name: str, *, uid: str | None = None, **_: Any
    ) -> bool:
        self.calls.append(("delete", kind, namespace or "", name))
        key = self._key(kind, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            return False
        if uid and obj["metadata"]["uid"] != uid:
            raise Conflict(409, "Conflict", "Precondition failed: UID in precondition")
        del self.objects[key]
        return True


def _json_patch_finalizers(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply the test/add/remove operations on metadata.finalizers the runtime sends."""
    meta = obj["metadata"]
    for op in ops:
        path = op["path"].removeprefix("/metadata/finalizers")
        current = meta.get("finalizers") or []
        if op["op"] == "test":
            got = current if not path else current[int(path[1:])]
            if got != op["value"]:
                raise Conflict(422, "Invalid", "the test operation failed")
        elif op["op"] == "add":
            meta["finalizers"] = [*current, op["value"]] if path == "/-" else list(op["value"])
        elif op["op"] == "remove":
            del current[int(path[1:])]
            meta["finalizers"] = current


class Clock:
    """The operator's clock (nhi.runtime.clock.Clock), set by assigning ``at``."""

    def __init__(self) -> None:
        self.at = START

    def now(self) -> dt.datetime:
        return self.at

    def monotonic(self) -> float:
        return (self.at - START).total_seconds()


MESH = ("ClusterIdentityIssuer", "", "mesh")


async def key_of(svc: IssuerService) -> bytes:
    return (await svc.provenance.get()).key


def make_service() -> tuple[IssuerService, FakeApi, Clock, list[Any]]:
    api = FakeApi()
    clock = Clock()
    fake = cast(Api, api)
    svc = IssuerService(fake, EventRecorder(fake), operator_namespace=OPNS, clock=clock)
    changes: list[Any] = []
    svc.on_change = changes.append
    return svc, api, clock, changes


def issuer_body(
    kind: str = "ClusterIdentityIssuer", namespace: str | None = None, **spec: Any
) -> dict[str, Any]:
    body_spec: dict[str, Any] = {"trustDomain": "example.org"}
    body_spec.update(spec or {"selfSigned": {"ttl": "720h"}})
    meta: dict[str, Any] = {"name": "mesh"}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "nhi.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": body_spec}


async def reconcile(svc: IssuerService, api: FakeApi, body: dict[str, Any]) -> IssuerOutcome:
    """Store the body (as the API server would) and reconcile what is stored."""
    meta = body["metadata"]
    key = (
        "ClusterIdentityIssuer" if body["kind"] == "ClusterIdentityIssuer" else body["kind"],
        meta.get("namespace", ""),
        meta["name"],
    )
    if (body["kind"], meta.get("namespace", ""), meta["name"]) not in api.objects:
        api.put(body)
    stored = api.objects[(body["kind"], meta.get("namespace", ""), meta["name"])]
    outcome = await svc.reconcile(copy.deepcopy(stored))
    assert outcome is not None, key
    return outcome


async def drain(svc: IssuerService) -> None:
    """Run the trust bundles' work queue until it is empty."""
    svc.bundles.start()
    try:
        await asyncio.sleep(0)
        await svc.bundles.queue.wait_idle()
    finally:
        await svc.bundles.stop()


def bundle_roots(api: FakeApi, ns: str, name: str = "nhi-trust-bundle") -> list[x509.Certificate]:
    return load_cert_chain(api.objects[("ConfigMap", ns, name)]["data"]["ca.crt"])


def status_of(api: FakeApi, kind: str = "ClusterIdentityIssuer", ns: str = "") -> dict[str, Any]:
    return dict(api.objects[(kind, ns, "mesh")].get("status") or {})


def ready(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@functools.cache
def ca_key() -> PrivateKey:
    return generate_key("ECDSA-P256")


def ca_secret(cert: x509.Certificate, key: PrivateKey, name: str = "mesh-root") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": OPNS},
        "data": {
            "tls.crt": base64.b64encode(cert_pem(cert)).decode(),
            "tls.key": base64.b64encode(private_key_pem(key)).decode(),
        },
    }


# ---------------------------------------------------------------------------- self-signed


async def test_self_signed_issuer_generates_its_root_and_becomes_ready() -> None:
    svc, api, _, changes = make_service()
    outcome = await reconcile(svc, api, issuer_body())
    assert outcome.ready, outcome.message
    secret = api.objects[("Secret", OPNS, "nhi-issuer-mesh")]
    root = parse_root_secret(secret)
    status = status_of(api)
    assert ready(status)["status"] == "True"
    assert ready(status)["reason"] == "CAReady"
    assert status["caFingerprint"] == fingerprint_sha256(root.cert)
    assert status["notAfter"] == root.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["crlNumber"] == 1
    assert status["revokedCount"] == 0
    assert root.cert.subject.rfc4514_string() == "CN=example.org"
    crl = api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]
    assert not is_revoked(crl, root.cert, 1)
    assert changes == [("ClusterIdentityIssuer", "", "mesh")]

    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "any-namespace")
    assert signer.ca_cert == root.cert
    assert load_cert_chain(signer.bundle_pem) == [root.cert]

    # Nothing changed: a second reconcile reads and writes nothing but two GETs.
    api.calls.clear()
    again = await reconcile(svc, api, issuer_body())
    assert again.ready
    assert api.writes() == []
    assert [c[0] for c in api.calls] == ["get", "get"]


async def test_signer_is_served_from_memory() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    api.calls.clear()
    for _ in range(5):
        await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert api.calls == []


async def test_signer_waits_for_the_controller_to_reconcile_an_issuer_it_has_not_seen() -> None:
    svc, api, _, _ = make_service()
    api.put(issuer_body())
    svc.start()  # as the operator does at start-up: the issuer queue runs
    try:
        signer = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
        assert signer.trust_domain == "example.org"
        with pytest.raises(IssuerNotReady) as err:
            await svc.signer("ClusterIdentityIssuer", "other", "ns")
        assert err.value.reason == "IssuerNotFound"
        with pytest.raises(IssuerNotReady) as err:
            await svc.signer("IdentityIssuer", "mesh", "ns")
        assert err.value.reason == "IssuerNotFound"
    finally:
        await svc.stop()


async def test_root_rotates_with_a_third_left_and_the_old_root_stays_trusted() -> None:
    svc, api, clock, changes = make_service()
    await reconcile(svc, api, issuer_body())
    first = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    await svc.publish_trust_bundle(first, "team-a")
    await svc.publish_trust_bundle(first, "team-b")
    changes.clear()

    clock.at = START + 19 * DAY  # 11 of 30 days left: keep
    assert (await reconcile(svc, api, issuer_body())).ready
    assert (await svc.signer("ClusterIdentityIssuer", "mesh", "ns")).ca_cert == first.ca_cert

    number = status_of(api)["crlNumber"]
    clock.at = START + 21 * DAY  # 9 of 30 days left: rotate
    outcome = await reconcile(svc, api, issuer_body())
    assert outcome.ready
    second = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert second.ca_cert != first.ca_cert
    assert load_cert_chain(second.bundle_pem) == [second.ca_cert, first.ca_cert]
    stored = parse_root_secret(api.objects[("Secret", OPNS, "nhi-issuer-mesh")])
    assert stored.cert == second.ca_cert
    assert stored.previous == (first.ca_cert,)
    assert changes == [("ClusterIdentityIssuer", "", "mesh")]
    # Every namespace that had the bundle has the new one, with both roots.
    await drain(svc)
    for ns in ("team-a", "team-b"):
        data = api.objects[("ConfigMap", ns, "nhi-trust-bundle")]["data"]["ca.crt"]
        assert load_cert_chain(data) == [second.ca_cert, first.ca_cert]
    # The CRL is re-signed by the new root.
    crl = api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]
    assert not is_revoked(crl, second.ca_cert, 1)
    assert status_of(api)["crlNumber"] == number + 1
    # A leaf of the old root is still trusted by the bundle (the old root is in it).
    assert first.ca_cert in load_cert_chain(second.bundle_pem)

    # When the old root expires it leaves the bundle and the Secret.
    clock.at = first.ca_cert.not_valid_after_utc + dt.timedelta(seconds=1)
    assert (await reconcile(svc, api, issuer_body())).ready
    third = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert third.ca_cert == second.ca_cert
    assert load_cert_chain(third.bundle_pem) == [second.ca_cert]
    assert parse_root_secret(api.objects[("Secret", OPNS, "nhi-issuer-mesh")]).previous == ()
    await drain(svc)
    assert bundle_roots(api, "team-a") == [second.ca_cert]


async def test_spec_changes_to_the_root_apply_at_the_next_rotation() -> None:
    svc, api, clock, _ = make_service()
    await reconcile(svc, api, issuer_body())
    first = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    body = issuer_body(selfSigned={"ttl": "720h", "keyAlgorithm": "Ed25519"})
    api.objects[("ClusterIdentityIssuer", "", "mesh")]["spec"] = body["spec"]
    api.objects[("ClusterIdentityIssuer", "", "mesh")]["metadata"]["generation"] = 2
    outcome = await reconcile(svc, api, body)
    assert outcome.ready
    assert "apply at the next rotation" in outcome.message
    assert (await svc.signer("ClusterIdentityIssuer", "mesh", "ns")).ca_cert == first.ca_cert
    clock.at = START + 21 * DAY
    await reconcile(svc, api, body)
    rotated = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert type(rotated.ca_key).__name__ == "Ed25519PrivateKey"


async def test_deleted_root_secret_is_restored_from_memory() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    first = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    del api.objects[("Secret", OPNS, "nhi-issuer-mesh")]
    assert (await reconcile(svc, api, issuer_body())).ready
    assert parse_root_secret(api.objects[("Secret", OPNS, "nhi-issuer-mesh")]).cert == (
        first.ca_cert
    )


async def test_a_foreign_secret_with_the_root_name_is_not_overwritten() -> None:
    svc, api, _, _ = make_service()
    api.put({"kind": "Secret", "metadata": {"name": "nhi-issuer-mesh", "namespace": OPNS}})
    outcome = await reconcile(svc, api, issuer_body())
    assert not outcome.ready
    assert outcome.reason == "RootSecretConflict"
    assert api.writes("Secret") == []


async def test_namespaced_self_signed_issuer_keeps_everything_in_its_namespace() -> None:
    svc, api, _, _ = make_service()
    outcome = await reconcile(svc, api, issuer_body("IdentityIssuer", "team-a"))
    assert outcome.ready
    secret = api.objects[("Secret", "team-a", "nhi-issuer-mesh")]
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "IdentityIssuer"
    assert ("ConfigMap", "team-a", "nhi-crl-identityissuer-mesh") in api.objects
    signer = await svc.signer("IdentityIssuer", "mesh", "team-a")
    assert signer.namespace == "team-a"


# -------------------------------------------------------------------------------------- ca


async def test_ca_issuer_waits_for_its_secret_then_recovers() -> None:
    svc, api, _, changes = make_service()
    body = issuer_body(ca={"secretName": "mesh-root"})
    outcome = await reconcile(svc, api, body)
    assert outcome.reason == "CASecretNotFound"
    assert outcome.retry and outcome.stalled
    status = status_of(api)
    assert ready(status)["status"] == "False"
    assert "nhi-system/mesh-root" in ready(status)["message"]
    assert "caFingerprint" not in status
    with pytest.raises(IssuerNotReady) as err:
        await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert err.value.reason == "CASecretNotFound"
    assert svc.watches_secret(OPNS, "mesh-root")
    # Without a watch event for the Secret, a timer looks again soon.
    assert svc.queue.scheduled() == 1
    assert svc.queue._due[("ClusterIdentityIssuer", "", "mesh")] - svc.queue._monotonic() <= 10

    cert = build_self_signed_ca("Mesh Root", ca_key(), START - DAY, 365 * DAY)
    api.put(ca_secret(cert, ca_key()))
    changes.clear()
    outcome = await reconcile(svc, api, body)
    assert outcome.ready, outcome.message
    assert changes == [("ClusterIdentityIssuer", "", "mesh")]
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    assert signer.ca_cert == cert
    assert status_of(api)["caFingerprint"] == fingerprint_sha256(cert)


async def test_ca_issuer_with_an_expired_ca_reports_it() -> None:
    svc, api, _, _ = make_service()
    old = build_self_signed_ca("Old Root", ca_key(), START - 400 * DAY, 365 * DAY)
    api.put(ca_secret(old, ca_key()))
    outcome = await reconcile(svc, api, issuer_body(ca={"secretName": "mesh-root"}))
    assert outcome.reason == "CAExpired"
    assert status_of(api)["notAfter"] == old.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_vault_issuer_waits_for_its_token_secret_without_calling_vault() -> None:
    svc, api, _, _ = make_service()
    vault = {
        "address": "https://vault.invalid:8200",
        "pki": {"role": "r"},
        "auth": {"tokenSecretRef": {"name": "vault-token"}},
    }
    outcome = await reconcile(svc, api, issuer_body(vault=vault))
    assert outcome.reason == "VaultAuthMaterial"
    assert outcome.message == (
        "spec.vault.auth.tokenSecretRef: Secret nhi-system/vault-token was not found"
    )
    assert outcome.stalled and outcome.retry
    status = status_of(api)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "False",
        "Reconciling": "False",
        "Stalled": "True",
    }
    # The Secret it reads is watched: creating it re-checks the issuer.
    assert svc.watches_secret("nhi-system", "vault-token")


async def test_invalid_spec_is_stalled() -> None:
    svc, api, _, _ = make_service()
    outcome = await reconcile(svc, api, issuer_body(selfSigned={"ttl": "10m"}))
    assert outcome.reason == "InvalidSpec"
    assert "spec.selfSigned.ttl" in outcome.message


@pytest.mark.parametrize(
    ("self_signed", "words"),
    [
        # 64 characters, 128 bytes of UTF-8: refused by the model, named.
        ({"commonName": "é" * 64}, "spec.selfSigned.commonName: must be at most 64 bytes"),
        ({"ttl": "99999999999999h"}, "spec.selfSigned.ttl: must be at most 87600h"),
    ],
)
async def test_a_spec_x509_cannot_hold_is_stalled_naming_the_field(
    self_signed: dict[str, Any], words: str
) -> None:
    svc, api, _, _ = make_service()
    outcome = await reconcile(svc, api, issuer_body(selfSigned=self_signed))
    assert outcome.stalled and outcome.reason == "InvalidSpec"
    assert words in outcome.message
    assert not any(kind == "Secret" for kind, _, _ in api.objects)


async def test_an_input_the_crypto_layer_refuses_is_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the model let through, a CA the crypto layer cannot make is not retried at
    full speed: Stalled, naming spec.selfSigned."""
    import nhi.reconcilers.issuers.sources.self_signed as self_signed
    from nhi.crypto import CryptoError

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CryptoError("common_name must be at most 64 bytes in UTF-8 (it has 65)")

    monkeypatch.setattr(self_signed, "build_self_signed_ca", refuse)
    svc, api, _, _ = make_service()
    outcome = await reconcile(svc, api, issuer_body())
    assert outcome.stalled and outcome.reason == "InvalidSpec"
    assert outcome.message.startswith("spec.selfSigned: the CA cannot be made as specified")
    assert ready(status_of(api))["reason"] == "InvalidSpec"


# ------------------------------------------------------------------------------ bundles


async def test_trust_bundle_is_published_once_per_namespace() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")
    api.calls.clear()
    await svc.publish_trust_bundle(signer, "team-a")
    cm = api.objects[("ConfigMap", "team-a", "nhi-trust-bundle")]
    assert cm["data"]["ca.crt"].encode() == signer.bundle_pem
    assert cm["metadata"]["labels"]["nhi.dev/trust-bundle"] == "true"
    assert "ownerReferences" not in cm["metadata"]
    # Created with a POST, then tagged with the provenance of the UID it was given.
    assert [c[0] for c in api.writes()] == ["create", "apply"]
    tag = cm["metadata"]["annotations"]["nhi.dev/provenance"]
    assert configmap_origin(cm, key=await key_of(svc), purpose="trust-bundle") == "ours"
    assert tag
    api.calls.clear()
    await svc.publish_trust_bundle(signer, "team-a")
    assert api.calls == []


async def test_published_namespaces_are_rebuilt_after_a_restart() -> None:
    svc, api, clock, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")
    await svc.publish_trust_bundle(signer, "team-a")
    # A new process: nothing in memory, the objects are still there.
    fresh = IssuerService(cast(Api, api), EventRecorder(cast(Api, api)), OPNS, clock)
    fresh.users = lambda ns: {MESH} if ns == "team-a" else set()
    clock.at = START + 21 * DAY
    stored = api.objects[("ClusterIdentityIssuer", "", "mesh")]
    assert (await fresh.reconcile(copy.deepcopy(stored))) is not None
    rotated = await fresh.signer("ClusterIdentityIssuer", "mesh", "team-a")
    assert rotated.ca_cert != signer.ca_cert
    fresh.sweep_bundles()  # as the runtime does once it has listed every identity
    await drain(fresh)
    assert bundle_roots(api, "team-a") == [rotated.ca_cert, signer.ca_cert]


async def test_a_foreign_trust_bundle_configmap_is_a_conflict() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    api.put({"kind": "ConfigMap", "metadata": {"name": "nhi-trust-bundle", "namespace": "x"}})
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "x")
    with pytest.raises(IssuerNotReady) as err:
        await svc.publish_trust_bundle(signer, "x")
    assert err.value.reason == "TrustBundleConflict"
    assert "ConfigMap x/nhi-trust-bundle" in err.value.message


# ----------------------------------------------------------------------------------- CRL


def _leaf_serial(signer_cert: x509.Certificate, key: PrivateKey) -> int:
    leaf = issue_leaf(
        ca_cert=signer_cert,
        ca_key=key,
        public_key=generate_key("ECDSA-P256").public_key(),
        spiffe_id="spiffe://example.org/ns/a/sa/b",
        dns_names=[],
        now=START,
        ttl=DAY,
    )
    return int(leaf.serial_number)


async def test_revoke_publishes_a_signed_crl_and_is_idempotent() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    serial = _leaf_serial(signer.ca_cert, signer.ca_key)
    await svc.revoke(signer, [(serial, START)])
    pem = api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]
    assert is_revoked(pem, signer.ca_cert, serial)
    assert not is_revoked(pem, signer.ca_cert, serial + 1)
    crl = load_crl(pem)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2

    api.calls.clear()
    await svc.revoke(signer, [(serial, START + DAY)])
    assert api.writes() == []  # already listed: nothing to do
    assert len(list(load_crl(api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]))) == 1

    await svc.revoke(signer, [(serial, START), (serial + 7, START)])
    pem = api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]
    assert is_revoked(pem, signer.ca_cert, serial + 7)
    assert len(list(load_crl(pem))) == 2

    await reconcile(svc, api, issuer_body())
    assert status_of(api)["crlNumber"] == 3
    assert status_of(api)["revokedCount"] == 2


async def test_the_published_crl_is_the_state() -> None:
    svc, api, clock, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "ns")
    await svc.revoke(signer, [(111, START)])
    # Another process (after a restart) adds to what is published, not to an empty list.
    fresh = IssuerService(cast(Api, api), EventRecorder(cast(Api, api)), OPNS, clock)
    stored = api.objects[("ClusterIdentityIssuer", "", "mesh")]
    await fresh.reconcile(copy.deepcopy(stored))
    await fresh.revoke(signer, [(222, START)])
    pem = api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"]
    assert is_revoked(pem, signer.ca_cert, 111)
    assert is_revoked(pem, signer.ca_cert, 222)


async def test_crl_is_re_signed_before_its_next_update() -> None:
    svc, api, clock, _ = make_service()
    body = issuer_body(selfSigned={"ttl": "720h"}, crl={"validity": "24h"})
    first = await reconcile(svc, api, body)
    assert first.next_due == START + dt.timedelta(hours=16)
    clock.at = START + dt.timedelta(hours=15)
    await reconcile(svc, api, body)
    assert status_of(api)["crlNumber"] == 1
    clock.at = START + dt.timedelta(hours=17)
    await reconcile(svc, api, body)
    assert status_of(api)["crlNumber"] == 2
    crl = load_crl(api.objects[("ConfigMap", OPNS, CRL)]["data"]["ca.crl"])
    assert crl.next_update_utc == clock.at.replace(microsecond=0) + DAY


async def test_cleanup_removes_a_cluster_issuers_objects() -> None:
    svc, api, _, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")
    await svc.publish_trust_bundle(signer, "team-a")
    stored = api.objects[("ClusterIdentityIssuer", "", "mesh")]
    stored["metadata"]["deletionTimestamp"] = "2030-01-15T12:00:00Z"
    removed = await svc.cleanup(copy.deepcopy(stored))
    assert sorted(removed) == [
        f"ConfigMap/nhi-system/{CRL}",
        "ConfigMap/team-a/nhi-trust-bundle",
        "Secret/nhi-system/nhi-issuer-mesh",
    ]
    assert [k for k in api.objects if k[0] in ("ConfigMap", "Secret")] == [
        ("Secret", OPNS, "nhi-provenance-key")
    ]
    with pytest.raises(IssuerNotReady):
        await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")


# -------------------------------------------------------------------------------- status


def test_compute_status_keeps_transition_times_and_removes_stale_fields() -> None:
    cert = build_self_signed_ca("x", ca_key(), START, DAY)
    ok = IssuerOutcome(True, "CAReady", "fine", cert=cert, crl_number=4, revoked_count=1)
    first = compute_status({}, 1, ok, START)
    assert first["caFingerprint"] == fingerprint_sha256(cert)
    assert first["crlNumber"] == 4
    later = compute_status(first, 1, ok, START + DAY)
    assert later == first
    broken = IssuerOutcome(False, "CASecretNotFound", "gone", stalled=True)
    after = compute_status(first, 2, broken, START + DAY)
    assert after["caFingerprint"] is None  # removed by the merge patch
    assert "crlNumber" not in after  # kept as it was
    conds = {c["type"]: c for c in after["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert conds["Stalled"]["status"] == "True"
    assert conds["Ready"]["observedGeneration"] == 2


async def test_namespace_scoped_install_lists_the_namespaces_it_serves() -> None:
    svc, api, clock, _ = make_service()
    await reconcile(svc, api, issuer_body())
    signer = await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")
    await svc.publish_trust_bundle(signer, "team-a")

    class ScopedApi(FakeApi):
        async def list(
            self, kind: str, namespace: str | None = None, *, label_selector: str | None = None
        ) -> list[dict[str, Any]]:
            if namespace is None:
                raise Forbidden(403, "Forbidden", "cannot list configmaps at the cluster scope")
            return await super().list(kind, namespace, label_selector=label_selector)

    scoped = ScopedApi()
    scoped.objects = api.objects
    fake = cast(Api, scoped)
    fresh = IssuerService(fake, EventRecorder(fake), OPNS, clock, namespaces=["team-a", "team-*"])
    fresh.users = lambda ns: {MESH} if ns == "team-a" else set()
    clock.at = START + 21 * DAY
    await fresh.reconcile(copy.deepcopy(api.objects[("ClusterIdentityIssuer", "", "mesh")]))
    rotated = await fresh.signer("ClusterIdentityIssuer", "mesh", "team-a")
    fresh.sweep_bundles()
    await drain(fresh)
    assert bundle_roots(api, "team-a") == [rotated.ca_cert, signer.ca_cert]
    assert {c[2] for c in scoped.calls if c[0] == "list"} == {"team-a", OPNS}


# ------------------------------------------------------------------ issuers side by side


def named(
    name: str, kind: str = "ClusterIdentityIssuer", namespace: str | None = None, **spec: Any
) -> dict[str, Any]:
    body = issuer_body(kind, namespace, **spec)
    body["metadata"]["name"] = name
    return body


async def three_issuers(svc: IssuerService, api: FakeApi) -> dict[str, Any]:
    """Two ClusterIdentityIssuers and an IdentityIssuer in team-a, all with default settings."""
    for body in (named("mesh"), named("edge"), named("local", "IdentityIssuer", "team-a")):
        outcome = await reconcile(svc, api, body)
        assert outcome.ready, outcome.message
    return {
        "mesh": await svc.signer("ClusterIdentityIssuer", "mesh", "team-a"),
        "edge": await svc.signer("ClusterIdentityIssuer", "edge", "team-a"),
        "local": await svc.signer("IdentityIssuer", "local", "team-a"),
    }


async def test_issuers_with_default_settings_share_a_namespace() -> None:
    svc, api, _, _ = make_service()
    signers = await three_issuers(svc, api)
    # Each has a CRL of its own, signed by its own CA.
    for ns, name, signer in (
        (OPNS, "nhi-crl-clusteridentityissuer-mesh", signers["mesh"]),
        (OPNS, "nhi-crl-clusteridentityissuer-edge", signers["edge"]),
        ("team-a", "nhi-crl-identityissuer-local", signers["local"]),
    ):
        pem = api.objects[("ConfigMap", ns, name)]["data"]["ca.crl"]
        assert not is_revoked(pem, signer.ca_cert, 1)
    for signer in signers.values():
        await svc.publish_trust_bundle(signer, "team-a")
    roots = {fingerprint_sha256(c) for c in bundle_roots(api, "team-a")}
    assert roots == {fingerprint_sha256(s.ca_cert) for s in signers.values()}
    # Publishing again, in any order, changes nothing and makes no request: no flapping.
    api.calls.clear()
    for signer in (signers["local"], signers["mesh"], signers["edge"], signers["mesh"]):
        await svc.publish_trust_bundle(signer, "team-a")
    assert api.calls == []


async def test_a_rotation_keeps_the_other_issuers_roots_in_the_bundle() -> None:
    svc, api, clock, _ = make_service()
    signers = await three_issuers(svc, api)
    for signer in signers.values():
        await svc.publish_trust_bundle(signer, "team-a")
    clock.at = START + 21 * DAY
    await reconcile(svc, api, named("mesh"))
    await drain(svc)
    rotated = await svc.signer("ClusterIdentityIssuer", "mesh", "team-a")
    assert rotated.ca_cert != signers["mesh"].ca_cert
    assert set(bundle_roots(api, "team-a")) == {
        rotated.ca_cert,
        signers["mesh"].ca_cert,  # the old root, until it expires
        signers["edge"].ca_cert,
        signers["local"].ca_cert,
    }


async def test_roots_leave_the_bundle_with_their_issuer_or_its_last_user() -> None:
    svc, api, _, _ = make_service()
    users = {MESH, ("ClusterIdentityIssuer", "", "edge"), ("IdentityIssuer", "team-a", "local")}
    svc.users = lambda ns: set(users) if ns == "team-a" else set()
    signers = await three_issuers(svc, api)
    for signer in signers.values():
        await svc.publish_trust_bundle(signer, "team-a")
    # The namespaced issuer is deleted (no finalizer: the watch says so afterwards).
    local = api.objects.pop(("IdentityIssuer", "team-a", "local"))
    svc.controller.changed("IdentityIssuer")(("team-a", "local"), local, None)
    await drain(svc)
    assert set(bundle_roots(api, "team-a")) == {signers["mesh"].ca_cert, signers["edge"].ca_cert}
    # The last identity using edge in team-a stops using it.
    users.discard(("ClusterIdentityIssuer", "", "edge"))
    svc.unused("team-a")
    await drain(svc)
    assert bundle_roots(api, "team-a") == [signers["mesh"].ca_cert]
    assert json.loads(
        api.objects[("ConfigMap", "team-a", "nhi-trust-bundle")]["metadata"]["annotations"][
            "nhi.dev/trust-bundle-sources"
        ]
    ) == {"ClusterIdentityIssuer/mesh": [fingerprint_sha256(signers["mesh"].ca_cert)]}
    # No issuer left: the bundle goes.
    users.clear()
    svc.unused("team-a")
    await drain(svc)
    assert ("ConfigMap", "team-a", "nhi-trust-bundle") not in api.objects


async def test_the_bundle_waits_until_every_identity_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trust_bundles, "NOT_SYNCED_DELAY", 0.01)
    svc, api, clock, _ = make_service()
    signers = await three_issuers(svc, api)
    users = {MESH}
    svc.users = lambda ns: set(users)
    await svc.publish_trust_bundle(signers["mesh"], "team-a")
    assert len(bundle_roots(api, "team-a")) == 1
    # A restart: the identities are being listed; one of them also uses edge.
    users.add(("ClusterIdentityIssuer", "", "edge"))
    api.calls.clear()
    synced = False
    svc.bundles.synced = lambda: synced
    svc.sweep_bundles()
    svc.bundles.start()
    try:
        for _ in range(5):  # a few of its looks, none of which may write
            clock.at += dt.timedelta(seconds=0.01)
            await asyncio.sleep(0.01)
        assert api.calls == []  # nothing before every identity is known
        synced = True
        for _ in range(200):
            if len(bundle_roots(api, "team-a")) == 2:
                break
            clock.at += dt.timedelta(seconds=0.01)  # the queue's delays run on this clock
            await asyncio.sleep(0.01)
    finally:
        await svc.bundles.stop()
    assert len(bundle_roots(api, "team-a")) == 2


def foreign(name: str, namespace: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "mine"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
            **meta,
        },
        "data": {"ca.crt": "mine", "ca.crl": "mine"},
    }


async def test_foreign_configmaps_are_left_exactly_as_they_are() -> None:
    svc, api, _, _ = make_service()
    await svc.provenance.get()  # the key exists: what follows is created after it
    api.put(foreign("nhi-crl-clusteridentityissuer-mesh", OPNS))
    # Labelled as the operator labels its objects, even with a tag copied from one of the
    # operator's ConfigMaps: still foreign.
    other = named("other")
    await reconcile(svc, api, other)
    copied = api.objects[("ConfigMap", OPNS, "nhi-crl-clusteridentityissuer-other")]
    api.put(
        foreign(
            "nhi-trust-bundle",
            "team-a",
            labels={"app.kubernetes.io/managed-by": "nhi-operator", "nhi.dev/trust-bundle": "true"},
            annotations=dict(copied["metadata"]["annotations"]),
        )
    )
    before = copy.deepcopy(api.objects)
    api.calls.clear()
    outcome = await reconcile(svc, api, named("mesh"))
    assert outcome.reason == "CRLConflict"
    assert "spec.crl.configMapName" in outcome.message
    assert f"ConfigMap {OPNS}/nhi-crl-clusteridentityissuer-mesh" in outcome.message
    await reconcile(svc, api, named("edge"))
    edge = await svc.signer("ClusterIdentityIssuer", "edge", "team-a")
    with pytest.raises(IssuerNotReady) as err:
        await svc.publish_trust_bundle(edge, "team-a")
    assert err.value.reason == "TrustBundleConflict"
    assert "team-a/nhi-trust-bundle" in err.value.message
    for key in (("ConfigMap", OPNS, CRL), ("ConfigMap", "team-a", "nhi-trust-bundle")):
        assert api.objects[key] == before[key]
        assert not [c for c in api.writes() if c[1:] == key]


async def test_an_explicit_crl_name_of_another_issuer_is_a_conflict_naming_it() -> None:
    svc, api, _, _ = make_service()
    shared = {"selfSigned": {"ttl": "720h"}, "crl": {"configMapName": "shared"}}
    assert (await reconcile(svc, api, named("mesh", **shared))).ready
    before = copy.deepcopy(api.objects[("ConfigMap", OPNS, "shared")])
    outcome = await reconcile(svc, api, named("edge", **shared))
    assert outcome.reason == "CRLConflict"
    assert "spec.crl.configMapName" in outcome.message
    assert "ClusterIdentityIssuer/mesh" in outcome.message
    assert api.objects[("ConfigMap", OPNS, "shared")] == before


async def test_objects_of_an_earlier_version_are_adopted_once() -> None:
    svc, api, clock, _ = make_service()
    signers = await three_issuers(svc, api)
    mesh = signers["mesh"]
    # What an earlier version left: a CRL and a trust bundle labelled with one issuer, older
    # than the provenance key, without a tag.
    api.objects = {k: v for k, v in api.objects.items() if k[0] != "ConfigMap"}
    del api.objects[("Secret", OPNS, "nhi-provenance-key")]
    labels = {
        "app.kubernetes.io/managed-by": "nhi-operator",
        "nhi.dev/issuer": "mesh",
        "nhi.dev/issuer-kind": "ClusterIdentityIssuer",
    }
    api.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "nhi-crl", "namespace": OPNS, "labels": labels},
            "data": {},
        }
    )
    api.put(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "nhi-trust-bundle", "namespace": "team-a", "labels": labels},
            "data": {"ca.crt": mesh.bundle_pem.decode()},
        }
    )
    fresh = IssuerService(cast(Api, api), EventRecorder(cast(Api, api)), OPNS, clock)
    fresh.users = lambda ns: {MESH} if ns == "team-a" else set()
    await fresh.provenance.get()
    outcome = await fresh.reconcile(
        copy.deepcopy(api.objects[("ClusterIdentityIssuer", "", "mesh")])
        | {
            "spec": {
                "trustDomain": "example.org",
                "selfSigned": {"ttl": "720h"},
                "crl": {"configMapName": "nhi-crl"},
            }
        }
    )
    assert outcome is not None and outcome.ready, outcome
    fresh.sweep_bundles()
    await drain(fresh)
    key = await key_of(fresh)
    for k, purpose in (
        (("ConfigMap", OPNS, "nhi-crl"), "crl/ClusterIdentityIssuer//mesh"),
        (("ConfigMap", "team-a", "nhi-trust-bundle"), "trust-bundle"),
    ):
        assert configmap_origin(api.objects[k], key=key, purpose=purpose) == "ours"
    assert (
        "nhi.dev/issuer"
        not in api.objects[("ConfigMap", "team-a", "nhi-trust-bundle")]["metadata"]["labels"]
    )


async def test_an_issuer_not_ready_after_a_restart_keeps_its_roots() -> None:
    svc, api, clock, _ = make_service()
    cert = build_self_signed_ca("Mesh Root", ca_key(), START - DAY, 365 * DAY)
    api.put(ca_secret(cert, ca_key()))
    assert (await reconcile(svc, api, named("mesh", ca={"secretName": "mesh-root"}))).ready
    assert (await reconcile(svc, api, named("edge"))).ready
    edge = await svc.signer("ClusterIdentityIssuer", "edge", "team-a")
    await svc.publish_trust_bundle(
        await svc.signer("ClusterIdentityIssuer", "mesh", "team-a"), "team-a"
    )
    await svc.publish_trust_bundle(edge, "team-a")
    # The CA Secret is gone, then the operator restarts: mesh cannot say what it trusts.
    del api.objects[("Secret", OPNS, "mesh-root")]
    fresh = IssuerService(cast(Api, api), EventRecorder(cast(Api, api)), OPNS, clock)
    fresh.users = lambda ns: {MESH, ("ClusterIdentityIssuer", "", "edge")}
    outcome = await fresh.reconcile(
        copy.deepcopy(api.objects[("ClusterIdentityIssuer", "", "mesh")])
    )
    assert outcome is not None and outcome.reason == "CASecretNotFound"
    clock.at = START + 21 * DAY  # edge rotates: the bundle is written again
    await fresh.reconcile(copy.deepcopy(api.objects[("ClusterIdentityIssuer", "", "edge")]))
    fresh.sweep_bundles()
    await drain(fresh)
    roots = bundle_roots(api, "team-a")
    assert cert in roots  # kept: the certificates it issued are still trusted
    assert len(roots) == 3


def test_status_vault_is_kept_while_vault_fails_and_removed_with_the_source() -> None:
    where = {"address": "https://v:8200", "crlURL": "https://v:8200/v1/pki/crl"}
    failing = IssuerOutcome(False, "VaultSealed", "sealed", vault=where)
    status = compute_status({}, 1, failing, START)
    assert status["vault"] == where
    # Another source: the merge patch removes status.vault once, then leaves it out.
    other = IssuerOutcome(True, "CAReady", "ok")
    assert compute_status(status, 2, other, START)["vault"] is None
    assert "vault" not in compute_status({"observedGeneration": 2}, 2, other, START)
