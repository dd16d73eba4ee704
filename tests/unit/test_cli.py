"""The ``nhi`` CLI's pure parts: tables, durations, JWT and certificate decoding, status,
history, argument checks, and the promise that ``inspect`` never prints a secret value."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from nhi import crypto
from nhi.cli import history, inspection, status
from nhi.cli.commands import renew_value
from nhi.cli.context import context_namespace
from nhi.cli.main import main
from nhi.cli.render import (
    due_in,
    dump,
    expires_in,
    human_duration,
    render_kv,
    render_table,
    short_id,
)
from nhi.models.duration import parse_time

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


# ---------------------------------------------------------------------------- rendering


def test_table_aligns_columns_upper_cases_headers_and_fills_empty_cells() -> None:
    out = render_table(("Name", "Phase", "Ready"), [["a", "Active", "True"], ["longer", "", "X"]])
    lines = out.splitlines()
    assert lines == [
        "NAME    PHASE   READY",
        "a       Active  True",
        "longer  -       X",
    ]
    assert all(line == line.rstrip() for line in lines)


def test_table_with_only_headers() -> None:
    assert render_table(("A", "Bb"), []) == "A  BB"


def test_key_value_block_aligns_values_and_spreads_lists() -> None:
    out = render_kv([("Subject", "CN=x"), ("SANs", ["URI:a", "DNS:b"]), ("Empty", None)])
    assert out.splitlines() == [
        "Subject:  CN=x",
        "SANs:     URI:a",
        "          DNS:b",
        "Empty:    -",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (200, "3m20s"),
        (300, "5m"),
        (42 * 60 + 10, "42m"),
        (5 * 3600 + 10 * 60, "5h10m"),
        (6 * 3600, "6h"),
        (30 * 3600 + 59, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (3 * 86400, "3d"),
        (45 * 86400, "45d"),
        (800 * 86400, "2y70d"),
        (10 * 365 * 86400, "10y"),
        (-90, "90s"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(dt.timedelta(seconds=seconds)) == text


def test_expiry_and_renewal_are_relative_to_now() -> None:
    assert expires_in(NOW + dt.timedelta(hours=23, minutes=59), NOW) == "23h"
    assert expires_in(NOW - dt.timedelta(minutes=5), NOW) == "expired 5m ago"
    assert expires_in(None, NOW) == "-"
    assert due_in(NOW + dt.timedelta(hours=16), NOW) == "in 16h"
    assert due_in(NOW - dt.timedelta(seconds=30), NOW) == "overdue 30s"


def test_short_id_keeps_static_fingerprints_whole_and_cuts_certificate_ones() -> None:
    assert short_id("sha256:0123456789abcdef") == "sha256:0123456789abcdef"
    long = "sha256:" + "a" * 64
    assert short_id(long) == "sha256:" + "a" * 15 + "…"
    assert len(short_id(long)) == 23


def test_dump_json_and_yaml_keep_key_order() -> None:
    data = {"b": 1, "a": [1, 2]}
    assert json.loads(dump(data, "json")) == data
    assert dump(data, "yaml").splitlines()[0] == "b: 1"


def test_renew_values_are_rfc3339_and_distinct() -> None:
    a = renew_value(NOW)
    b = renew_value(NOW + dt.timedelta(microseconds=1))
    assert a == "2030-01-02T03:04:05.000000Z"
    assert a != b
    assert parse_time(b) == NOW + dt.timedelta(microseconds=1)


def test_context_namespace() -> None:
    contexts = [
        {"name": "a", "context": {"cluster": "c", "namespace": "shop"}},
        {"name": "b", "context": {"cluster": "c"}},
    ]
    assert context_namespace(contexts, "a") == "shop"
    assert context_namespace(contexts, "b") == "default"
    assert context_namespace(contexts, "z") is None


# ---------------------------------------------------------------------------------- JWT

SECRET_UID = "0d0b7d4e-1111-2222-3333-444455556666"


def made_up_jwt(signature: str = "c2lnbmF0dXJlLW5vdC1yZWFs") -> str:
    header = {"alg": "RS256", "kid": "key-1"}
    payload = {
        "aud": ["payments.example.com"],
        "exp": int((NOW + dt.timedelta(minutes=50)).timestamp()),
        "iat": int((NOW - dt.timedelta(minutes=10)).timestamp()),
        "nbf": int((NOW - dt.timedelta(minutes=10)).timestamp()),
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:shop:payments-api",
        "kubernetes.io": {
            "namespace": "shop",
            "secret": {"name": "payments-api-token", "uid": SECRET_UID},
            "serviceaccount": {"name": "payments-api", "uid": "sa-uid"},
        },
    }
    return f"{b64url(header)}.{b64url(payload)}.{signature}"


def test_jwt_payload_is_decoded_without_verification() -> None:
    claims = inspection.decode_jwt_payload(made_up_jwt())
    assert claims["sub"] == "system:serviceaccount:shop:payments-api"
    assert claims["aud"] == ["payments.example.com"]


def test_token_summary_names_audiences_subject_times_and_bound_object() -> None:
    token = made_up_jwt()
    s = inspection.token_summary(token, NOW)
    assert s["audiences"] == ["payments.example.com"]
    assert s["subject"] == "system:serviceaccount:shop:payments-api"
    assert s["issuedAt"] == "2030-01-02T02:54:05Z"
    assert s["expiresAt"] == "2030-01-02T03:54:05Z"
    assert s["expiresIn"] == "50m"
    assert s["boundObject"] == {"kind": "Secret", "name": "payments-api-token", "uid": SECRET_UID}
    assert s["serviceAccount"] == {"name": "payments-api", "uid": "sa-uid"}
    assert s["fingerprint"] == crypto.secret_fingerprint(token)


def test_a_single_string_audience_is_a_list_of_one() -> None:
    payload = {"aud": "one", "sub": "x"}
    token = f"{b64url({'alg': 'none'})}.{b64url(payload)}.sig"
    assert inspection.token_summary(token, NOW)["audiences"] == ["one"]


@pytest.mark.parametrize(
    "bad", ["not-a-jwt-secretvalue", "a.b", "secretvalue.secretvalue.secretvalue", "!!.??.x"]
)
def test_not_a_jwt_is_refused_without_echoing_the_token(bad: str) -> None:
    with pytest.raises(inspection.InspectError) as err:
        inspection.decode_jwt(bad)
    assert "secretvalue" not in str(err.value)
    assert bad not in str(err.value)


# ---------------------------------------------------------------------------------- X509


def make_tls(spiffe: str = "spiffe://example.org/ns/shop/sa/payments-api") -> dict[str, bytes]:
    real_now = dt.datetime.now(dt.UTC)
    ca_key = crypto.generate_key("ECDSA-P256")
    ca = crypto.build_self_signed_ca("Mesh Root", ca_key, real_now, dt.timedelta(days=10))
    key = crypto.generate_key("ECDSA-P384")
    leaf = crypto.issue_leaf(
        ca_cert=ca,
        ca_key=ca_key,
        public_key=key.public_key(),
        spiffe_id=spiffe,
        dns_names=["payments-api.shop.svc"],
        now=real_now,
        ttl=dt.timedelta(hours=24),
    )
    return {
        "tls.crt": crypto.chain_pem([leaf]),
        "tls.key": crypto.private_key_pem(key),
        "ca.crt": crypto.cert_pem(ca),
    }


def test_x509_summary_of_a_leaf_built_with_nhi_crypto() -> None:
    tls = make_tls()
    leaf = crypto.load_cert_chain(tls["tls.crt"])[0]
    s = inspection.x509_summary(tls["tls.crt"], tls["tls.key"], tls["ca.crt"], NOW)
    assert s["spiffeId"] == "spiffe://example.org/ns/shop/sa/payments-api"
    assert s["sans"] == [
        "URI:spiffe://example.org/ns/shop/sa/payments-api",
        "DNS:payments-api.shop.svc",
    ]
    assert s["subject"] == ""
    assert s["issuer"] == "CN=Mesh Root"
    assert s["serial"] == crypto.serial_hex(leaf)
    assert s["fingerprint"] == crypto.fingerprint_sha256(leaf)
    assert s["keyAlgorithm"] == "ECDSA-P384"
    assert s["notAfter"] == crypto.rfc3339(leaf.not_valid_after_utc)
    assert s["chainLength"] == 1
    assert s["caBundle"] == ["CN=Mesh Root"]
    assert s["privateKey"] == {
        "present": True,
        "algorithm": "ECDSA-P384",
        "matchesCertificate": True,
    }


def test_x509_summary_says_when_the_key_does_not_match() -> None:
    tls, other = make_tls(), make_tls()
    s = inspection.x509_summary(tls["tls.crt"], other["tls.key"], None, NOW)
    assert s["privateKey"]["matchesCertificate"] is False
    assert s["caBundle"] == []


def test_unparseable_certificate_is_refused_without_echoing_it() -> None:
    with pytest.raises(inspection.InspectError) as err:
        inspection.x509_summary(b"-----BEGIN CERTIFICATE-----\nsecretvalue\n", None, None, NOW)
    assert "secretvalue" not in str(err.value)


# ------------------------------------------------------------------ inspect: no values out


def secret_obj(kind: str, data: dict[str, bytes], **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls" if kind == "X509" else "Opaque",
        "metadata": {
            "name": "app-cred",
            "namespace": "shop",
            "labels": {"nhi.dev/identity": "app", "nhi.dev/credential": "cred"},
            "annotations": {
                "nhi.dev/credential-type": kind,
                "nhi.dev/not-after": "2030-01-03T00:00:00Z",
                # Not an nhi.dev annotation: must not be shown (kubectl may copy data here).
                "kubectl.kubernetes.io/last-applied-configuration": "LEAKED-LAST-APPLIED",
                **annotations,
            },
        },
        "data": {k: b64(v) for k, v in data.items()},
    }


def all_outputs(obj: dict[str, Any]) -> str:
    result = inspection.inspect_secret(obj, NOW)
    return "\n".join(
        [inspection.render_inspect(result), dump(result, "json"), dump(result, "yaml")]
    )


def assert_absent(out: str, value: str) -> None:
    assert value not in out
    assert b64(value) not in out
    assert base64.urlsafe_b64encode(value.encode()).decode().rstrip("=") not in out


def test_inspect_token_never_shows_the_token_or_its_signature() -> None:
    signature = "U0lHTkFUVVJFLXNob3VsZC1uZXZlci1iZS1wcmludGVk"
    token = made_up_jwt(signature)
    out = all_outputs(secret_obj("ServiceAccountToken", {"token": token.encode()}))
    assert_absent(out, token)
    assert signature not in out
    # Nor the encoded header.payload part that precedes the signature.
    assert token.rsplit(".", 1)[0] not in out
    assert "payments.example.com" in out
    assert f"Secret/payments-api-token (uid {SECRET_UID})" in out
    assert "LEAKED-LAST-APPLIED" not in out
    assert "nhi.dev/not-after=2030-01-03T00:00:00Z" in out


def test_inspect_x509_never_shows_the_private_key() -> None:
    tls = make_tls()
    out = all_outputs(secret_obj("X509", tls))
    key_pem = tls["tls.key"].decode()
    assert_absent(out, key_pem)
    body = [line for line in key_pem.splitlines() if "-----" not in line]
    assert body and all(line not in out for line in body)
    assert "PRIVATE KEY" not in out
    assert "spiffe://example.org/ns/shop/sa/payments-api" in out
    assert "ECDSA-P384, matches the certificate" in out
    assert "LEAKED-LAST-APPLIED" not in out


def test_inspect_static_secret_shows_fingerprints_never_values() -> None:
    current, previous = "Cur1234567890abcdefghijklmnopqrstuv", "Prev0987654321zyxwvutsrqponmlkji"
    obj = secret_obj(
        "StaticSecret",
        {"current": current.encode(), "previous": previous.encode()},
        **{"nhi.dev/previous-not-after": "2030-01-02T05:00:00Z"},
    )
    out = all_outputs(obj)
    assert_absent(out, current)
    assert_absent(out, previous)
    result = inspection.inspect_secret(obj, NOW)["details"]
    assert result["current"] == {
        "fingerprint": crypto.secret_fingerprint(current),
        "notAfter": "2030-01-03T00:00:00Z",
    }
    assert result["previous"] == {
        "fingerprint": crypto.secret_fingerprint(previous),
        "notAfter": "2030-01-02T05:00:00Z",
    }
    assert crypto.secret_fingerprint(previous) in out


def test_inspect_detects_the_type_from_the_keys_without_the_annotation() -> None:
    obj = secret_obj("StaticSecret", {"current": b"x" * 20})
    del obj["metadata"]["annotations"]["nhi.dev/credential-type"]
    assert inspection.inspect_secret(obj, NOW)["credentialType"] == "StaticSecret"


def test_inspect_refuses_a_secret_that_holds_no_credential() -> None:
    obj = {"metadata": {"name": "other"}, "data": {"password": b64("hunter2-secretvalue")}}
    with pytest.raises(inspection.InspectError) as err:
        inspection.inspect_secret(obj, NOW)
    assert "secretvalue" not in str(err.value)
    assert "hunter2" not in str(err.value)


def test_inspect_of_a_token_secret_not_issued_yet() -> None:
    obj = secret_obj("ServiceAccountToken", {})
    with pytest.raises(inspection.InspectError, match="not issued"):
        inspection.inspect_secret(obj, NOW)


# -------------------------------------------------------------------------------- status


def identity(**status_: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "app", "namespace": "shop", "generation": 2},
        "spec": {
            "owner": "team-a",
            "credentials": [
                {"name": "api", "type": "ServiceAccountToken"},
                {"name": "key", "type": "StaticSecret", "secretName": "custom"},
            ],
        },
        "status": status_,
    }


def test_status_summary_merges_spec_and_status() -> None:
    obj = identity(
        observedGeneration=2,
        phase="Active",
        conditions=[{"type": "Ready", "status": "True", "reason": "CredentialsIssued"}],
        credentials=[
            {
                "name": "api",
                "type": "ServiceAccountToken",
                "secretName": "app-api",
                "fingerprint": "sha256:0123456789abcdef",
                "notAfter": "2030-01-02T04:04:05Z",
                "renewalTime": "2030-01-02T03:44:05Z",
                "rotationCount": 3,
            }
        ],
    )
    s = status.summarize(obj, NOW)
    assert (s["phase"], s["ready"], s["owner"], s["upToDate"]) == ("Active", "True", "team-a", True)
    api, key = s["credentials"]
    assert api["expiresIn"] == "60m"
    assert api["renewsIn"] == "in 40m"
    assert api["rotationCount"] == 3
    assert key == {
        "name": "key",
        "type": "StaticSecret",
        "secretName": "custom",
        "issued": False,
        "expiresIn": "-",
        "renewsIn": "-",
    }
    table = status.status_table([s]).splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "READY",
        "OWNER",
        "CREDENTIAL",
        "TYPE",
        "SECRET",
        "SERIAL/FINGERPRINT",
        "NOT",
        "AFTER",
        "EXPIRES",
        "IN",
        "NEXT",
        "RENEWAL",
    ]
    assert table[1].split() == [
        "app",
        "Active",
        "True",
        "team-a",
        "api",
        "ServiceAccountToken",
        "app-api",
        "sha256:0123456789abcdef",
        "2030-01-02T04:04:05Z",
        "60m",
        "in",
        "40m",
    ]
    assert table[2].split()[4:] == ["key", "StaticSecret", "custom", "-", "-", "-", "not", "issued"]


def test_status_of_a_new_identity_and_the_all_namespaces_column() -> None:
    obj = {"metadata": {"name": "bare", "namespace": "ns1"}, "spec": {"owner": "o"}}
    s = status.summarize(obj, NOW)
    assert (s["phase"], s["ready"], s["credentials"]) == ("Pending", "Unknown", [])
    lines = status.status_table([s], all_namespaces=True).splitlines()
    assert lines[0].startswith("NAMESPACE  NAME")
    assert lines[1].split()[:5] == ["ns1", "bare", "Pending", "Unknown", "o"]


def test_not_ready_identities_get_a_note_with_the_reason() -> None:
    obj = identity(
        conditions=[
            {"type": "Ready", "status": "False", "reason": "IssuerNotReady", "message": "m"}
        ]
    )
    assert status.not_ready_notes([status.summarize(obj, NOW)]) == ["shop/app: IssuerNotReady: m"]


# ------------------------------------------------------------------------------- history


def event(name: str, reason: str, when: str, rv: str, uid: str = "u1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv},
        "involvedObject": {"kind": "MachineIdentity", "name": "app", "uid": uid},
        "type": "Normal",
        "reason": reason,
        "message": f"{reason.lower()} credential",
        "lastTimestamp": when,
        "count": 1,
    }


def test_history_sorts_events_by_time_then_write_order_and_drops_a_namesakes() -> None:
    events = [
        event("c", "Rotated", "2030-01-02T03:00:00Z", "30"),
        event("b", "Issued", "2030-01-02T02:00:00Z", "21"),
        event("a", "Created", "2030-01-02T02:00:00Z", "20"),
        event("old", "Issued", "2029-01-01T00:00:00Z", "5", uid="u0"),
    ]
    ident = identity(
        phase="Active",
        credentials=[{"name": "api", "type": "ServiceAccountToken", "rotationCount": 1}],
        revokedAt="2030-01-02T03:30:00Z",
        revocationReason="Manual",
    )
    ident["metadata"]["uid"] = "u1"
    ident["metadata"]["creationTimestamp"] = "2030-01-02T01:59:00Z"
    h = history.summarize("shop", "app", ident, events)
    assert [e["reason"] for e in h["events"]] == ["Created", "Issued", "Rotated"]
    assert h["credentials"][0]["rotationCount"] == 1
    out = history.render_history(h, NOW)
    assert "Revocation Reason:  Manual" in out
    lines = out.splitlines()
    assert lines.index(next(x for x in lines if "Issued" in x)) < lines.index(
        next(x for x in lines if "Rotated" in x)
    )


def test_history_of_a_deleted_identity_keeps_every_event() -> None:
    h = history.summarize("shop", "app", None, [event("b", "Deleted", "2030-01-02T02:00:00Z", "3")])
    assert h["exists"] is False
    assert "not found" in history.render_history(h, NOW)
    assert [e["reason"] for e in h["events"]] == ["Deleted"]


# ---------------------------------------------------------------------- arguments, errors


def test_renew_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["renew"]) == 1
    assert main(["renew", "app", "--all"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: renew needs exactly one of NAME, --all or -l SELECTOR"] * 2


def test_a_missing_kubeconfig_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    assert main(["--kubeconfig", str(missing), "status"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"error: kubeconfig {missing} not found\n"


def test_connection_options_are_accepted_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["history", "app", "--kubeconfig", str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err


def test_an_unreachable_api_server_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert main(["--kubeconfig", str(kubeconfig), "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: cannot reach the API server at http://127.0.0.1:9")
    assert main(["--kubeconfig", str(kubeconfig), "--context", "zz", "status"]) == 1
    assert capsys.readouterr().err == "error: context zz not found in the kubeconfig\n"


def test_a_revoked_identity_renews_nothing() -> None:
    obj = identity(phase="Revoked", revokedAt="2030-01-02T03:00:00Z", revocationReason="Manual")
    s = status.summarize(obj, NOW)
    assert (s["revokedAt"], s["revocationReason"]) == ("2030-01-02T03:00:00Z", "Manual")
    rows = status.status_table([s]).splitlines()[1:]
    assert [r.split()[-1] for r in rows] == ["revoked", "revoked"]


def test_history_lists_the_identitys_access_grants() -> None:
    grant = {
        "metadata": {"name": "pvc-cleanup"},
        "spec": {"identityRef": {"name": "app"}, "requester": "alice", "reason": "OPS-42"},
        "status": {"phase": "Expired", "approvedBy": "bob", "activatedAt": "2030-01-01T00:00:00Z"},
    }
    other = {"metadata": {"name": "x"}, "spec": {"identityRef": {"name": "other"}}}
    h = history.summarize("shop", "app", None, [], [grant, other])
    assert [g["name"] for g in h["grants"]] == ["pvc-cleanup"]
    text = history.render_history(h, dt.datetime(2030, 1, 2, tzinfo=dt.UTC))
    assert "pvc-cleanup" in text and "Expired" in text and "bob" in text
