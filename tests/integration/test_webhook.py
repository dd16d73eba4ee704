"""The IdentityPolicy admission webhook, called by the real kube-apiserver over TLS.

The module runs its own operator with the webhook on 127.0.0.1, restricted (``--namespace``)
to a pool of namespaces created here, so the session operator and the other test modules are
not affected: the ValidatingWebhookConfiguration covers those namespaces only, is
``failurePolicy: Ignore`` and is deleted at the end, with every policy created here.
The serving certificate lives 20 s, so it is renewed every ~13 s while the tests run.
"""

from __future__ import annotations

import base64
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.conftest import Cluster, OperatorProcess, free_port, start_operator, wait_for

pytestmark = pytest.mark.integration

POOL = 16
CERT_TTL = "20s"
CM_RULE = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}


class Webhook:
    """The module's operator and what the tests need to drive it."""

    def __init__(
        self,
        cluster: Cluster,
        op: OperatorProcess,
        port: int,
        op_ns: str,
        config: str,
        pool: list[str],
        env: dict[str, str],
    ) -> None:
        self.env = env
        self.cluster = cluster
        self.op = op
        self.port = port
        self.op_ns = op_ns
        self.config = config
        self.pool = pool

    def restart(self, log: Path) -> None:
        """Stop the operator and start it again with the same arguments and environment."""
        self.op.stop()
        new = start_operator(self.cluster, log, *self.op.args, env=self.env)
        self.op.proc, self.op.log_path = new.proc, new.log_path

    def configuration(self) -> dict[str, Any] | None:
        return self.cluster.get("validatingwebhookconfiguration", self.config)

    def served_serial(self) -> int:
        pem = ssl.get_server_certificate(("127.0.0.1", self.port), timeout=5)
        return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


@pytest.fixture(scope="module")
def webhook(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    cluster = crds
    suffix = uuid.uuid4().hex[:6]
    op_ns = f"nhi-wh-{suffix}"
    config = f"nhi-test-{suffix}"
    pool = [f"wh-{suffix}-{i}" for i in range(POOL)]
    for ns in [op_ns, *pool]:
        cluster.kubectl("create", "namespace", ns)
    port = free_port()
    args = ["--webhook-port", str(port), "--webhook-host", "127.0.0.1"]
    args += ["--webhook-configuration", config, "--webhook-cert-ttl", CERT_TTL]
    for ns in pool:
        args += ["--namespace", ns]
    log = tmp_path_factory.mktemp("webhook") / "operator.log"
    env = {**cluster.env(), "NHI_NAMESPACE": op_ns}
    op = start_operator(cluster, log, *args, env=env)
    hook = Webhook(cluster, op, port, op_ns, config, list(pool), env)
    try:
        wait_for(hook.configuration, timeout=60, message="the ValidatingWebhookConfiguration")
        yield hook
    finally:
        op.stop()
        # Never leave a webhook behind: it would sit in front of every later test.
        cluster.kubectl("delete", "validatingwebhookconfiguration", config, check=False)
        cluster.kubectl("delete", "identitypolicy", "-l", f"nhi-webhook-test={suffix}", check=False)
        for ns in [op_ns, *pool]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def ns(webhook: Webhook) -> str:
    assert webhook.pool, "the namespace pool is used up: raise POOL"
    return webhook.pool.pop(0)


@pytest.fixture
def policies(webhook: Webhook) -> Iterator[list[str]]:
    """Names of the policies a test creates; deleted when it ends."""
    created: list[str] = []
    yield created
    for name in created:
        webhook.cluster.kubectl("delete", "identitypolicy", name, "--wait=false", check=False)


def make_policy(webhook: Webhook, created: list[str], ns: str, **spec: Any) -> str:
    name = f"{ns}-{len(created)}"
    suffix = webhook.config.rsplit("-", 1)[1]
    body = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": name, "labels": {"nhi-webhook-test": suffix}},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            **spec,
        },
    }
    created.append(name)
    webhook.cluster.apply(body)
    return name


