"""The inventory's edge and rules on any input: parsing never raises, a TLS Secret's
certificate becomes metadata (never its bytes), settings name a bad field; hypothesis
properties of the rules (total, deterministic, disabling and exempting, time)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhi.crypto import build_self_signed_ca, cert_pem, generate_key
from nhi.crypto.metadata import tls_secret_certificate
from nhi.models.fields import SpecError
from nhi.models.inventory import (
    RISKS,
    SEVERITIES,
    managed_identity_from_body,
    service_account_from_body,
    token_secret_from_body,
    workload_from_body,
)
from nhi.models.inventory_config import RULES, Exemption, InventoryConfig, parse_config
from nhi.models.inventory_rbac import binding_from_body, role_from_body
from nhi.policies.findings import evaluate
from nhi.policies.inventory import Observed, build
from tests.unit.inventory_factories import (
    DAY,
    T0,
    binding,
    deployment,
    namespace,
    observed,
    role,
    rule,
    sa,
    token,
)

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "metadata",
        "spec",
        "subjects",
        "roleRef",
        "rules",
        "template",
        "serviceAccountName",
        "namespace",
        "name",
        "labels",
        "annotations",
        "automountServiceAccountToken",
        "creationTimestamp",
        "kind",
    ]
)
bodies = st.dictionaries(keys, json_values, max_size=5)


@given(bodies)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_parsing_any_body_never_raises(body: dict[str, Any]) -> None:
    service_account_from_body(body)
    token_secret_from_body(body)
    role_from_body("Role", body)
    binding_from_body("RoleBinding", body)
    managed_identity_from_body(body)
    for kind in ("Deployment", "CronJob", "Pod", "Job"):
        workload_from_body(kind, body)


def test_tls_secret_certificate_metadata_and_reasons() -> None:
    cert = build_self_signed_ca("inventory test", generate_key(), T0, dt.timedelta(days=30))
    meta, problem = tls_secret_certificate({"tls.crt": base64.b64encode(cert_pem(cert)).decode()})
    assert problem == "" and meta is not None
    assert meta.subject == "CN=inventory test" and meta.validity > dt.timedelta(days=29)
    assert not any(isinstance(v, bytes) for v in dataclasses.astuple(meta))
    for data, reason in [
        (None, "the Secret has no data"),
        ({}, "the Secret holds no tls.crt"),
        ({"tls.crt": "@@@"}, "tls.crt is not base64"),
        (
            {"tls.crt": base64.b64encode(b"not a certificate").decode()},
            "tls.crt holds no parseable PEM certificate",
        ),
    ]:
        assert tls_secret_certificate(data) == (None, reason)


def test_config_parsing_and_errors() -> None:
    c = parse_config(
        {
            "disabledRules": ["unknown-owner"],
            "bounds": {"unusedAfter": "1h", "maxCertificateValidity": "2160h"},
            "ownerKeys": ["squad"],
            "exemptions": [
                {
                    "rules": ["legacy-token-secret"],
                    "namespaces": ["legacy-*"],
                    "labels": {"keep": "yes"},
                }
            ],
        }
    )
    assert c.unused_after == dt.timedelta(hours=1)
    assert c.max_certificate_validity == 90 * DAY and c.owner_keys == ("squad",)
    assert not c.enabled("unknown-owner") and c.enabled("legacy-token-secret")
    assert c.exempt("legacy-token-secret", "legacy-a", "t", {"keep": "yes"})
    assert not c.exempt("legacy-token-secret", "legacy-a", "t", {})
    assert parse_config({}) == InventoryConfig()
    for raw, path in [
        ({"disabledRules": ["nope"]}, "disabledRules[0]"),
        ({"bounds": {"unusedAfter": "soon"}}, "bounds.unusedAfter"),
        ({"exemptions": [{"labels": {"a": 1}}]}, "exemptions[0].labels.a"),
        ({"includeSystem": "yes"}, "includeSystem"),
    ]:
        with pytest.raises(SpecError) as err:
            parse_config(raw)
        assert err.value.path == path


# ------------------------------------------------------------------------------ properties

names = st.sampled_from(["a", "b", "default", "ci"])
namespaces_ = st.sampled_from(["app", "prod", "kube-system"])
verbs = st.lists(
    st.sampled_from(["get", "list", "*", "create", "bind", "escalate"]), min_size=1, max_size=3
)
resources = st.lists(
    st.sampled_from(["pods", "secrets", "*", "pods/exec", "nodes/proxy"]), min_size=1, max_size=2
)


@st.composite
def worlds(draw: st.DrawFn) -> Observed:
    sas = [
        sa(ns, n, created=T0 - draw(st.integers(0, 90)) * DAY)
        for ns, n in draw(st.sets(st.tuples(namespaces_, names), max_size=6))
    ]
    workloads = [
        deployment(ns, f"w{i}", n, automount=draw(st.none() | st.booleans()))
        for i, (ns, n) in enumerate(draw(st.lists(st.tuples(namespaces_, names), max_size=6)))
    ]
    roles = [
        role("ClusterRole", "", f"r{i}", rule(draw(verbs), draw(resources)))
        for i in range(draw(st.integers(0, 3)))
    ]
    bindings = [
        binding(
            kind,
            ns if kind == "RoleBinding" else "",
            f"b{i}",
            "ClusterRole",
            draw(st.sampled_from(["r0", "r1", "cluster-admin", "missing"])),
            ("ServiceAccount", sns, sn),
        )
        for i, (kind, ns, sns, sn) in enumerate(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["RoleBinding", "ClusterRoleBinding"]),
                        namespaces_,
                        namespaces_,
                        names,
                    ),
                    max_size=5,
                )
            )
        )
    ]
    tokens = [
        token(ns, f"t{i}", n, created=T0 - draw(st.integers(0, 200)) * DAY)
        for i, (ns, n) in enumerate(draw(st.lists(st.tuples(namespaces_, names), max_size=3)))
    ]
    nss = [
        namespace(n, environment=draw(st.sampled_from(["prod", "dev"])))
        for n in ("app", "prod", "kube-system")
    ]
    return observed(
        sas=sas, workloads=workloads, roles=roles, bindings=bindings, tokens=tokens, namespaces=nss
    )


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(worlds())
@PROPS
def test_every_finding_is_complete(obs: Observed) -> None:
    for f in evaluate(build(obs, InventoryConfig()), InventoryConfig(), T0):
        assert f.rule in RULES and f.risk in RISKS and f.severity in SEVERITIES
        assert f.objects and f.message and f.fix


@given(worlds(), st.randoms())
@PROPS
def test_findings_do_not_depend_on_the_order_objects_arrive(
    obs: Observed, rnd: random.Random
) -> None:
    shuffled = dataclasses.replace(
        obs,
        workloads=tuple(rnd.sample(list(obs.workloads), len(obs.workloads))),
        bindings=tuple(rnd.sample(list(obs.bindings), len(obs.bindings))),
        tokens=tuple(rnd.sample(list(obs.tokens), len(obs.tokens))),
    )
    c = InventoryConfig()
    assert evaluate(build(obs, c), c, T0) == evaluate(build(shuffled, c), c, T0)


@given(worlds(), st.sets(st.sampled_from(RULES)))
@PROPS
def test_disabling_rules_removes_exactly_their_findings(obs: Observed, off: set[str]) -> None:
    everything = evaluate(build(obs, InventoryConfig()), InventoryConfig(), T0)
    c = InventoryConfig(disabled=frozenset(off))
    assert evaluate(build(obs, c), c, T0) == tuple(f for f in everything if f.rule not in off)


@given(worlds())
@PROPS
def test_a_catch_all_exemption_silences_everything(obs: Observed) -> None:
    c = InventoryConfig(exemptions=(Exemption(),), include_system=True)
    assert evaluate(build(obs, c), c, T0) == ()


@given(worlds(), st.integers(0, 400))
@PROPS
def test_time_only_adds_age_findings(obs: Observed, days: int) -> None:
    """Walking the clock forward never fixes an age finding."""
    c = InventoryConfig()
    aging = {"unused-service-account", "old-token-secret"}
    before = {f for f in evaluate(build(obs, c), c, T0) if f.rule in aging}
    after = set(evaluate(build(obs, c), c, T0 + days * DAY))
    assert before <= after


@given(worlds())
@PROPS
def test_system_findings_only_when_asked(obs: Observed) -> None:
    default = set(evaluate(build(obs, InventoryConfig()), InventoryConfig(), T0))
    wide = InventoryConfig(include_system=True)
    assert default <= set(evaluate(build(obs, wide), wide, T0))


@given(
    st.lists(st.text(alphabet="ab*?[]-/", max_size=5), max_size=4),
    st.text(alphabet="ab-/", max_size=6),
)
@settings(max_examples=300)
def test_compiled_globs_match_as_fnmatchcase_does(patterns: list[str], text: str) -> None:
    import fnmatch

    from nhi.models.inventory_config import globs

    expected = any(fnmatch.fnmatchcase(text, p) for p in patterns)
    assert globs(tuple(patterns))(text) == expected
