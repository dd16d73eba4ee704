"""AccessGrants against the real control plane: request, approval, activation, expiry.

Who may do what is proven with ``kubectl auth can-i --as=system:serviceaccount:...``: the
extra permission exists only between activation and expiry, across an operator restart in
the middle of the window. The requester and the approver are users with only the rights
their roles give (``--as=``); separation of duties and the approve verb are enforced by the
API server (the admission policies of manifests/base/accessgrantpolicy.yaml).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

REQUESTER = "alice"
APPROVER = "bob"
BYSTANDER = "carol"
PVC_DELETE = {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["delete"]}


def _cluster(operator: OperatorProcess) -> Cluster:
    assert operator.cluster is not None
    return operator.cluster


@pytest.fixture
def team(operator: OperatorProcess, namespace: str) -> Iterator[Cluster]:
    """alice may ask for grants and holds what she asks for; bob may approve them; carol may
    edit grants but not approve them. The identity ``app`` exists."""
    cluster = _cluster(operator)
    k = cluster.kubectl
    verbs = "--verb=create,get,list,watch,update,patch,delete"
    k("create", "role", "grant-writer", "-n", namespace, verbs, "--resource=accessgrants.nhi.dev")
    k("create", "role", "pvc-admin", "-n", namespace, "--verb=delete",
      "--resource=persistentvolumeclaims")  # fmt: skip
    approver = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "grant-approver", "namespace": namespace},
        "rules": [
            {"apiGroups": ["nhi.dev"], "resources": ["accessgrants"],
             "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["nhi.dev"], "resources": ["accessgrants/approval"],
             "verbs": ["approve"]},
        ],
    }  # fmt: skip
    k("apply", "-f", "-", input=json.dumps(approver))
    for user, role in (
        (REQUESTER, "grant-writer"),
        (REQUESTER, "pvc-admin"),
        (APPROVER, "grant-approver"),
        (BYSTANDER, "grant-writer"),
    ):
        k("create", "rolebinding", f"{user}-{role}", "-n", namespace, f"--role={role}",
          f"--user={user}")  # fmt: skip
    identity = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"owner": "team-a"},
    }
    k("apply", "--server-side", "-f", "-", input=json.dumps(identity))
    yield cluster


def grant_body(namespace: str, name: str = "pvc-cleanup", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identityRef": {"name": "app"},
        "rules": [PVC_DELETE],
        "duration": "1h",
        "reason": "clean up the volumes of the old release",
    }
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "AccessGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def request(cluster: Cluster, namespace: str, name: str = "pvc-cleanup", **spec: Any) -> None:
    cluster.kubectl(
        "create", "-f", "-", input=json.dumps(grant_body(namespace, name, **spec)),
        as_user=REQUESTER,
    )  # fmt: skip


def decide(
    cluster: Cluster, namespace: str, name: str, user: str, decision: str = "Approved"
) -> Any:
    patch = {"spec": {"approval": {"decision": decision, "message": f"{decision} by {user}"}}}
    return cluster.kubectl(
        "patch", "accessgrant", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch),
        as_user=user, check=False,
    )  # fmt: skip


def can_delete_pvcs(cluster: Cluster, namespace: str) -> bool:
    proc = cluster.kubectl(
        "auth", "can-i", "delete", "persistentvolumeclaims", "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:app", check=False,
    )  # fmt: skip
    return proc.stdout.strip() == "yes"


def grant_events(cluster: Cluster, namespace: str, name: str, reasons: set[str]) -> set[str]:
    """The reasons of the grant's Events, once every one of ``reasons`` is among them."""

    def read() -> set[str]:
        out = cluster.kubectl(
            "get", "events", "-n", namespace, "-o", "json", "--field-selector",
            f"involvedObject.kind=AccessGrant,involvedObject.name={name}",
        )  # fmt: skip
        return {e["reason"] for e in json.loads(out.stdout)["items"]}

    found: set[str] = wait_for(
        lambda: reasons <= (r := read()) and r, timeout=10, message=f"Events {sorted(reasons)}"
    )
    return found