def identity(ns: str, name: str = "app", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "team-a", "permissions": {"rules": [CM_RULE]}}
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def submit(
    cluster: Cluster, obj: dict[str, Any], *, as_user: str | None = None, dry_run: bool = True
) -> tuple[bool, str]:
    """kubectl apply (server-side, dry-run by default); (accepted, stderr)."""
    args = ["apply", "--server-side", "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    proc = cluster.kubectl(*args, input=yaml.safe_dump(obj), check=False, as_user=as_user)
    return proc.returncode == 0, proc.stderr


def denied(cluster: Cluster, obj: dict[str, Any], *parts: str, as_user: str | None = None) -> str:
    """Wait until the webhook refuses ``obj`` (a new policy takes a moment to reach the
    operator's cache); the message must contain every part."""

    def check() -> str | None:
        ok, err = submit(cluster, obj, as_user=as_user)
        return None if ok else err

    err = wait_for(check, timeout=20, interval=0.3, message="the webhook to deny")
    for part in parts:
        assert part in err, err
    assert "admission webhook" in err and "denied the request" in err, err
    return err


def admitted(cluster: Cluster, obj: dict[str, Any], *, as_user: str | None = None) -> str:
    ok, err = submit(cluster, obj, as_user=as_user)
    assert ok, err
    return err


# ------------------------------------------------------------------------------ setup


def test_configuration_cannot_lock_the_cluster_out(webhook: Webhook) -> None:
    cfg = webhook.configuration()
    assert cfg is not None
    # One webhook for MachineIdentities, one for AccessGrants: both fail open, both spare
    # kube-system and the operator's namespace.
    hook, grants = cfg["webhooks"]
    for h, path in ((hook, "validate-machineidentity"), (grants, "validate-accessgrant")):
        assert h["failurePolicy"] == "Ignore"
        assert h["timeoutSeconds"] == 5
        assert h["clientConfig"]["url"] == f"https://127.0.0.1:{webhook.port}/{path}"
        exprs = h["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": sorted(["kube-system", webhook.op_ns])} in exprs  # fmt: skip
    assert grants["rules"][0]["resources"] == ["accessgrants"]
    # The CA in the caBundle is the one kept in the Secret (reused across restarts).
    secret = webhook.cluster.get("secret", "nhi-operator-webhook-tls", webhook.op_ns)
    assert secret is not None
    ca = base64.b64decode(secret["data"]["ca.crt"])
    assert base64.b64decode(hook["clientConfig"]["caBundle"]).startswith(ca)


# ------------------------------------------------------------------------------ escalation


def test_user_cannot_grant_what_they_do_not_hold(
    webhook: Webhook, ns: str, policies: list[str]
) -> None:
    cluster = webhook.cluster
    cluster.kubectl(
        "create", "role", "mi-writer", "-n", ns,
        "--verb=get,list,create,patch,update", "--resource=machineidentities.nhi.dev",
    )  # fmt: skip
    cluster.kubectl("create", "rolebinding", "mi-writer", "-n", ns, "--role=mi-writer",
                    "--user=alice")  # fmt: skip
    secrets = identity(
        ns, permissions={"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    )
    err = denied(cluster, secrets, "spec.permissions.rules[0]", "alice may not grant get secrets",
                 "privilege escalation", as_user="alice")  # fmt: skip

    # configmaps: denied until alice holds it herself, then admitted.
    denied(cluster, identity(ns), "alice may not grant get configmaps", as_user="alice")
    cluster.kubectl("create", "role", "cm-reader", "-n", ns, "--verb=get",
                    "--resource=configmaps")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "cm-reader", "-n", ns, "--role=cm-reader",
                    "--user=alice")  # fmt: skip
    wait_for(lambda: submit(cluster, identity(ns), as_user="alice")[0], timeout=20,
             message="alice's identity to be admitted")  # fmt: skip
    # For real, not only a dry run.
    ok, err = submit(cluster, identity(ns), as_user="alice", dry_run=False)
    assert ok, err
    # Still denied for secrets.
    assert not submit(cluster, secrets, as_user="alice")[0]

    # A role reference needs bind on the role (or every rule in it).
    refs = identity(
        ns, name="refs", permissions={"roleRefs": [{"kind": "Role", "name": "admin-ish"}]}
    )
    cluster.kubectl("create", "role", "admin-ish", "-n", ns, "--verb=get,list",
                    "--resource=secrets")  # fmt: skip
    denied(cluster, refs, "spec.permissions.roleRefs[0]", "may not bind Role 'admin-ish'",
           as_user="alice")  # fmt: skip
    cluster.kubectl("create", "role", "binder", "-n", ns, "--verb=bind",
                    "--resource=roles.rbac.authorization.k8s.io",
                    "--resource-name=admin-ish")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "binder", "-n", ns, "--role=binder",
                    "--user=alice")  # fmt: skip
    wait_for(lambda: submit(cluster, refs, as_user="alice")[0], timeout=20,
             message="alice's role reference to be admitted once she may bind it")  # fmt: skip

    # delegatePermissions waives the check.
    make_policy(webhook, policies, ns, delegatePermissions=True)
    wait_for(lambda: submit(cluster, secrets, as_user="alice")[0], timeout=20,
             message="delegatePermissions to admit the identity")  # fmt: skip
    del err


# ------------------------------------------------------------------------------ each rule

TOKEN = {"name": "api", "type": "ServiceAccountToken"}

RULES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], list[str]]] = [
    # (policy rule, policy spec, denied identity spec, admitted identity spec, message parts)
    ("maxTTL", {"maxTTL": {"ServiceAccountToken": "24h"}},
     {"credentials": [{**TOKEN, "ttl": "48h"}]},
     {"credentials": [{**TOKEN, "ttl": "12h"}]},
     ["(maxTTL): spec.credentials[0].ttl 48h exceeds the maximum 24h for ServiceAccountToken"]),
    ("maxValidFor", {"maxValidFor": "72h"},
     {"lifetime": {"validFor": "100h"}},
     {"lifetime": {"validFor": "24h"}},
     ["(maxValidFor): spec.lifetime.validFor 100h exceeds the maximum 72h"]),
    ("forbidWildcards", {"forbidWildcards": True},
     {"permissions": {"rules": [{**CM_RULE, "verbs": ["*"]}]}},
     {"permissions": {"rules": [{**CM_RULE, "verbs": ["get", "list"]}]}},
     ["(forbidWildcards): spec.permissions.rules[0].verbs"]),
    ("forbiddenRules", {"forbiddenRules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]},
     {"permissions": {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}},
     {"permissions": {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}},
     ["(forbiddenRules[0]): spec.permissions.rules[0] grants list on secrets"]),
    ("allowedClusterRoles", {"allowedClusterRoles": ["view"]},
     {"permissions": {"roleRefs": [{"kind": "ClusterRole", "name": "edit"}]}},
     {"permissions": {"roleRefs": [{"kind": "ClusterRole", "name": "view"}]}},
     ["(allowedClusterRoles): spec.permissions.roleRefs[0] binds ClusterRole 'edit'"]),
    ("allowedIssuers", {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "good-ca"}]},
     {"credentials": [{"name": "m", "type": "X509", "issuerRef": {"name": "other-ca"}}]},
     {"credentials": [{"name": "m", "type": "X509", "issuerRef": {"name": "good-ca"}}]},
     ["(allowedIssuers): spec.credentials[0].issuerRef ClusterIdentityIssuer/other-ca"]),
    ("allowClusterRules", {"allowClusterRules": False},
     {"permissions": {"clusterRules": [{"apiGroups": [""], "resources": ["nodes"],
                                        "verbs": ["get"]}]}},
     {"permissions": {"rules": [CM_RULE]}},
     ["(allowClusterRules): spec.permissions.clusterRules"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy_spec", "bad", "good", "parts"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_each_policy_rule_denies_and_admits(
    webhook: Webhook,
    ns: str,
    policies: list[str],
    policy_spec: dict[str, Any],
    bad: dict[str, Any],
    good: dict[str, Any],
    parts: list[str],
) -> None:
    cluster = webhook.cluster
    name = make_policy(webhook, policies, ns, **policy_spec)
    err = denied(cluster, identity(ns, **bad), f'IdentityPolicy "{name}"', *parts)
    assert "Warning:" not in err
    admitted(cluster, identity(ns, **good))


def test_cluster_rules_allowed_by_policy(webhook: Webhook, ns: str, policies: list[str]) -> None:
    cluster = webhook.cluster
    nodes = identity(
        ns,
        permissions={
            "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
        },
    )
    name = make_policy(webhook, policies, ns)
    denied(cluster, nodes, f'IdentityPolicy "{name}" (allowClusterRules)')
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": name},
            "spec": {"allowClusterRules": True},
        }
    )
    wait_for(lambda: submit(cluster, nodes)[0], timeout=20, message="cluster rules admitted")


