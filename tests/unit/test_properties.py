"""Properties over every input, not examples: what a hostile tenant writes cannot crash the
models, and no spec makes the pure rotation policy issue faster than its minimum interval.

Each spec is drawn from a mix of values that fit the schema and values that do not (any JSON:
huge numbers, ``99999999999999h``, fractions next to 0 and 1, emoji, long strings, wrong
types at every level). The run is derandomized and keeps no example database, so CI sees
the same examples every time; it takes a few seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhi.crypto.certs import _validate_dns_names
from nhi.k8s.client import encode_body
from nhi.models.duration import MAX_DURATION, parse_duration
from nhi.models.identity import Credential, MachineIdentity, Spec, SpecError
from nhi.models.issued import Issued
from nhi.models.issuer import Issuer
from nhi.models.policy import IdentityPolicy
from nhi.policies import identity_policy as ip
from nhi.policies import rotation as rot

pytestmark = pytest.mark.unit

FAST = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)

# ------------------------------------------------------------------------------ values

#: Text as a tenant may write it: any Unicode (surrogates too, which JSON can carry as
#: escapes), emoji, long runs.
texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    st.text(alphabet="😀🚀é中\u2028\x85\x7f\x00 ", min_size=1, max_size=70),
    st.just("x" * 5000),
)
huge_ints = st.one_of(st.integers(), st.integers(min_value=2**63), st.just(10**400))
numbers = st.one_of(
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e-300),
    st.floats(min_value=0.99, max_value=1.0),
)
anything = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)

UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")
durations = st.one_of(
    st.sampled_from(["99999999999999h", "87600h", "87600h1ns", "0s", "1h30m", "10m", "2m"]),
    st.from_regex(r"\A([0-9]{1,25}(\.[0-9]{1,25})?(ns|us|µs|ms|s|m|h)){1,4}\Z"),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(UNITS)),
    texts,
)
dns_like = st.one_of(
    st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,70}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z"), texts
)
label_keys = st.one_of(st.from_regex(r"\A([a-z0-9.]{1,20}/)?[A-Za-z0-9._-]{1,70}\Z"), texts)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value that fits the field (mostly), or anything at all."""
    return st.one_of(strategy, strategy, strategy, strategy, anything)


def record(required: dict[str, Any] | None = None, **optional: Any) -> st.SearchStrategy[Any]:
    """An object with these fields (the optional ones present or not)."""
    return st.fixed_dictionaries(required or {}, optional=optional)


def obj(required: dict[str, Any] | None = None, **optional: Any) -> st.SearchStrategy[Any]:
    """Such an object, mostly, or anything at all."""
    return maybe(record(required, **optional))