def phase(cluster: Cluster, namespace: str, name: str) -> str:
    obj = cluster.get("accessgrant", name, namespace) or {}
    return str((obj.get("status") or {}).get("phase") or "")


def wait_phase(cluster: Cluster, namespace: str, name: str, want: str, timeout: float = 30) -> Any:
    wait_for(
        lambda: phase(cluster, namespace, name) == want,
        timeout=timeout,
        message=f"AccessGrant {name} {want}",
    )
    return cluster.get("accessgrant", name, namespace)


def wait_reason(cluster: Cluster, namespace: str, name: str, reason: str) -> None:
    """Until the grant's Ready condition gives ``reason``."""

    def found() -> bool:
        obj = cluster.get("accessgrant", name, namespace) or {}
        conditions = (obj.get("status") or {}).get("conditions") or [{}]
        return bool(conditions[0].get("reason") == reason)

    wait_for(found, timeout=30, message=f"AccessGrant {name} {reason}")


def test_request_approve_expire_with_separation_of_duties(
    team: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    cluster = team
    request(cluster, namespace, duration="1m")
    grant = cluster.get("accessgrant", "pvc-cleanup", namespace)
    assert grant is not None
    # The API server recorded who asked; nobody can make it someone else.
    assert grant["spec"]["requester"] == REQUESTER
    wait_phase(cluster, namespace, "pvc-cleanup", "Pending")
    assert not can_delete_pvcs(cluster, namespace)

    # The requester cannot approve her own grant; a user without the approve verb cannot.
    own = decide(cluster, namespace, "pvc-cleanup", REQUESTER)
    assert own.returncode != 0 and "separation of duties" in own.stderr, own.stderr
    other = decide(cluster, namespace, "pvc-cleanup", BYSTANDER)
    assert other.returncode != 0, other.stderr
    assert "the approve verb on accessgrants/approval is needed" in other.stderr
    forged = cluster.kubectl(
        "patch", "accessgrant", "pvc-cleanup", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"requester": BYSTANDER}}), as_user=REQUESTER, check=False,
    )  # fmt: skip
    assert forged.returncode != 0 and "spec.requester is immutable" in forged.stderr
    assert phase(cluster, namespace, "pvc-cleanup") == "Pending"
    assert not can_delete_pvcs(cluster, namespace)

    approved = decide(cluster, namespace, "pvc-cleanup", APPROVER)
    assert approved.returncode == 0, approved.stderr
    started = time.monotonic()
    grant = wait_phase(cluster, namespace, "pvc-cleanup", "Active")
    assert grant["spec"]["approval"]["approver"] == APPROVER
    assert grant["status"]["approvedBy"] == APPROVER
    wait_for(lambda: can_delete_pvcs(cluster, namespace), timeout=10, message="can-i yes")
    # The identity's own permissions are untouched: the grant has its own Role.
    role = cluster.get("role", "nhi-grant-pvc-cleanup", namespace)
    assert role is not None and role["metadata"]["ownerReferences"][0]["kind"] == "AccessGrant"

    # A restart in the middle of the window changes nothing: the expiry is in the status.
    expires_at = grant["status"]["expiresAt"]
    operator.restart(tmp_path / "restarted.log")
    assert can_delete_pvcs(cluster, namespace)
    assert cluster.get("accessgrant", "pvc-cleanup", namespace)["status"]["expiresAt"] == (
        expires_at
    )

    grant = wait_phase(cluster, namespace, "pvc-cleanup", "Expired", timeout=60)
    ended = time.monotonic()
    assert not can_delete_pvcs(cluster, namespace)
    assert cluster.get("role", "nhi-grant-pvc-cleanup", namespace) is None
    assert cluster.get("rolebinding", "nhi-grant-pvc-cleanup", namespace) is None
    assert grant["status"]["endedAt"] == expires_at
    # 60 s from activation, give or take the polling of this test.
    assert 50 <= ended - started <= 70, ended - started
    reasons = grant_events(cluster, namespace, "pvc-cleanup", {"Requested", "Activated", "Expired"})
    assert {"Requested", "Activated", "Expired"} <= reasons


