"""The Argo CD health checks on constructed objects, and the generated argocd-cm patch.

The MachineIdentity checks also run against objects the operator really wrote, in
tests/integration/test_argocd_health.py; the issuers' and policies' controllers are newer, so
their checks are exercised here on objects shaped like what the CRDs' status allows.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.argocd import CM_PATCH, GEN_SCRIPT, GROUP, KINDS, health_script, lua, run_health

pytestmark = pytest.mark.unit

CLUSTER_SCOPED = {"ClusterIdentityIssuer", "IdentityPolicy"}


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    out = {"type": type_, "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def obj(
    kind: str,
    conditions: list[dict[str, Any]] | None = None,
    generation: int = 2,
    observed: int | None = 2,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x", "generation": generation, "uid": "u-1"}
    if kind not in CLUSTER_SCOPED:
        meta["namespace"] = "team-a"
    body: dict[str, Any] = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": kind,
        "metadata": meta,
        "spec": {},
    }
    if status is not None or conditions is not None or observed is not None:
        st = dict(status or {})
        if observed is not None:
            st["observedGeneration"] = observed
        if conditions is not None:
            st["conditions"] = conditions
        body["status"] = st
    return body


READY = [
    cond("Ready", "True", "Ready", "issuing from CA abc123"),
    cond("Reconciling", "False", "Ready"),
    cond("Stalled", "False", "Ready"),
]
STALLED = [
    cond("Ready", "False", "InvalidSpec", "spec.ca.secretName: secret ca not found"),
    cond("Reconciling", "False", "InvalidSpec"),
    cond("Stalled", "True", "InvalidSpec", "spec.ca.secretName: secret ca not found"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_script(kind: str) -> None:
    assert health_script(kind).is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_ready_is_healthy(kind: str) -> None:
    assert run_health(kind, obj(kind, READY)) == ("Healthy", "issuing from CA abc123")


@pytest.mark.parametrize("kind", KINDS)
def test_stalled_is_degraded_with_its_message(kind: str) -> None:
    assert run_health(kind, obj(kind, STALLED)) == (
        "Degraded",
        "spec.ca.secretName: secret ca not found",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_stalled_without_a_message_shows_its_reason(kind: str) -> None:
    conditions = [cond("Stalled", "True", "PolicyViolation"), cond("Ready", "False")]
    assert run_health(kind, obj(kind, conditions)) == ("Degraded", "PolicyViolation")


@pytest.mark.parametrize("kind", KINDS)
def test_status_behind_generation_is_progressing_even_if_it_said_ready(kind: str) -> None:
    status, message = run_health(kind, obj(kind, READY, generation=3, observed=2))
    assert status == "Progressing"
    assert message == (
        "Waiting for the operator to observe generation 3 (status is for generation 2)"
    )
    # A stale Stalled is not reported either: the new spec may have fixed it.
    assert run_health(kind, obj(kind, STALLED, generation=3, observed=2))[0] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [None, {}])
def test_no_status_yet_is_progressing(kind: str, status: dict[str, Any] | None) -> None:
    o = obj(kind, observed=None, status=status)
    assert run_health(kind, o) == ("Progressing", "Waiting for the operator to report status")


@pytest.mark.parametrize("kind", KINDS)
def test_reconciling_is_progressing_with_its_message(kind: str) -> None:
    conditions = [
        cond("Ready", "False", "Provisioning", "creating the ServiceAccount"),
        cond("Reconciling", "True", "Provisioning", "creating the ServiceAccount"),
    ]
    assert run_health(kind, obj(kind, conditions)) == (
        "Progressing",
        "creating the ServiceAccount",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_ready_false_or_unknown_without_stalled_is_progressing(kind: str) -> None:
    retrying = [cond("Ready", "False", "ApiError", "the API server said 503; retrying")]
    assert run_health(kind, obj(kind, retrying)) == (
        "Progressing",
        "the API server said 503; retrying",
    )
    unknown = [cond("Ready", "Unknown", "Pending")]
    assert run_health(kind, obj(kind, unknown)) == ("Progressing", "Pending")
    assert run_health(kind, obj(kind, [])) == ("Progressing", "Waiting for the Ready condition")


@pytest.mark.parametrize(
    ("phase", "extra", "message"),
    [
        (
            "Revoked",
            {"revocationReason": "Manual", "revokedAt": "2026-03-01T10:00:00Z"},
            "Identity revoked (Manual) at 2026-03-01T10:00:00Z",
        ),
        ("Revoked", {}, "Identity revoked"),
        (
            "Expired",
            {"expiresAt": "2026-03-01T10:00:00Z"},
            "Identity lifetime ended at 2026-03-01T10:00:00Z",
        ),
    ],
)
def test_revoked_or_expired_identity_is_suspended(
    phase: str, extra: dict[str, Any], message: str
) -> None:
    # Suspended, not Degraded: the identity is intentionally non-functional, whatever its
    # Ready and Stalled say, so Argo CD does not page on it.
    for conditions in (STALLED, [cond("Ready", "False", phase, "identity " + phase.lower())]):
        o = obj("MachineIdentity", conditions, status={"phase": phase, **extra})
        assert run_health("MachineIdentity", o) == ("Suspended", message)
    # ... but a change not yet observed is still Progressing first.
    o = obj("MachineIdentity", STALLED, generation=3, status={"phase": phase, **extra})
    assert run_health("MachineIdentity", o)[0] == "Progressing"


@pytest.mark.parametrize("kind", ["IdentityIssuer", "ClusterIdentityIssuer", "IdentityPolicy"])
def test_other_kinds_ignore_a_phase(kind: str) -> None:
    o = obj(kind, READY, status={"phase": "Revoked"})
    assert run_health(kind, o)[0] == "Healthy"


def test_messages_keep_unicode_and_quotes() -> None:
    conditions = [cond("Stalled", "True", "InvalidSpec", 'spec.owner "é" is not a team \u2713')]
    o = obj("MachineIdentity", conditions)
    assert run_health("MachineIdentity", o) == (
        "Degraded",
        'spec.owner "é" is not a team \u2713',
    )


def test_active_identity_as_the_operator_writes_it_is_healthy() -> None:
    o = obj(
        "MachineIdentity",
        [
            cond("Ready", "True", "Provisioned", "ServiceAccount app with 1 rule(s)"),
            cond("Reconciling", "False", "Provisioned"),
            cond("Stalled", "False", "Provisioned"),
        ],
        status={"phase": "Active", "serviceAccount": "app"},
    )
    assert run_health("MachineIdentity", o) == ("Healthy", "ServiceAccount app with 1 rule(s)")


def test_scripts_are_plain_lua_51_for_argo_cd() -> None:
    """Argo CD runs gopher-lua (Lua 5.1): check the scripts there too when lua5.1 is around."""
    import shutil

    if shutil.which("lua5.1") is None:
        pytest.skip("lua5.1 not installed (optional: apt-get install lua5.1)")
    for kind in KINDS:
        assert run_health(kind, obj(kind, READY), interpreter="lua5.1")[0] == "Healthy"
        assert run_health(kind, obj(kind, STALLED, generation=5), interpreter="lua5.1") == (
            "Progressing",
            "Waiting for the operator to observe generation 5 (status is for generation 2)",
        )


def test_lua54_is_installed() -> None:
    lua("lua5.4")


def test_argocd_cm_patch_matches_the_scripts() -> None:
    generated = subprocess.run(
        ["bash", str(GEN_SCRIPT), "--stdout"], capture_output=True, text=True, check=True
    ).stdout
    assert CM_PATCH.read_text() == generated, (
        "manifests/argocd/argocd-cm-patch.yaml is stale: run `bash hack/gen-argocd-cm.sh`"
    )
    cm = yaml.safe_load(generated)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert cm["data"] == {
        f"resource.customizations.health.{GROUP}_{kind}": health_script(kind).read_text()
        for kind in KINDS
    }