def test_require_owner(webhook: Webhook, ns: str, policies: list[str]) -> None:
    # A blank owner never reaches the webhook: the CRD schema refuses it first (requireOwner
    # is defence in depth, see docs/policy.md). An owner is admitted.
    cluster = webhook.cluster
    make_policy(webhook, policies, ns, requireOwner=True)
    ok, err = submit(cluster, identity(ns, owner=" "))
    assert not ok and "spec.owner" in err
    admitted(cluster, identity(ns, owner="team-a"))


def test_warn_admits_with_a_warning(webhook: Webhook, ns: str, policies: list[str]) -> None:
    cluster = webhook.cluster
    name = make_policy(
        webhook, policies, ns, enforcement="Warn", maxTTL={"ServiceAccountToken": "1h"}
    )
    bad = identity(ns, credentials=[{**TOKEN, "ttl": "2h"}])

    def warned() -> str | None:
        ok, err = submit(cluster, bad)
        assert ok, err
        return err if "Warning:" in err else None

    err = wait_for(warned, timeout=20, message="a warning from the webhook")
    assert f'IdentityPolicy "{name}" (maxTTL): spec.credentials[0].ttl 2h exceeds' in err
    # A Deny policy next to it refuses the same identity.
    other = make_policy(webhook, policies, ns, maxTTL={"ServiceAccountToken": "90m"})
    err = denied(cluster, bad, f'IdentityPolicy "{other}" (maxTTL)')