def test_editing_an_approved_grant_withdraws_the_approval(team: Cluster, namespace: str) -> None:
    cluster = team
    request(cluster, namespace)
    assert decide(cluster, namespace, "pvc-cleanup", APPROVER).returncode == 0
    wait_phase(cluster, namespace, "pvc-cleanup", "Active")
    wait_for(lambda: can_delete_pvcs(cluster, namespace), timeout=10, message="can-i yes")

    cluster.kubectl(
        "patch", "accessgrant", "pvc-cleanup", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"duration": "2h"}}), as_user=REQUESTER,
    )  # fmt: skip
    grant = cluster.get("accessgrant", "pvc-cleanup", namespace)
    assert "approval" not in grant["spec"]
    grant = wait_phase(cluster, namespace, "pvc-cleanup", "Pending")
    assert not can_delete_pvcs(cluster, namespace)
    assert grant["status"]["conditions"][0]["reason"] == "ApprovalWithdrawn"


def test_revocation_denial_and_deletion_remove_the_permission(
    team: Cluster, namespace: str
) -> None:
    cluster = team
    request(cluster, namespace)
    assert decide(cluster, namespace, "pvc-cleanup", APPROVER).returncode == 0
    wait_for(lambda: can_delete_pvcs(cluster, namespace), timeout=30, message="can-i yes")
    cluster.kubectl(
        "patch", "accessgrant", "pvc-cleanup", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"revoked": True}}), as_user=REQUESTER,
    )  # fmt: skip
    wait_phase(cluster, namespace, "pvc-cleanup", "Revoked")
    assert not can_delete_pvcs(cluster, namespace)
    again = decide(cluster, namespace, "pvc-cleanup", APPROVER, "Denied")
    assert again.returncode == 0  # a decision on an ended grant changes nothing
    time.sleep(1)
    assert phase(cluster, namespace, "pvc-cleanup") == "Revoked"

    request(cluster, namespace, "denied")
    assert decide(cluster, namespace, "denied", APPROVER, "Denied").returncode == 0
    wait_phase(cluster, namespace, "denied", "Denied")
    assert not can_delete_pvcs(cluster, namespace)

    request(cluster, namespace, "deleted")
    assert decide(cluster, namespace, "deleted", APPROVER).returncode == 0
    wait_for(lambda: can_delete_pvcs(cluster, namespace), timeout=30, message="can-i yes")
    cluster.kubectl("delete", "accessgrant", "deleted", "-n", namespace, "--timeout=30s",
                    as_user=REQUESTER)  # fmt: skip
    assert not can_delete_pvcs(cluster, namespace)
    assert cluster.get("role", "nhi-grant-deleted", namespace) is None


def test_a_requester_cannot_grant_what_she_does_not_hold(team: Cluster, namespace: str) -> None:
    cluster = team
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}
    request(cluster, namespace, rules=[secrets])
    assert decide(cluster, namespace, "pvc-cleanup", APPROVER).returncode == 0
    wait_reason(cluster, namespace, "pvc-cleanup", "PrivilegeEscalation")
    grant = cluster.get("accessgrant", "pvc-cleanup", namespace)
    message = grant["status"]["conditions"][0]["message"]
    assert "spec.rules[0]: alice may not grant get secrets" in message
    proc = cluster.kubectl(
        "auth", "can-i", "get", "secrets", "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:app", check=False,
    )  # fmt: skip
    assert proc.stdout.strip() == "no"