credentials = obj(
    {
        "name": maybe(st.from_regex(r"\A[a-z0-9]{1,8}\Z")),
        "type": maybe(st.sampled_from(["ServiceAccountToken", "X509", "StaticSecret"])),
    },
    ttl=maybe(durations),
    secretName=maybe(dns_like),
    audiences=maybe(st.lists(texts, max_size=3)),
    issuerRef=obj(
        {"name": maybe(dns_like)},
        kind=maybe(st.sampled_from(["ClusterIdentityIssuer", "IdentityIssuer"])),
    ),
    keyAlgorithm=maybe(st.sampled_from(["ECDSA-P256", "Ed25519", "RSA-2048"])),
    dnsNames=maybe(st.lists(dns_like, max_size=3)),
    generator=obj(length=maybe(huge_ints), charset=maybe(st.sampled_from(["hex", "base64url"]))),
)
rules = obj(
    {"verbs": maybe(st.lists(texts, max_size=3))},
    apiGroups=maybe(st.lists(texts, max_size=2)),
    resources=maybe(st.lists(texts, max_size=2)),
    resourceNames=maybe(st.lists(texts, max_size=2)),
    nonResourceURLs=maybe(st.lists(texts, max_size=2)),
)
owners = st.one_of(st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z"), texts.filter(str.strip))
#: Always an object: the fields are where the trouble is.
specs = record(
    {"owner": st.one_of(owners, owners, owners, anything)},
    purpose=maybe(texts),
    serviceAccount=obj(name=maybe(dns_like), automountToken=anything),
    workloads=obj(
        selector=obj(
            matchLabels=maybe(st.dictionaries(label_keys, maybe(texts), max_size=3)),
            matchExpressions=maybe(
                st.lists(
                    obj(
                        {"key": maybe(label_keys), "operator": maybe(st.sampled_from(
                            ["In", "NotIn", "Exists", "DoesNotExist"]))},
                        values=maybe(st.lists(texts, max_size=2)),
                    ),
                    max_size=2,
                )
            ),
        ),
        rolloutOnRotation=anything,
    ),
    permissions=obj(
        rules=maybe(st.lists(rules, max_size=2)),
        clusterRules=maybe(st.lists(rules, max_size=2)),
        roleRefs=maybe(st.lists(obj(kind=maybe(st.sampled_from(["Role", "ClusterRole"])),
                                    name=maybe(texts)), max_size=2)),
    ),
    credentials=maybe(st.lists(credentials, max_size=3)),
    rotation=obj(renewBeforeFraction=numbers, renewBefore=maybe(durations)),
    lifetime=obj(validFor=maybe(durations)),
    revocation=obj(
        onWorkloadDeletion=maybe(st.sampled_from(["Revoke", "Retain"])),
        gracePeriod=maybe(durations),
    ),
)  # fmt: skip
issuer_specs = record(
    {"trustDomain": maybe(st.from_regex(r"\A[a-z0-9._-]{1,30}\Z"))},
    selfSigned=obj(
        keyAlgorithm=maybe(st.sampled_from(["ECDSA-P256", "Ed25519"])),
        ttl=maybe(durations),
        commonName=maybe(texts),
    ),
    ca=obj({"secretName": maybe(dns_like)}, secretNamespace=maybe(dns_like)),
    vault=obj(
        address=maybe(st.one_of(texts, st.just("https://vault.example.org:8200"))),
        caBundle=maybe(texts),
        pki=obj(mount=maybe(texts), role=maybe(texts)),
        auth=obj(
            kubernetes=obj(role=maybe(texts), serviceAccountName=maybe(dns_like)),
            appRole=obj(roleId=maybe(texts), secretIdSecretRef=obj(name=maybe(dns_like))),
            tokenSecretRef=obj(name=maybe(dns_like), key=maybe(texts), namespace=maybe(dns_like)),
        ),
    ),
    trustBundle=obj(configMapName=maybe(dns_like)),
    crl=obj(configMapName=maybe(dns_like), validity=maybe(durations)),
)
policy_specs = record(
    enforcement=maybe(st.sampled_from(["Deny", "Warn"])),
    requireOwner=anything,
    maxTTL=obj(
        ServiceAccountToken=maybe(durations),
        X509=maybe(durations),
        StaticSecret=maybe(durations),
    ),
    maxValidFor=maybe(durations),
    forbidWildcards=anything,
    allowedClusterRoles=maybe(st.lists(texts, max_size=2)),
    forbiddenRules=maybe(st.lists(rules, max_size=2)),
)


def identity_body(spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": spec,
    }


def assert_names_a_spec_field(err: SpecError) -> None:
    assert err.path == "spec" or err.path.startswith("spec."), err.path
    assert err.rule


# ------------------------------------------------------------------------------ durations


@FAST
@given(st.one_of(durations, anything))
def test_parse_duration_returns_a_bounded_delta_or_raises_value_error(text: Any) -> None:
    try:
        delta = parse_duration(text)
    except ValueError:
        return
    assert dt.timedelta(0) <= delta <= MAX_DURATION


@FAST
@given(st.lists(st.tuples(st.integers(0, 10**12), st.sampled_from(UNITS)), min_size=1, max_size=4))
def test_parse_duration_is_exact(parts: list[tuple[int, str]]) -> None:
    ns = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 6 * 10**10}
    ns["h"] = 60 * ns["m"]
    total = sum(n * ns[u] for n, u in parts)
    text = "".join(f"{n}{u}" for n, u in parts)
    if total > MAX_DURATION // dt.timedelta(microseconds=1) * 1000:
        with pytest.raises(ValueError, match="at most 87600h"):
            parse_duration(text)
    else:
        assert parse_duration(text) == dt.timedelta(microseconds=total // 1000)


# ------------------------------------------------------------------------------ models


@FAST
@given(specs)
def test_any_spec_parses_or_names_the_field(spec: Any) -> None:
    try:
        identity = MachineIdentity.from_body(identity_body(spec))
    except SpecError as err:
        assert_names_a_spec_field(err)
        return
    parsed = identity.spec
    # What the model accepts, the layers below accept too.
    for cred in parsed.credentials:
        assert dt.timedelta(minutes=10) <= cred.ttl <= dt.timedelta(hours=8760)
        _validate_dns_names(cred.dns_names)
    for delta in (parsed.grace_period, parsed.valid_for, parsed.renew_before):
        assert delta is None or dt.timedelta(0) <= delta <= MAX_DURATION
    if parsed.renew_before_fraction is not None:
        assert 0 < parsed.renew_before_fraction < 1
    # Policy checks over it never fail either.
    ip.summary(ip.evaluate(identity, [IdentityPolicy.from_body({"spec": {}})], {}))


@FAST
@given(issuer_specs, st.sampled_from(["ClusterIdentityIssuer", "IdentityIssuer"]))
def test_any_issuer_spec_parses_or_names_the_field(spec: Any, kind: str) -> None:
    body = {"kind": kind, "metadata": {"name": "ca", "namespace": "team-a"}, "spec": spec}
    try:
        issuer = Issuer.from_body(body)
    except SpecError as err:
        assert_names_a_spec_field(err)
        return
    common_name = getattr(issuer.source, "common_name", None)
    if common_name is not None:
        # X.509's own length rule (cryptography counts UTF-8 bytes) agrees with the model.
        x509.NameAttribute(NameOID.COMMON_NAME, common_name)


@FAST
@given(texts)
def test_a_common_name_the_model_accepts_is_one_x509_accepts(common_name: str) -> None:
    """Length is counted the way X.509 counts it (UTF-8 bytes), not in characters."""
    body = {
        "kind": "ClusterIdentityIssuer",
        "metadata": {"name": "ca"},
        "spec": {"trustDomain": "example.org", "selfSigned": {"commonName": common_name}},
    }
    try:
        Issuer.from_body(body)
    except SpecError as err:
        assert err.path == "spec.selfSigned.commonName"
        return
    x509.NameAttribute(NameOID.COMMON_NAME, common_name)


@FAST
@given(policy_specs)
def test_any_policy_spec_parses_or_names_the_field(spec: Any) -> None:
    try:
        IdentityPolicy.from_body({"metadata": {"name": "p"}, "spec": spec})
    except SpecError as err:
        assert_names_a_spec_field(err)


# ------------------------------------------------------------------------------ rotation

fractions = st.one_of(
    st.floats(min_value=1e-300, max_value=1e-6),
    st.floats(min_value=1e-6, max_value=1 - 1e-6),
    st.floats(min_value=1 - 1e-6, max_value=1.0, exclude_max=True),
)
rotation_specs = st.one_of(
    st.builds(lambda f: Spec(owner="o", service_account="sa", renew_before_fraction=f), fractions),
    st.builds(
        lambda s: Spec(
            owner="o",
            service_account="sa",
            renew_before_fraction=None,
            renew_before=dt.timedelta(seconds=s),
        ),
        st.integers(60, 87600 * 3600),
    ),
)
lifetimes = st.integers(1, 87600 * 3600).map(lambda s: dt.timedelta(seconds=s))
backdates = st.integers(0, 120).map(lambda s: dt.timedelta(seconds=s))


@FAST
@given(rotation_specs, lifetimes, backdates, st.text(max_size=20))
def test_renewal_is_after_the_minimum_interval_and_before_not_after(
    spec: Spec, lifetime: dt.timedelta, backdate: dt.timedelta, seed: str
) -> None:
    issued_at, not_after = T0, T0 + lifetime
    when = rot.renewal_time(spec, T0 - backdate, not_after, seed, issued_at=issued_at)
    assert when >= issued_at + rot.min_reissue_interval(issued_at, not_after)
    assert when < not_after
    if lifetime >= 2 * rot.MIN_REISSUE_INTERVAL:
        assert when >= issued_at + rot.MIN_REISSUE_INTERVAL


@FAST
@given(rotation_specs, st.integers(600, 48 * 3600), backdates, st.integers(1, 400))
def test_no_spec_issues_faster_than_the_minimum_interval(
    spec: Spec, ttl_seconds: int, backdate: dt.timedelta, reconciles: int
) -> None:
    """Walk the clock from one planned look to the next, as the operator does, issuing when
    the policy says so: issuances are at least the minimum interval apart."""
    ttl = dt.timedelta(seconds=ttl_seconds)
    cred = Credential(name="mtls", type="X509", secret_name="app-mtls", ttl=ttl)

    def issue(now: dt.datetime, count: int) -> Issued:
        renewal = rot.renewal_time(spec, now - backdate, now + ttl, f"s/{count}", issued_at=now)
        return Issued(now - backdate, now + ttl, renewal, now, count, "h")

    now = T0
    issued = issue(now, 0)
    times = [now]
    for _ in range(reconciles):
        now = max(now, rot.next_due(issued, now))  # the next planned look
        reason = rot.reason_to_issue(cred, issued, current_spec_hash="h", now=now)
        if reason is not None and rot.held_until(issued, reason, now) is None:
            issued = issue(now, issued.rotation_count + 1)
            times.append(now)
        else:
            now += dt.timedelta(seconds=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= rot.MIN_REISSUE_INTERVAL for gap in gaps), min(gaps)


# ------------------------------------------------------------------------------ Unicode


#: Keys of the maps the operator writes (annotations, labels, Secret data): short ASCII names.
#: (YAML reads no implicit key longer than 1024 characters; Kubernetes keys never are.)
keys = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=253)


@FAST
@given(st.dictionaries(keys, texts, max_size=4))
def test_any_text_survives_an_apply_patch(annotations: dict[str, str]) -> None:
    body = {"metadata": {"annotations": annotations}}
    encoded = encode_body(body, "application/apply-patch+yaml")
    assert encoded.isascii()
    if not any(0xD800 <= ord(c) <= 0xDFFF for text in annotations.values() for c in text):
        # (A lone surrogate is not Unicode text: the API server never sends one.)
        assert yaml.safe_load(encoded) == body
