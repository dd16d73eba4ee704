"""Ownership: what proves that an object is an identity's, and what the reconciler and the
webhook do with an object that is not (left untouched, reported with the field named)."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from nhi.builders.rbac import (
    ChildKey,
    adoption_snapshot,
    build_cluster_role,
    field_for,
    release_patch,
)
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.meta import Reason
from nhi.policies.ownership import Claim, describe_owner, owned_by, owner_uid
from nhi.reconcilers.identity import IdentityReconciler
from nhi.reconcilers.issuers import IssuerService
from nhi.reconcilers.policy import AdmissionReviewer
from tests.unit.factories import NAME, NAMESPACE, UID, credential, make_body, make_identity, rule
from tests.unit.test_identity_policy import FakeApi as ReviewApi
from tests.unit.test_identity_reconciler import NOW, FakeApi, FakeView

pytestmark = pytest.mark.unit

MANAGED = {"app.kubernetes.io/managed-by": "nhi-operator", "nhi.dev/identity": NAME}


def ref(uid: str, kind: str = "MachineIdentity", api: str = "nhi.dev/v1alpha1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "name": "x", "uid": uid, "controller": True}


def obj(
    namespace: str = NAMESPACE,
    refs: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "o", "uid": "obj-uid"}
    if namespace:
        meta["namespace"] = namespace
    for key, value in (("ownerReferences", refs), ("labels", labels), ("annotations", annotations)):
        if value is not None:
            meta[key] = value
    return {"metadata": meta}


OWNERSHIP = [
    ("controller ref to the identity", obj(refs=[ref(UID)]), True),
    ("controller ref to another identity", obj(refs=[ref("other")]), False),
    (
        "controller ref to a Deployment of that uid",
        obj(refs=[ref(UID, "Deployment", "apps/v1")]),
        False,
    ),
    ("a MachineIdentity of another group", obj(refs=[ref(UID, api="evil.dev/v1")]), False),
    (
        "not controller",
        obj(refs=[{**ref(UID), "controller": False}]),
        False,
    ),
    ("our labels only", obj(labels=MANAGED), False),
    ("nothing", obj(), False),
    (
        "owner-uid annotation on a namespaced object",
        obj(annotations={"nhi.dev/owner-uid": UID}),
        False,
    ),
    ("cluster-scoped with the owner uid", obj("", annotations={"nhi.dev/owner-uid": UID}), True),
    ("cluster-scoped, another uid", obj("", annotations={"nhi.dev/owner-uid": "other"}), False),
    (
        "cluster-scoped from before the annotation: labels name the identity",
        obj("", labels={**MANAGED, "nhi.dev/identity-namespace": NAMESPACE}),
        True,
    ),
    (
        "cluster-scoped, labels of another namespace",
        obj("", labels={**MANAGED, "nhi.dev/identity-namespace": "elsewhere"}),
        False,
    ),
]


@pytest.mark.parametrize(("body", "owned"), [pytest.param(b, o, id=i) for i, b, o in OWNERSHIP])
def test_ownership_is_proven_by_the_uid(body: dict[str, Any], owned: bool) -> None:
    assert owned_by(body, UID, namespace=NAMESPACE, name=NAME) is owned
    assert not owned_by(body, "", namespace=NAMESPACE, name=NAME)
    assert not owned_by(None, UID)


def test_describe_owner_names_who_holds_it() -> None:
    assert "belongs to MachineIdentity/x (uid other)" in describe_owner(obj(refs=[ref("other")]))
    assert describe_owner(obj(refs=[ref("d", "Deployment", "apps/v1")])) == (
        "it is controlled by Deployment/x"
    )
    assert "not created by nhi-operator" in describe_owner(obj(labels=MANAGED))
    assert owner_uid(obj("", annotations={"nhi.dev/owner-uid": "u"})) == "u"


def test_cluster_scoped_children_carry_the_owner_uid() -> None:
    identity = make_identity(permissions={"clusterRules": [rule()]})
    built = build_cluster_role(identity)
    assert built["metadata"]["annotations"] == {"nhi.dev/owner-uid": UID}
    assert owned_by(built, UID, namespace=NAMESPACE, name=NAME)


def test_a_conflict_names_the_field_the_object_and_the_owner() -> None:
    identity = make_identity(credentials=[credential("a"), credential("b", secretName="db")])
    field = field_for(identity, ChildKey("Secret", NAMESPACE, "db"))
    assert field == "spec.credentials[1].secretName"
    claim = Claim(field, "Secret", NAMESPACE, "db", "it belongs to MachineIdentity/x (uid 1)")
    assert claim.message.startswith(
        "spec.credentials[1].secretName: Secret 'db' in namespace team-a already exists and it "
        "belongs to MachineIdentity/x (uid 1)"
    )
    assert field_for(identity, ChildKey("ServiceAccount", NAMESPACE, NAME)) == (
        "spec.serviceAccount.name"
    )


# ------------------------------------------------------------------------------ adoption


def adopted_sa(before: dict[str, Any], automount: bool | None) -> dict[str, Any]:
    sa: dict[str, Any] = {
        "kind": "ServiceAccount",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": "sa-uid",
            "labels": {**MANAGED, "team": "a"},
            "annotations": {
                "nhi.dev/owner": "x",
                "nhi.dev/adopted-from": adoption_snapshot(before),
            },
            "ownerReferences": [ref(UID), {**ref("keep", "ConfigMap", "v1"), "controller": False}],
        },
    }
    if automount is not None:
        sa["automountServiceAccountToken"] = automount
    return sa


def test_release_restores_what_adoption_changed() -> None:
    before = {"metadata": {"labels": {"team": "a"}}, "automountServiceAccountToken": True}
    ops = release_patch(adopted_sa(before, False), UID)
    assert ops[0] == {"op": "test", "path": "/metadata/uid", "value": "sa-uid"}
    by_path = {o["path"]: o for o in ops[1:]}
    assert by_path["/metadata/labels"]["value"] == {"team": "a"}
    assert by_path["/metadata/annotations"]["value"] == {}
    assert [r["uid"] for r in by_path["/metadata/ownerReferences"]["value"]] == ["keep"]
    assert by_path["/automountServiceAccountToken"] == {
        "op": "add",
        "path": "/automountServiceAccountToken",
        "value": True,
    }
    # It had no automount setting of its own: the operator's is removed.
    ops = release_patch(adopted_sa({"metadata": {}}, False), UID)
    assert {"op": "remove", "path": "/automountServiceAccountToken"} in ops


def test_release_of_an_unreadable_record_removes_only_what_the_operator_added() -> None:
    sa = adopted_sa({"metadata": {}}, None)
    sa["metadata"]["annotations"]["nhi.dev/adopted-from"] = "{not json"
    sa["metadata"]["annotations"]["theirs"] = "kept"
    by_path = {o["path"]: o for o in release_patch(sa, UID)}
    assert by_path["/metadata/labels"]["value"] == {"team": "a"}
    assert by_path["/metadata/annotations"]["value"] == {"theirs": "kept"}


def test_the_snapshot_round_trips_any_text() -> None:
    before = {"metadata": {"labels": {"a": "b"}, "annotations": {"note": "déploie 🚀"}}}
    assert json.loads(adoption_snapshot(before))["annotations"] == {"note": "déploie 🚀"}


# ------------------------------------------------------------------------------ reconciler


def reconciler() -> tuple[IdentityReconciler, FakeApi, FakeView, EventRecorder]:
    api, view = FakeApi(), FakeView()
    events = EventRecorder(cast(Api, api))
    issuers = cast(IssuerService, object())
    return IdentityReconciler(cast(Api, api), view, events, issuers, lambda: NOW), api, view, events


FOREIGN_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "db-password", "namespace": NAMESPACE, "uid": "theirs"},
    "data": {"password": "aHVudGVyMg=="},
}


async def test_a_foreign_secret_is_left_as_it_was_and_the_identity_stalls() -> None:
    rec, api, _, events = reconciler()
    key = ("Secret", NAMESPACE, "db-password")
    api.objects[key] = json.loads(json.dumps(FOREIGN_SECRET))
    body = make_body(
        credentials=[
            credential("grab", type="StaticSecret", secretName="db-password"),
            credential("own", type="StaticSecret"),
        ]
    )
    outcome = await rec.reconcile(body)
    await events.drain()
    assert api.objects[key] == FOREIGN_SECRET
    assert not any(c[0] in ("apply", "delete") and c[2] == "db-password" for c in api.calls)
    assert outcome.stalled and outcome.reason == Reason.OWNERSHIP_CONFLICT
    assert outcome.message.startswith("spec.credentials[0].secretName: Secret 'db-password'")
    assert outcome.next_due is not None  # it looks again, slowly
    # The identity's own credential is issued all the same.
    assert "data" in api.objects[("Secret", NAMESPACE, f"{NAME}.own")]
    assert api.status is not None
    stalled = {c["type"]: c for c in api.status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "OwnershipConflict")

    # Deleting the identity leaves it too.
    await rec.cleanup({**body, "status": api.status})
    assert api.objects[key] == FOREIGN_SECRET


async def test_children_labelled_as_the_identitys_but_not_owned_are_never_deleted() -> None:
    rec, api, view, events = reconciler()
    decoy = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "decoy", "namespace": NAMESPACE, "uid": "d", "labels": MANAGED},
    }
    api.objects[("Secret", NAMESPACE, "decoy")] = decoy
    view.children[ChildKey("Secret", NAMESPACE, "decoy")] = decoy
    outcome = await rec.reconcile(make_body())
    await events.drain()
    assert outcome.ready
    await rec.cleanup(make_body())
    assert ("Secret", NAMESPACE, "decoy") in api.objects
    assert not any(c[0] == "delete" and c[2] == "decoy" for c in api.calls)


# ------------------------------------------------------------------------------ admission


ALICE = {"username": "alice", "groups": ["devs"]}


async def review(api: ReviewApi, body: dict[str, Any], operation: str = "CREATE", **kw: Any) -> Any:
    return await AdmissionReviewer(api).review(  # type: ignore[arg-type]
        operation=operation,
        new=body,
        old=kw.get("old"),
        userinfo=ALICE,
        policies=kw.get("policies", []),
        namespace_labels={},
    )


async def test_admission_refuses_a_secret_another_identity_declares() -> None:
    other = make_body(name="victim", credentials=[credential("key", type="StaticSecret")])
    body = make_body(credentials=[credential("k", type="StaticSecret", secretName="victim.key")])
    result = await review(ReviewApi(set(), identities=[other]), body)
    assert result.denied == [
        "spec.credentials[0].secretName: Secret 'victim.key' is already declared by "
        "MachineIdentity 'victim' (credential 'key')"
    ]


async def test_admission_refuses_an_existing_object_the_identity_does_not_own() -> None:
    body = make_body(credentials=[credential("k", type="StaticSecret", secretName="db-password")])
    api = ReviewApi(set(), objects={("Secret", "db-password"): FOREIGN_SECRET})
    (denied,) = (await review(api, body)).denied
    assert denied.startswith("spec.credentials[0].secretName: Secret 'db-password'")
    # Its own Secret, on an update, is fine; on a create nothing can be its own yet.
    mine = {
        "metadata": {"name": "db-password", "namespace": NAMESPACE, "ownerReferences": [ref(UID)]}
    }
    api = ReviewApi(set(), objects={("Secret", "db-password"): mine})
    assert (await review(api, body, "UPDATE", old=make_body())).allowed
    assert not (await review(api, body)).allowed


async def test_adoption_needs_update_and_delete_on_the_service_account() -> None:
    body = make_body(annotations={"nhi.dev/adopt": "true"})
    result = await review(ReviewApi(set()), body)
    (denied,) = result.denied
    assert denied.startswith("metadata.annotations[nhi.dev/adopt]: alice may not update")
    assert "delete serviceaccounts named 'payments-api'" in denied
    grants = {("alice", "update", "serviceaccounts"), ("alice", "delete", "serviceaccounts")}
    assert (await review(ReviewApi(grants), body)).allowed
    # Asked for on an update that leaves the spec alone: reviewed all the same.
    result = await review(ReviewApi(set()), body, "UPDATE", old=make_body())
    assert not result.allowed


async def test_a_rollout_needs_patch_on_the_workloads() -> None:
    body = make_body(
        workloads={"selector": {"matchLabels": {"app": "x"}}, "rolloutOnRotation": True}
    )
    (denied,) = (await review(ReviewApi(set()), body)).denied
    assert denied.startswith("spec.workloads.rolloutOnRotation: alice may not patch deployments")
    grants = {("alice", "patch", r) for r in ("deployments", "statefulsets", "daemonsets")}
    assert (await review(ReviewApi(grants), body)).allowed