def test_a_grant_never_takes_over_a_foreign_role(team: Cluster, namespace: str) -> None:
    """A Role already named like the grant's is left exactly as it was."""
    cluster = team
    cluster.kubectl("create", "role", "nhi-grant-pvc-cleanup", "-n", namespace, "--verb=get",
                    "--resource=configmaps")  # fmt: skip
    before = cluster.get("role", "nhi-grant-pvc-cleanup", namespace)
    request(cluster, namespace)
    assert decide(cluster, namespace, "pvc-cleanup", APPROVER).returncode == 0
    wait_reason(cluster, namespace, "pvc-cleanup", "OwnershipConflict")
    after = cluster.get("role", "nhi-grant-pvc-cleanup", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not can_delete_pvcs(cluster, namespace)
    cluster.kubectl("delete", "accessgrant", "pvc-cleanup", "-n", namespace, "--timeout=30s")
    assert cluster.get("role", "nhi-grant-pvc-cleanup", namespace) is not None


def test_a_policy_approves_read_only_grants_and_bounds_the_others(
    team: Cluster, namespace: str
) -> None:
    cluster = team
    k = cluster.kubectl
    k("label", "namespace", namespace, f"grants-policy={namespace}")
    k("create", "role", "cm-reader", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    k("create", "rolebinding", "alice-cm", "-n", namespace, "--role=cm-reader",
      f"--user={REQUESTER}")  # fmt: skip
    policy = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": f"grants-{namespace}"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"grants-policy": namespace}},
            "requireOwner": False,
            "grants": {"maxDuration": "2h", "autoApprove": {"maxDuration": "30m"}},
        },
    }
    k("apply", "--server-side", "-f", "-", input=json.dumps(policy))
    try:
        read = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
        request(cluster, namespace, "read", rules=[read], duration="15m")
        grant = wait_phase(cluster, namespace, "read", "Active")
        assert grant["status"]["approvedBy"] == f"IdentityPolicy/grants-{namespace}"
        proc = k("auth", "can-i", "list", "configmaps", "-n", namespace,
                 f"--as=system:serviceaccount:{namespace}:app", check=False)  # fmt: skip
        assert proc.stdout.strip() == "yes"

        # Deleting PVCs is not read-only: it waits for a person.
        request(cluster, namespace, "write", duration="15m")
        wait_phase(cluster, namespace, "write", "Pending")
        assert not can_delete_pvcs(cluster, namespace)
        # Longer than the policy allows: refused, even when a person approves it.
        request(cluster, namespace, "long", duration="3h")
        assert decide(cluster, namespace, "long", APPROVER).returncode == 0
        wait_for(
            lambda: (
                "grants.maxDuration (2h)"
                in str((cluster.get("accessgrant", "long", namespace) or {}).get("status"))
            ),
            timeout=30,
            message="the long grant refused by the policy",
        )
        assert not can_delete_pvcs(cluster, namespace)
    finally:
        k("delete", "identitypolicy", f"grants-{namespace}", "--ignore-not-found")


def test_the_cli_approves_lists_shows_and_revokes(team: Cluster, namespace: str) -> None:
    """``nhi grant`` runs as the kubeconfig's user (the cluster admin here): the admin may
    approve alice's grant, and may not approve one the admin asked for."""
    cluster = team

    def nhi(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "nhi.cli.main", *args, "-n", namespace]
        return subprocess.run(cmd, capture_output=True, text=True, env=cluster.env(), timeout=60)

    request(cluster, namespace)
    admins = grant_body(namespace, "admins-own")
    cluster.kubectl("create", "-f", "-", input=json.dumps(admins))
    own = nhi("grant", "approve", "admins-own")
    assert own.returncode == 1 and "separation of duties" in own.stderr, own.stderr
    approved = nhi("grant", "approve", "pvc-cleanup", "-m", "ticket 42")
    assert approved.returncode == 0, approved.stderr
    wait_phase(cluster, namespace, "pvc-cleanup", "Active")
    listed = nhi("grant", "list")
    assert listed.returncode == 0, listed.stderr
    assert "pvc-cleanup" in listed.stdout and "Active" in listed.stdout
    shown = json.loads(nhi("grant", "show", "pvc-cleanup", "-o", "json").stdout)
    assert shown["requester"] == REQUESTER and shown["phase"] == "Active"
    assert shown["approvedBy"] == "nhi-admin"
    assert nhi("grant", "revoke", "pvc-cleanup").returncode == 0
    wait_phase(cluster, namespace, "pvc-cleanup", "Revoked")
    assert not can_delete_pvcs(cluster, namespace)
    missing = nhi("grant", "show", "nope")
    assert missing.returncode == 1 and 'accessgrant "nope" not found' in missing.stderr
