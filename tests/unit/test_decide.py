"""The reconciler's pure core: which children to apply and delete, when nothing may be done,
and the status (conditions, phase) a user reads back."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from nhi.builders.rbac import ChildKey, child_key
from nhi.models.conditions import status_changed
from nhi.models.identity import MachineIdentity
from nhi.models.meta import Reason
from nhi.models.policy import IdentityPolicy
from nhi.reconcilers.credentials import CredentialResult
from nhi.reconcilers.identity_plan import (
    Observed,
    Outcome,
    Plan,
    compute_status,
    decide,
    service_account_conflict,
)
from tests.unit.factories import (
    NAME,
    NAMESPACE,
    T0,
    credential,
    in_sync_children,
    make_identity,
    make_policy,
    rule,
    server_copy,
)

pytestmark = pytest.mark.unit

ALL_PERMISSIONS = {
    "rules": [rule()],
    "clusterRules": [rule(resources=("nodes",))],
    "roleRefs": [{"kind": "Role", "name": "reader"}, {"kind": "ClusterRole", "name": "view"}],
}
ALLOW_ALL = make_policy(allowClusterRules=True, allowedClusterRoles=["view"])
SA = ChildKey("ServiceAccount", NAMESPACE, NAME)
ROLE = ChildKey("Role", NAMESPACE, f"nhi-{NAME}")
BINDING = ChildKey("RoleBinding", NAMESPACE, f"nhi-{NAME}")
REF_ROLE = ChildKey("RoleBinding", NAMESPACE, f"nhi:{NAME}:role:reader")
REF_VIEW = ChildKey("RoleBinding", NAMESPACE, f"nhi:{NAME}:clusterrole:view")
CLUSTER_ROLE = ChildKey("ClusterRole", "", f"nhi:{NAMESPACE}:{NAME}")
CLUSTER_BINDING = ChildKey("ClusterRoleBinding", "", f"nhi:{NAMESPACE}:{NAME}")


def observe(
    identity: MachineIdentity,
    children: dict[ChildKey, dict[str, Any]] | None = None,
    *,
    foreign: dict[str, Any] | None = None,
    policies: tuple[Any, ...] = (ALLOW_ALL,),
) -> Observed:
    return Observed(
        identity=identity,
        children={} if children is None else children,
        foreign_service_account=foreign,
        policies=policies,
        namespace_labels={"kubernetes.io/metadata.name": NAMESPACE},
    )


def applied(plan_apply: tuple[dict[str, Any], ...]) -> list[ChildKey]:
    return [child_key(o) for o in plan_apply]


def foreign_sa(labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": NAMESPACE, "uid": "sa-uid"}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


# --------------------------------------------------------------------------- conflicts

MANAGED = "app.kubernetes.io/managed-by"
ID_LABEL = "nhi.dev/identity"


def identity_ref(uid: str, name: str = "other") -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "name": name,
        "uid": uid,
        "controller": True,
    }


def with_owner(sa: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    sa["metadata"]["ownerReferences"] = [ref]
    return sa


DEPLOYMENT_REF = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "name": "web",
    "uid": "d-1",
    "controller": True,
}

CONFLICT_CASES = [
    # (id, existing ServiceAccount the identity does not own or None, adopt annotation, reason)
    ("no ServiceAccount", None, None, None),
    ("unlabelled ServiceAccount", foreign_sa({}), None, Reason.SERVICE_ACCOUNT_CONFLICT),
    ("someone else's", foreign_sa({MANAGED: "helm"}), None, Reason.SERVICE_ACCOUNT_CONFLICT),
    (
        "another identity's",
        with_owner(foreign_sa({MANAGED: "nhi-operator", ID_LABEL: "other"}), identity_ref("o-1")),
        None,
        Reason.SERVICE_ACCOUNT_CONFLICT,
    ),
    (
        "our labels, set by anyone: labels prove nothing",
        foreign_sa({MANAGED: "nhi-operator", ID_LABEL: NAME}),
        None,
        Reason.SERVICE_ACCOUNT_CONFLICT,
    ),
    ("adopted", foreign_sa({MANAGED: "helm"}), "true", None),
    ("adopt must say true", foreign_sa({MANAGED: "helm"}), "yes", Reason.SERVICE_ACCOUNT_CONFLICT),
    ("adopt false", foreign_sa({}), "false", Reason.SERVICE_ACCOUNT_CONFLICT),
    (
        "another identity's cannot be adopted",
        with_owner(foreign_sa({}), identity_ref("o-1")),
        "true",
        Reason.OWNERSHIP_CONFLICT,
    ),
    (
        "a controlled one cannot be adopted",
        with_owner(foreign_sa({}), DEPLOYMENT_REF),
        "true",
        Reason.OWNERSHIP_CONFLICT,
    ),
]


@pytest.mark.parametrize(
    ("sa", "adopt", "reason"),
    [pytest.param(sa, a, r, id=i) for i, sa, a, r in CONFLICT_CASES],
)
def test_service_account_conflict(
    sa: dict[str, Any] | None, adopt: str | None, reason: str | None
) -> None:
    identity = make_identity(annotations=None if adopt is None else {"nhi.dev/adopt": adopt})
    found = service_account_conflict(identity, sa)
    if reason is None:
        assert found is None
        return
    assert found is not None
    assert found[0] == reason
    message = found[1]
    assert message.startswith("spec.serviceAccount.name: ")
    assert f"ServiceAccount '{NAME}'" in message
    if reason == Reason.SERVICE_ACCOUNT_CONFLICT:
        assert f"ServiceAccount '{NAME}' already exists" in message
        assert 'nhi.dev/adopt: "true"' in message


def test_the_default_service_account_is_adopted_only_where_a_policy_allows_it() -> None:
    identity = make_identity(
        annotations={"nhi.dev/adopt": "true"}, serviceAccount={"name": "default"}
    )
    sa = foreign_sa({})
    sa["metadata"]["name"] = "default"
    found = service_account_conflict(identity, sa, (), {})
    assert found is not None and found[0] == Reason.ADOPTION_NOT_ALLOWED
    assert "allowDefaultServiceAccount: true" in found[1]
    allow = IdentityPolicy.from_body(
        {"metadata": {"name": "p"}, "spec": {"adoption": {"allowDefaultServiceAccount": True}}}
    )
    assert service_account_conflict(identity, sa, (allow,), {}) is None
    forbid = IdentityPolicy.from_body(
        {"metadata": {"name": "no"}, "spec": {"adoption": {"allowed": False}}}
    )
    found = service_account_conflict(identity, sa, (allow, forbid), {})
    assert found is not None and found[0] == Reason.ADOPTION_NOT_ALLOWED
    assert "'no' (adoption.allowed: false)" in found[1]


def test_adopting_records_what_the_service_account_was() -> None:
    identity = make_identity(annotations={"nhi.dev/adopt": "true"})
    sa = foreign_sa({"team": "a"})
    sa["automountServiceAccountToken"] = True
    plan = decide(observe(identity, foreign=sa))
    (obj,) = plan.apply
    before = json.loads(obj["metadata"]["annotations"]["nhi.dev/adopted-from"])
    assert before == {
        "labels": {"team": "a"},
        "annotations": {},
        "automountServiceAccountToken": True,
    }
    assert plan.adopt is sa


def test_conflict_blocks_everything() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    stale = {ChildKey("Secret", NAMESPACE, "orphan"): {}}
    plan = decide(observe(identity, stale, foreign=foreign_sa({})))
    assert plan.blocked is not None
    reason, message = plan.blocked
    assert reason == Reason.SERVICE_ACCOUNT_CONFLICT == "ServiceAccountConflict"
    assert message.startswith("spec.serviceAccount.name")
    assert plan.apply == ()
    assert plan.delete == ()  # nothing is touched, not even stale children


def test_adopting_takes_the_service_account_over() -> None:
    identity = make_identity(annotations={"nhi.dev/adopt": "true"})
    plan = decide(observe(identity, foreign=foreign_sa({MANAGED: "helm"})))
    assert plan.blocked is None
    assert applied(plan.apply) == [SA]
    (sa,) = plan.apply
    assert sa["metadata"]["labels"][ID_LABEL] == NAME  # from now on it is ours


def test_cluster_permissions_not_allowed_block() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    plan = decide(observe(identity, policies=()))
    assert plan.blocked is not None
    assert plan.blocked[0] == "ClusterPermissionsNotAllowed"
    assert plan.blocked[1].startswith("spec.permissions.clusterRules")
    assert (plan.apply, plan.delete) == ((), ())


def test_conflict_is_reported_before_cluster_permissions() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    plan = decide(observe(identity, foreign=foreign_sa({}), policies=()))
    assert plan.blocked is not None
    assert plan.blocked[0] == "ServiceAccountConflict"


# --------------------------------------------------------------------------- apply


def test_new_identity_creates_everything_in_order() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    plan = decide(observe(identity))
    assert plan.blocked is None
    assert applied(plan.apply) == [
        SA,
        ROLE,
        BINDING,
        REF_ROLE,
        REF_VIEW,
        CLUSTER_ROLE,
        CLUSTER_BINDING,
    ]
    assert plan.delete == ()


def test_in_sync_identity_does_nothing() -> None:
    identity = make_identity(
        permissions=ALL_PERMISSIONS,
        credentials=[credential("tok"), credential("pw", "StaticSecret")],
    )
    plan = decide(observe(identity, in_sync_children(identity)))
    assert plan == Plan()  # no apply, no delete, not blocked


def _edit_role(children: dict[ChildKey, dict[str, Any]]) -> None:
    children[ROLE]["rules"][0]["verbs"] = ["*"]


def _delete_binding(children: dict[ChildKey, dict[str, Any]]) -> None:
    del children[REF_VIEW]


def _relabel_cluster_role(children: dict[ChildKey, dict[str, Any]]) -> None:
    children[CLUSTER_ROLE]["metadata"]["labels"].pop("nhi.dev/identity-namespace")


def _automount(children: dict[ChildKey, dict[str, Any]]) -> None:
    children[SA]["automountServiceAccountToken"] = True


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        (_edit_role, [ROLE]),
        (_delete_binding, [REF_VIEW]),
        (_relabel_cluster_role, [CLUSTER_ROLE]),
        (_automount, [SA]),
    ],
)
def test_drift_is_corrected_one_object_at_a_time(drift: Any, expected: list[ChildKey]) -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    children = in_sync_children(identity)
    drift(children)
    plan = decide(observe(identity, children))
    assert applied(plan.apply) == expected
    assert plan.delete == ()


def test_spec_change_is_applied() -> None:
    old = make_identity(permissions={"rules": [rule()]})
    new = make_identity(permissions={"rules": [rule(verbs=("get", "list", "watch"))]})
    plan = decide(observe(new, in_sync_children(old)))
    assert applied(plan.apply) == [ROLE]
    (role,) = plan.apply
    assert role["rules"][0]["verbs"] == ["get", "list", "watch"]


# --------------------------------------------------------------------------- delete


def test_removed_permissions_delete_their_children() -> None:
    before = make_identity(permissions=ALL_PERMISSIONS)
    after = make_identity()  # no permissions at all
    plan = decide(observe(after, in_sync_children(before)))
    assert plan.apply == ()
    # Sorted, so the order is the same on every run; the ServiceAccount stays.
    assert list(plan.delete) == sorted(
        [ROLE, BINDING, REF_ROLE, REF_VIEW, CLUSTER_ROLE, CLUSTER_BINDING]
    )


def test_removed_role_ref_deletes_only_its_binding() -> None:
    before = make_identity(permissions=ALL_PERMISSIONS)
    after_perms = {**ALL_PERMISSIONS, "roleRefs": [{"kind": "Role", "name": "reader"}]}
    after = make_identity(permissions=after_perms)
    plan = decide(observe(after, in_sync_children(before)))
    assert plan.apply == ()
    assert plan.delete == (REF_VIEW,)


def test_renamed_service_account_replaces_the_old_one() -> None:
    before = make_identity(serviceAccount={"name": "old-sa"}, permissions={"rules": [rule()]})
    after = make_identity(serviceAccount={"name": "new-sa"}, permissions={"rules": [rule()]})
    plan = decide(observe(after, in_sync_children(before)))
    assert applied(plan.apply) == [ChildKey("ServiceAccount", NAMESPACE, "new-sa"), BINDING]
    assert plan.delete == (ChildKey("ServiceAccount", NAMESPACE, "old-sa"),)


def test_credential_secrets_are_kept_and_orphans_deleted() -> None:
    identity = make_identity(
        credentials=[credential("tok"), credential("pw", "StaticSecret", secretName="db-pw")]
    )
    children = in_sync_children(identity)
    orphan = ChildKey("Secret", NAMESPACE, f"{NAME}-removed")
    children[orphan] = server_copy(
        {"kind": "Secret", "metadata": {"name": orphan.name, "namespace": NAMESPACE}}
    )
    plan = decide(observe(identity, children))
    # The credential manager writes credential Secrets; decide never applies them...
    assert all(o["kind"] != "Secret" for o in plan.apply)
    # ...keeps the current ones, and removes the one no credential names any more.
    assert plan.delete == (orphan,)


def test_credential_secret_not_yet_written_is_not_applied_here() -> None:
    identity = make_identity(credentials=[credential("tok")])
    children = in_sync_children(identity)
    del children[ChildKey("Secret", NAMESPACE, f"{NAME}.tok")]
    assert decide(observe(identity, children)) == Plan()


def test_decide_does_not_mutate_what_it_observed() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    children = in_sync_children(make_identity())
    snapshot = copy.deepcopy(children)
    decide(observe(identity, children))
    assert children == snapshot


# --------------------------------------------------------------------------- status

NOW = T0 + dt.timedelta(minutes=3)
NOW_TEXT = "2030-01-01T12:03:00Z"
EARLIER = "2029-12-31T00:00:00Z"


def conditions_by_type(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


READY = Outcome(True, Reason.PROVISIONED, "ServiceAccount payments-api ... are in place")
FAILING = Outcome(False, Reason.API_ERROR, "409 Conflict")
STALLED = Outcome(False, Reason.SERVICE_ACCOUNT_CONFLICT, "spec.serviceAccount.name: taken", True)

STATUS_CASES = [
    # (id, outcome, Ready, Reconciling, Stalled)
    ("ready", READY, "True", "False", "False"),
    ("transient error: still reconciling", FAILING, "False", "True", "False"),
    ("terminal error: stalled", STALLED, "False", "False", "True"),
]


@pytest.mark.parametrize(
    ("outcome", "ready", "reconciling", "stalled"),
    [pytest.param(o, r, rc, st, id=i) for i, o, r, rc, st in STATUS_CASES],
)
def test_condition_combinations(
    outcome: Outcome, ready: str, reconciling: str, stalled: str
) -> None:
    status = compute_status(make_identity(generation=4), outcome, NOW)
    assert conditions_by_type(status) == {
        "Ready": (ready, outcome.reason),
        "Reconciling": (reconciling, outcome.reason),
        "Stalled": (stalled, outcome.reason),
    }
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert status["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])
    assert status["serviceAccount"] == NAME
    ready_cond = status["conditions"][0]
    assert ready_cond["message"] == outcome.message
    if outcome.stalled:
        assert status["conditions"][2]["message"] == outcome.message


@pytest.mark.parametrize(
    ("old_phase", "outcome", "phase"),
    [
        (None, READY, "Active"),
        ("Pending", READY, "Active"),
        (None, FAILING, "Pending"),
        (None, STALLED, "Pending"),
        ("Active", FAILING, "Active"),  # an identity never goes back to Pending
        ("Active", STALLED, "Active"),
        ("Active", READY, "Active"),
        ("Revoked", READY, "Revoked"),  # other phases are the lifecycle's to change
    ],
)
def test_phase(old_phase: str | None, outcome: Outcome, phase: str) -> None:
    status = {} if old_phase is None else {"phase": old_phase}
    identity = make_identity(status=status)
    assert compute_status(identity, outcome, NOW)["phase"] == phase


def test_transition_times_are_kept_while_nothing_changes() -> None:
    first = compute_status(make_identity(generation=1), READY, T0)
    later = compute_status(make_identity(generation=2, status=first), READY, NOW)
    assert [c["lastTransitionTime"] for c in later["conditions"]] == ["2030-01-01T12:00:00Z"] * 3
    assert all(c["observedGeneration"] == 2 for c in later["conditions"])
    assert not status_changed(
        later, compute_status(make_identity(generation=2, status=later), READY, NOW)
    )


def test_transition_times_move_with_the_status() -> None:
    first = compute_status(make_identity(), READY, T0)
    failed = compute_status(make_identity(status=first), FAILING, NOW)
    times = {c["type"]: c["lastTransitionTime"] for c in failed["conditions"]}
    # Ready and Reconciling flipped; Stalled stayed False.
    assert times == {
        "Ready": NOW_TEXT,
        "Reconciling": NOW_TEXT,
        "Stalled": "2030-01-01T12:00:00Z",
    }


def test_unrelated_conditions_are_kept() -> None:
    other = {
        "type": "Revoked",
        "status": "False",
        "reason": "Active",
        "message": "",
        "observedGeneration": 1,
        "lastTransitionTime": EARLIER,
    }
    status = compute_status(make_identity(status={"conditions": [other]}), READY, NOW)
    assert status["conditions"][0] == other
    assert [c["type"] for c in status["conditions"]] == [
        "Revoked",
        "Ready",
        "Reconciling",
        "Stalled",
    ]


def _credential_status(name: str, renewal: str) -> dict[str, Any]:
    return {"name": name, "renewalTime": renewal}


@pytest.mark.parametrize(
    ("statuses", "next_renewal"),
    [
        ([], None),
        ([_credential_status("a", "2030-01-02T00:00:00Z")], "2030-01-02T00:00:00Z"),
        (
            [
                _credential_status("a", "2030-01-02T00:00:00Z"),
                _credential_status("b", "2030-01-01T18:30:00Z"),
                _credential_status("c", "2030-03-01T00:00:00Z"),
            ],
            "2030-01-01T18:30:00Z",
        ),
    ],
)
def test_next_renewal_time_is_the_earliest(
    statuses: list[dict[str, Any]], next_renewal: str | None
) -> None:
    outcome = Outcome(True, Reason.CREDENTIALS_ISSUED, "", credentials=CredentialResult(statuses))
    status = compute_status(make_identity(), outcome, NOW)
    assert status["credentials"] == statuses
    assert status["nextRenewalTime"] == next_renewal


def test_no_credential_result_leaves_credential_status_alone() -> None:
    status = compute_status(make_identity(), STALLED, NOW)
    assert "credentials" not in status
    assert "nextRenewalTime" not in status


def test_compute_status_does_not_mutate_the_identity() -> None:
    old = compute_status(make_identity(), READY, T0)
    identity = make_identity(status=old)
    snapshot = copy.deepcopy(dict(identity.status))
    compute_status(identity, FAILING, NOW)
    assert dict(identity.status) == snapshot


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ({}, {"phase": "Active"}, True),
        ({"phase": "Active"}, {"phase": "Active"}, False),
        ({"phase": "Active", "extra": 1}, {"phase": "Active"}, False),
        ({"phase": "Active"}, {"phase": "Active", "observedGeneration": 2}, True),
    ],
)
def test_status_changed(old: dict[str, Any], new: dict[str, Any], changed: bool) -> None:
    assert status_changed(old, new) is changed