# ------------------------------------------------------------------------------ outages


def test_certificate_renewal_does_not_interrupt_admission(
    webhook: Webhook, ns: str, policies: list[str]
) -> None:
    cluster = webhook.cluster
    name = make_policy(webhook, policies, ns, maxTTL={"ServiceAccountToken": "1h"})
    bad = identity(ns, credentials=[{**TOKEN, "ttl": "2h"}])
    denied(cluster, bad, f'IdentityPolicy "{name}"')
    bundle = _bundle(webhook)
    serials = {webhook.served_serial()}
    deadline = time.monotonic() + 35  # the certificate lives 20 s: at least two renewals
    answers = 0
    while time.monotonic() < deadline:
        ok, err = submit(cluster, bad)
        # Each request is answered by the webhook (a failure would be ignored: admitted).
        assert not ok and f'IdentityPolicy "{name}"' in err, err
        answers += 1
        serials.add(webhook.served_serial())
    assert len(serials) >= 2, "the serving certificate was not renewed"
    assert answers >= 10
    assert _bundle(webhook) == bundle, "the caBundle changed with a serving-certificate renewal"


def test_restart_reuses_the_certificate_and_an_outage_admits(
    webhook: Webhook, ns: str, policies: list[str], tmp_path: Path
) -> None:
    cluster = webhook.cluster
    name = make_policy(webhook, policies, ns, maxTTL={"ServiceAccountToken": "1h"})
    bad = identity(ns, credentials=[{**TOKEN, "ttl": "2h"}])
    denied(cluster, bad, f'IdentityPolicy "{name}"')
    bundle = _bundle(webhook)
    webhook.op.stop()
    try:
        # failurePolicy Ignore: with nobody answering, writes go through (and are checked
        # again at reconcile time); the cluster is not locked out.
        ok, err = submit(cluster, bad)
        assert ok, err
    finally:
        webhook.restart(tmp_path / "restart.log")
    denied(cluster, bad, f'IdentityPolicy "{name}"')
    assert _bundle(webhook) == bundle, "a restart changed the caBundle"


