"""Usage from audit events, the pure parts: parsing a batch (whole or nothing), the bounded
book, its persisted form, which declared rule an access falls under, unused rules, and the
right-sized permissions (never wider than declared, covering every observed use)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhi.models.identity import PolicyRule
from nhi.models.usage import (
    ANY_NAME,
    MAX_CREDENTIALS,
    MAX_ENTRIES,
    Access,
    AuditError,
    Observation,
    Seen,
    UsageBook,
    book_from_json,
    book_to_json,
    parse_event_list,
)
from nhi.policies import usage as policy

pytestmark = pytest.mark.unit

CID = "authentication.kubernetes.io/credential-id"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def event(**overrides: Any) -> dict[str, Any]:
    """One audit.k8s.io/v1 Event of a ServiceAccount reading a ConfigMap."""
    base: dict[str, Any] = {
        "level": "Metadata",
        "auditID": "a-1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/team/configmaps/settings",
        "verb": "get",
        "user": {
            "username": "system:serviceaccount:team:billing",
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=abc"],
                "authentication.kubernetes.io/pod-name": ["billing-0"],
            },
        },
        "objectRef": {
            "resource": "configmaps",
            "namespace": "team",
            "name": "settings",
            "apiVersion": "v1",
        },
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-12-01T12:00:00.000000Z",
        "stageTimestamp": "2026-12-01T12:00:00.100000Z",
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    base.update(overrides)
    return base


def batch(*items: Any) -> dict[str, Any]:
    return {"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": list(items)}


def test_a_service_account_request_becomes_an_observation_with_its_credential() -> None:
    (obs,) = parse_event_list(batch(event()))
    assert (obs.namespace, obs.service_account) == ("team", "billing")
    assert obs.access == Access("", "configmaps", "", "team", "settings", "get")
    assert (obs.credential_id, obs.pod) == ("JTI=abc", "billing-0")
    assert obs.at == dt.datetime(2026, 12, 1, 12, 0, 0, 100000, tzinfo=dt.UTC)
    assert not obs.denied


@pytest.mark.parametrize(
    "overrides",
    [
        {"stage": "RequestReceived"},
        {"stage": "ResponseStarted"},
        {"user": {"username": "alice"}},
        {"user": {"username": "system:serviceaccount:only-namespace"}},
        {"objectRef": None},  # a non-resource URL such as /healthz
    ],
)
def test_what_is_not_an_answered_resource_request_of_a_service_account_is_skipped(
    overrides: dict[str, Any],
) -> None:
    assert parse_event_list(batch(event(**overrides))) == []


def test_a_denied_request_is_marked_and_not_counted_as_use() -> None:
    (obs,) = parse_event_list(batch(event(annotations={"authorization.k8s.io/decision": "forbid"})))
    book = UsageBook("team", "billing")
    book.record(obs)
    assert obs.denied and book.entries == {} and book.denied == 1


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ([], "body"),
        ({"kind": "EventList", "items": []}, "EventList"),
        (batch(event(), {"auditID": 5}), "items[1].auditID"),
        (batch(event(), event(stageTimestamp="yesterday")), "items[1]"),
        (batch(event(objectRef={"resource": ["x"]})), "items[0].objectRef.resource"),
        (
            batch(event(user={"username": "system:serviceaccount:a:b", "extra": {CID: "JTI=x"}})),
            "items[0].user.extra.authentication.kubernetes.io/credential-id",
        ),
        ({**batch(), "items": {"a": 1}}, "items"),
        (batch(event(verb="g" * 300)), "items[0].verb"),
    ],
)
def test_a_malformed_batch_is_refused_whole_naming_the_field(body: Any, where: str) -> None:
    with pytest.raises(AuditError) as err:
        parse_event_list(body)
    assert where in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                        max_size=4),
                    max_leaves=30))  # fmt: skip
def test_any_json_either_parses_or_is_refused_with_an_audit_error(data: Any) -> None:
    for body in (data, batch(data), batch(event(user=data)), batch(event(objectRef=data))):
        try:
            parse_event_list(body)
        except AuditError:
            pass


def observation(
    access: Access, at: dt.datetime = T0, cid: str = "", audit_id: str = "x"
) -> Observation:
    return Observation(audit_id, "team", "billing", access, at, credential_id=cid)


def access(
    verb: str = "get", name: str = "settings", resource: str = "configmaps", **kw: str
) -> Access:
    fields = {"api_group": "", "subresource": "", "namespace": "team"} | kw
    return Access(resource=resource, name=name, verb=verb, **fields)


def test_the_book_counts_and_keeps_first_and_last_seen() -> None:
    book = UsageBook("team", "billing")
    book.record(observation(access(), T0 + dt.timedelta(minutes=5)))
    book.record(observation(access(), T0))
    seen = book.entries[access()]
    assert (seen.first, seen.last, seen.count) == (
        int(T0.timestamp()),
        int(T0.timestamp()) + 300,
        2,
    )


def test_a_full_book_folds_names_instead_of_forgetting_use() -> None:
    book = UsageBook("team", "billing")
    for i in range(MAX_ENTRIES + 50):
        book.record(observation(access(name=f"cm-{i}"), cid=f"JTI={i}"))
    assert len(book.entries) == MAX_ENTRIES
    assert access(name=ANY_NAME) in book.entries
    assert book.folded == 50
    assert len(book.credentials) == MAX_CREDENTIALS


def test_a_book_survives_its_persisted_form_and_garbage_is_refused() -> None:
    book = UsageBook("team", "billing")
    book.record(observation(access(), cid="JTI=abc"))
    book.record(observation(access(verb="list", name="")))
    again = book_from_json(json.loads(json.dumps(book_to_json(book))))
    assert again == book
    with pytest.raises(AuditError):
        book_from_json({"serviceAccount": {"namespace": "a", "name": "b"}, "entries": [[1]]})


# ------------------------------------------------------------------------------ rules

CM_READ = PolicyRule(("",), ("configmaps",), ("get", "list"))
SECRET_READ = PolicyRule(("",), ("secrets",), ("get",))
DEPLOY = PolicyRule(("apps",), ("deployments", "deployments/scale"), ("*",))


def entries(*accesses: Access, at: dt.datetime = T0) -> dict[Access, Seen]:
    ts = int(at.timestamp())
    return {a: Seen(ts, ts) for a in accesses}


@pytest.mark.parametrize(
    ("rule", "acc", "allowed"),
    [
        (CM_READ, access(), True),
        (CM_READ, access(verb="delete"), False),
        (CM_READ, access(resource="secrets"), False),
        (
            DEPLOY,
            access("update", "web", "deployments", subresource="scale", api_group="apps"),
            True,
        ),
        (
            DEPLOY,
            access("get", "web", "deployments", subresource="status", api_group="apps"),
            False,
        ),
        (PolicyRule(("*",), ("*",), ("get",)), access(resource="pods", subresource="log"), True),
        (PolicyRule(("",), ("*/log",), ("get",)), access(resource="pods", subresource="log"), True),
        (PolicyRule(("",), ("configmaps",), ("get",), ("a",)), access(name="b"), False),
        (PolicyRule(("",), ("configmaps",), ("get",), ("a",)), access(name=ANY_NAME), True),
    ],
)
def test_which_rule_allows_an_access(rule: PolicyRule, acc: Access, allowed: bool) -> None:
    assert policy.rule_allows(rule, acc) is allowed


def test_a_namespaced_rule_counts_only_use_in_the_identity_namespace() -> None:
    used = entries(access(namespace="elsewhere"))
    (rule_use, cluster_use) = policy.rule_uses([CM_READ], [CM_READ], "team", used)
    assert rule_use.last_used is None
    assert cluster_use.last_used == T0 and cluster_use.path == "spec.permissions.clusterRules[0]"


def test_a_rule_is_unused_only_after_the_window_counted_from_observation_start() -> None:
    uses = policy.rule_uses([CM_READ, SECRET_READ], [], "team", entries(access()))
    after = dt.timedelta(days=30)
    assert policy.unused(uses, T0, T0 + dt.timedelta(days=29), after) == []
    stale = policy.unused(uses, T0, T0 + dt.timedelta(days=30), after)
    assert [u.path for u in stale] == ["spec.permissions.rules[0]", "spec.permissions.rules[1]"]
    recent = policy.rule_uses(
        [CM_READ, SECRET_READ], [], "team", entries(access(), at=T0 + dt.timedelta(days=10))
    )
    assert [u.path for u in policy.unused(recent, T0, T0 + dt.timedelta(days=30), after)] == [
        "spec.permissions.rules[1]"
    ]


def test_rightsize_drops_the_unused_rule_and_narrows_to_what_was_used() -> None:
    used = entries(
        access(), access("update", "web", "deployments", subresource="scale", api_group="apps")
    )
    rules, cluster = policy.rightsize([CM_READ, SECRET_READ, DEPLOY], [], "team", used)
    assert cluster == []
    assert rules == [
        PolicyRule(("",), ("configmaps",), ("get",), ("settings",)),
        PolicyRule(("apps",), ("deployments/scale",), ("update",), ("web",)),
    ]


def test_rightsize_keeps_no_names_for_list_and_declared_names_stay_declared() -> None:
    named = PolicyRule(("",), ("configmaps",), ("get",), ("a", "b"))
    rules, _ = policy.rightsize(
        [named, CM_READ], [], "team", entries(access(name="a"), access("list", ""))
    )
    assert rules == [
        PolicyRule(("",), ("configmaps",), ("get",), ("a",)),
        PolicyRule(("",), ("configmaps",), ("list",)),
    ]


ACCESSES = st.builds(
    Access,
    api_group=st.sampled_from(["", "apps"]),
    resource=st.sampled_from(["configmaps", "secrets", "deployments"]),
    subresource=st.sampled_from(["", "", "scale"]),
    namespace=st.sampled_from(["team", "other", ""]),
    name=st.sampled_from(["", "a", "b", ANY_NAME]),
    verb=st.sampled_from(["get", "list", "update", "delete", "watch"]),
)
RULES = st.builds(
    PolicyRule,
    api_groups=st.lists(st.sampled_from(["", "apps", "*"]), min_size=1, max_size=2).map(tuple),
    resources=st.lists(
        st.sampled_from(["configmaps", "secrets", "deployments", "deployments/scale", "*"]),
        min_size=1, max_size=3,
    ).map(tuple),
    verbs=st.lists(st.sampled_from(["get", "list", "update", "delete", "*"]), min_size=1,
                   max_size=3).map(tuple),
    resource_names=st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(RULES, max_size=4), st.lists(RULES, max_size=2), st.lists(ACCESSES, max_size=12))
def test_rightsize_never_widens_and_covers_every_use_the_spec_allowed(
    rules: list[PolicyRule], cluster: list[PolicyRule], accesses: list[Access]
) -> None:
    used = entries(*accesses)
    new_rules, new_cluster = policy.rightsize(rules, cluster, "team", used)
    probes = {*accesses, *(Access(a.api_group, a.resource, a.subresource, a.namespace, n, a.verb)
                           for a in accesses for n in ("", "a", "b", "c", ANY_NAME))}  # fmt: skip
    for field, old, new in (("rules", rules, new_rules), ("clusterRules", cluster, new_cluster)):
        for probe in probes:
            if not policy.in_scope(field, "team", probe):
                continue
            if any(policy.rule_allows(r, probe) for r in new) and probe.name != ANY_NAME:
                assert any(policy.rule_allows(r, probe) for r in old), (field, probe)
        for a in accesses:
            if policy.in_scope(field, "team", a) and any(policy.rule_allows(r, a) for r in old):
                assert any(policy.rule_allows(r, a) for r in new), (field, a)


def test_the_shortest_unused_after_of_the_selecting_policies_applies() -> None:
    from tests.unit.factories import make_policy

    week = make_policy("week", unusedAfter="168h", namespaceSelector={"matchLabels": {"t": "a"}})
    day = make_policy("day", unusedAfter="24h", namespaceSelector={"matchLabels": {"t": "b"}})
    silent = make_policy("silent")
    default = dt.timedelta(days=30)
    assert policy.unused_window([week, day, silent], {"t": "a"}, default) == dt.timedelta(days=7)
    assert policy.unused_window([week, day], {"t": "c"}, default) == default
    assert week.unused_after == dt.timedelta(days=7) and silent.unused_after is None


def test_request_and_response_bodies_are_never_kept_whatever_level_arrives() -> None:
    secret = "c3VwZXItc2VjcmV0LXZhbHVl"
    full = event(
        level="RequestResponse",
        requestObject={"kind": "Secret", "data": {"password": secret}},
        responseObject={"kind": "Secret", "data": {"password": secret}},
    )
    book = UsageBook("team", "billing")
    for obs in parse_event_list(batch(full)):
        book.record(obs)
        assert secret not in repr(obs)
    assert book.entries and secret not in json.dumps(book_to_json(book))
