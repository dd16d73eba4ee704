"""How watch events reach the work queue: which identities a change re-checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from nhi.handlers.entries import entry_version as _entry_version
from nhi.handlers.entries import secret_entry as _secret_entry
from nhi.handlers.entries import service_account_entry as _service_account_entry
from nhi.handlers.runtime import Runtime
from nhi.k8s.client import Api, Connection
from nhi.models.workload import Workload
from tests.unit.factories import NAMESPACE, make_body

pytestmark = pytest.mark.unit


@pytest.fixture
def rt() -> Iterator[Runtime]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield Runtime(Api(Connection("https://127.0.0.1:1", False, {})))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def queued(rt: Runtime) -> set[tuple[str, str]]:
    out = set(rt.controller.queue._queued)
    rt.controller.queue._queued.clear()
    return out


def observed(rt: Runtime, name: str, rv: int, **kw: Any) -> dict[str, Any]:
    body = make_body(name=name, **kw)
    body["metadata"]["resourceVersion"] = str(rv)
    rt.view.identity_observed(body)
    return body


def workload(**kw: Any) -> Workload:
    return Workload(kind="Deployment", namespace=NAMESPACE, name="web", **kw)


def test_a_workload_re_checks_only_the_identities_it_concerns(rt: Runtime) -> None:
    observed(rt, "by-selector", 1, workloads={"selector": {"matchLabels": {"app": "web"}}})
    observed(rt, "by-account", 2, serviceAccount={"name": "web-sa"})
    observed(rt, "unrelated", 3, workloads={"selector": {"matchLabels": {"app": "db"}}})
    observed(rt, "invalid", 4, credentials=[{"name": "x", "type": "Nope"}])
    queued(rt)
    rt.view.requeue_for(NAMESPACE, [workload(template_labels={"app": "web"})])
    assert queued(rt) == {(NAMESPACE, "by-selector"), (NAMESPACE, "invalid")}
    rt.view.requeue_for(NAMESPACE, [workload(service_account="web-sa")])
    assert queued(rt) == {(NAMESPACE, "by-account"), (NAMESPACE, "invalid")}
    # Another namespace's workload touches none of them.
    rt.view.requeue_for("elsewhere", [workload(template_labels={"app": "web"})])
    assert queued(rt) == set()


def test_the_echo_of_our_own_write_is_not_reconciled_again(rt: Runtime) -> None:
    key = (NAMESPACE, "app")
    body = observed(rt, "app", 10)
    assert queued(rt) == {key}
    # The reconcile wrote the status (rv 12) and saw the same spec and metadata.
    written = {**body, "metadata": {**body["metadata"], "resourceVersion": "12"}}
    rt.view.identity_written(written)
    rt.view.store._echoes[key] = 12
    observed(rt, "app", 11)  # an older state (e.g. our finalizer patch) arriving late
    observed(rt, "app", 12)  # our status write
    assert queued(rt) == set()
    # Anything after it is someone else's change.
    observed(rt, "app", 13, annotations={"nhi.dev/revoke": "true"})
    assert queued(rt) == {key}


def test_a_deleted_identity_is_forgotten(rt: Runtime) -> None:
    body = observed(rt, "app", 5)
    rt.view.identity_observed(body, deleted=True)
    assert rt.view.identity_body((NAMESPACE, "app")) is None
    assert rt.view.by_namespace[NAMESPACE] == set()


def x509(issuer: str, kind: str = "ClusterIdentityIssuer") -> dict[str, Any]:
    return {
        "name": f"mtls-{issuer}",
        "type": "X509",
        "ttl": "1h",
        "issuerRef": {"kind": kind, "name": issuer},
    }


def test_the_issuers_a_namespace_uses_are_counted(rt: Runtime) -> None:
    dropped: list[str] = []
    rt.issuers.unused = dropped.append  # type: ignore[method-assign]
    mesh, local = ("ClusterIdentityIssuer", "", "mesh"), ("IdentityIssuer", NAMESPACE, "local")
    observed(rt, "a", 1, credentials=[x509("mesh"), x509("local", "IdentityIssuer")])
    observed(rt, "b", 2, credentials=[x509("mesh")])
    assert set(rt.view.issuers_used(NAMESPACE)) == {mesh, local}
    assert set(rt.view.issuers_used("elsewhere")) == set()
    # "a" stops using both: mesh is still used by "b", local by nobody.
    observed(rt, "a", 3, generation=2, credentials=[])
    assert set(rt.view.issuers_used(NAMESPACE)) == {mesh}
    assert dropped == [NAMESPACE]
    # An invalid spec keeps the issuers it had.
    observed(rt, "b", 4, generation=2, credentials=[{"name": "x", "type": "Nope"}])
    assert set(rt.view.issuers_used(NAMESPACE)) == {mesh}
    rt.view.identity_observed(make_body(name="b"), deleted=True)
    assert set(rt.view.issuers_used(NAMESPACE)) == set()
    assert dropped == [NAMESPACE, NAMESPACE]


def meta_object(
    kind: str, name: str, rv: int, labels: dict[str, str], **extra: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "resourceVersion": str(rv),
            "labels": labels,
        },
        **extra,
    }


CHILD = {
    "app.kubernetes.io/managed-by": "nhi-operator",
    "nhi.dev/identity": "app",
}


def test_one_secret_watch_feeds_the_children_and_the_issuers(rt: Runtime) -> None:
    """Credential Secrets are the identity's children; any other Secret is only a version
    for the issuers; neither keeps a Secret's data."""
    rt.synced.set()
    cred = meta_object("Secret", "app-token", 7, {**CHILD, "nhi.dev/credential": "api"})
    other = meta_object("Secret", "ca", 8, {"team": "a"})
    cred_entry, other_entry = _secret_entry(cred), _secret_entry(other)
    assert other_entry == "8"
    rt.view._secret_changed((NAMESPACE, "app-token"), None, cred_entry)
    rt.view._secret_changed((NAMESPACE, "ca"), None, other_entry)
    children = rt.view.children_of(NAMESPACE, "app")
    assert [(k.kind, k.name) for k in children] == [("Secret", "app-token")]
    assert queued(rt) == {(NAMESPACE, "app")}
    # A Secret that loses the operator's labels is no longer a child.
    rt.view._secret_changed(
        (NAMESPACE, "app-token"),
        cred_entry,
        _secret_entry({**cred, "metadata": {**cred["metadata"], "labels": {}}}),
    )
    assert rt.view.children_of(NAMESPACE, "app") == {}
    assert queued(rt) == {(NAMESPACE, "app")}
    # The issuers compare resourceVersions: a child's entry yields its version too.
    assert _entry_version(cred_entry) == "7"
    assert _entry_version(other_entry) == "8"
    assert _entry_version(None) == ""


def test_one_service_account_watch_feeds_the_children_and_the_name_check(rt: Runtime) -> None:
    rt.synced.set()
    mine = meta_object("ServiceAccount", "app", 3, CHILD, automountServiceAccountToken=False)
    foreign = meta_object("ServiceAccount", "web", 4, {"team": "a"})
    rt.view._sa_changed((NAMESPACE, "app"), None, _service_account_entry(mine))
    rt.view._sa_changed((NAMESPACE, "web"), None, _service_account_entry(foreign))
    (child,) = rt.view.children_of(NAMESPACE, "app").values()
    assert child["automountServiceAccountToken"] is False
    assert (rt.view.service_account(NAMESPACE, "app") or {})["metadata"]["labels"] == CHILD
    web = rt.view.service_account(NAMESPACE, "web") or {}
    assert web["metadata"]["labels"] == {"team": "a"}
    assert (web["metadata"]["namespace"], web["metadata"]["name"]) == (NAMESPACE, "web")
    assert queued(rt) == {(NAMESPACE, "app")}
    rt.view._sa_changed((NAMESPACE, "web"), _service_account_entry(foreign), None)
    assert rt.view.service_account(NAMESPACE, "web") is None
    assert queued(rt) == set()