def test_identity_admitted_while_the_webhook_is_down_is_stalled(
    webhook: Webhook, ns: str, policies: list[str], tmp_path: Path
) -> None:
    cluster = webhook.cluster
    name = make_policy(webhook, policies, ns, maxTTL={"ServiceAccountToken": "1h"})
    bad = identity(ns, name="sneaky", credentials=[{**TOKEN, "ttl": "2h"}])
    denied(cluster, bad, f'IdentityPolicy "{name}"')
    webhook.op.stop()
    try:
        ok, err = submit(cluster, bad, dry_run=False)
        assert ok, err
    finally:
        webhook.restart(tmp_path / "restart.log")

    def stalled() -> dict[str, Any] | None:
        obj = cluster.get("machineidentity", "sneaky", ns) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == "Stalled" and c["status"] == "True":
                return dict(c)
        return None

    try:
        cond = wait_for(stalled, timeout=30, message="the identity to go Stalled")
        assert cond["reason"] == "PolicyViolation", cond
        assert f'IdentityPolicy "{name}" (maxTTL): spec.credentials[0].ttl' in cond["message"]
        assert cluster.get("serviceaccount", "sneaky", ns) is None  # nothing applied
    finally:
        cluster.kubectl("delete", "machineidentity", "sneaky", "-n", ns, "--wait=false",
                        check=False)  # fmt: skip


def _bundle(webhook: Webhook) -> str:
    cfg = webhook.configuration()
    assert cfg is not None
    return str(cfg["webhooks"][0]["clientConfig"]["caBundle"])


def test_objects_the_identity_would_take_over_are_refused_at_admission(
    webhook: Webhook, ns: str
) -> None:
    """Where admission can see it, a conflict is refused there, naming the field: another
    app's Secret, a Secret another identity declares, a namesake ServiceAccount."""
    cluster = webhook.cluster
    cluster.kubectl("create", "secret", "generic", "db-password", "-n", ns,
                    "--from-literal=password=hunter2")  # fmt: skip
    grab = identity(ns, credentials=[
        {"name": "grab", "type": "StaticSecret", "secretName": "db-password"}])  # fmt: skip
    denied(cluster, grab, "spec.credentials[0].secretName: Secret 'db-password'",
           "was not created by nhi-operator for this identity")  # fmt: skip

    ok, err = submit(cluster, identity(ns, name="victim", credentials=[
        {"name": "key", "type": "StaticSecret"}]), dry_run=False)  # fmt: skip
    assert ok, err
    thief = identity(ns, name="thief", credentials=[
        {"name": "key", "type": "StaticSecret", "secretName": "victim.key"}])  # fmt: skip
    denied(cluster, thief, "spec.credentials[0].secretName: Secret 'victim.key' is already "
           "declared by MachineIdentity 'victim'")  # fmt: skip

    cluster.kubectl("create", "serviceaccount", "deployer", "-n", ns)
    denied(cluster, identity(ns, name="deployer"),
           "spec.serviceAccount.name: ServiceAccount 'deployer'")  # fmt: skip


def test_access_grants_are_reviewed_at_admission(
    webhook: Webhook, ns: str, policies: list[str]
) -> None:
    """An unknown identity, a duration over the policy's maximum, a forbidden rule and a rule
    the requester does not hold are refused as the grant is written, naming the field."""
    cluster = webhook.cluster
    ok, err = submit(cluster, identity(ns), dry_run=False)
    assert ok, err
    make_policy(
        webhook,
        policies,
        ns,
        requireOwner=False,
        grants={"maxDuration": "1h"},
        forbiddenRules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}],
    )

    def grant(**spec: Any) -> dict[str, Any]:
        body = {
            "identityRef": {"name": "app"},
            "rules": [CM_RULE],
            "duration": "30m",
            "reason": "a test",
        }
        body.update(spec)
        return {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "AccessGrant",
            "metadata": {"name": "g", "namespace": ns},
            "spec": body,
        }

    denied(cluster, grant(identityRef={"name": "nobody"}), "spec.identityRef", "does not exist")
    denied(cluster, grant(duration="2h"), "spec.duration: 2h is longer than", "maxDuration (1h)")
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    denied(cluster, grant(rules=[secrets]), "spec.rules[0]: asks for get on secrets")
    # A user who may write grants but holds no configmap permission cannot ask for one.
    cluster.kubectl("create", "role", "grant-writer", "-n", ns, "--verb=create,get,patch",
                    "--resource=accessgrants.nhi.dev")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "dave", "-n", ns, "--role=grant-writer",
                    "--user=dave")  # fmt: skip
    denied(cluster, grant(), "spec.rules[0]: dave may not grant", as_user="dave")
    admitted(cluster, grant())
