"""nhi.logging: one JSON shape for every logger (kopf's included), and no secret in any line.

Each test configures logging the way the operator does (``nhi.logging.setup``), points the one
handler at a buffer, logs through the standard library, structlog and kopf's object loggers,
and parses what was written. tests/e2e/test_no_secret_leaks.py checks a real operator's output.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
import structlog

from nhi import logging as nhi_logging
from nhi.crypto import generate_key, private_key_pem
from nhi.logging import REDACTED, scrub

pytestmark = pytest.mark.unit

# A service-account-token-shaped JWT: header {"alg":"RS256","kid":"k"}, a payload, a signature.
JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ"
    ".eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bnM6YXBwIn0"
    ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbi10aGF0LW11c3Qtbm90LWxlYWs"
)
KEY_PEM = private_key_pem(generate_key("ECDSA-P256")).decode()
KEY_BODY = [line for line in KEY_PEM.splitlines() if line and not line.startswith("-----")]
STATIC = "7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e2b4d6f8a"  # a generated StaticSecret value


Capture = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {n: logging.getLogger(n).level for n in ("kopf.objects", "asyncio", "urllib3")}
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


def setup(fmt: str = "json", level: str = "INFO") -> io.StringIO:
    nhi_logging.setup(fmt, level)
    (handler,) = logging.getLogger().handlers
    buf = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    return buf


@pytest.fixture
def json_logs(restore_logging: None) -> Iterator[Capture]:
    buf = setup("json", "DEBUG")

    def lines() -> list[dict[str, Any]]:
        out = []
        for line in buf.getvalue().splitlines():
            out.append(json.loads(line))  # every line is one JSON object
        return out

    yield lines


def one(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(lines) == 1, lines
    return lines[0]


def assert_clean(text: str) -> None:
    for needle in (JWT, JWT.split(".")[2], STATIC, *KEY_BODY, "PRIVATE KEY"):
        assert needle not in text, f"{needle[:20]}... leaked into {text[:300]!r}"


# ---------------------------------------------------------------------------- shape


def test_stdlib_log_is_one_json_object_with_the_common_fields(json_logs: Capture) -> None:
    logging.getLogger("nhi.test").info(
        "issued %s credential", "X509", extra={"namespace": "ns", "identity": "app"}
    )
    line = one(json_logs())
    assert line["event"] == "issued X509 credential"
    assert line["level"] == "info"
    assert line["logger"] == "nhi.test"
    assert line["namespace"] == "ns" and line["identity"] == "app"
    stamp = dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
    assert not any(k.startswith("_") for k in line), line


def test_structlog_logger_has_the_same_shape(json_logs: Capture) -> None:
    nhi_logging.get_logger("nhi.other").warning(
        "issuer not ready", issuer="ClusterIdentityIssuer/x"
    )
    line = one(json_logs())
    assert {"timestamp", "level", "logger", "event"} <= set(line)
    assert line["level"] == "warning" and line["logger"] == "nhi.other"
    assert line["issuer"] == "ClusterIdentityIssuer/x"


def body(namespace: str | None = "team-a") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "app", "uid": "u-1"}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "nhi.dev/v1alpha1", "kind": "MachineIdentity", "metadata": meta}


def test_kopf_object_logs_carry_namespace_kind_and_name(json_logs: Capture) -> None:
    logger = kopf.ObjectLogger(body=kopf.Body(body()), settings=kopf.OperatorSettings())
    logger.warning("Handler 'nhi_identity_cleanup' failed temporarily: boom")
    line = one(json_logs())
    assert line["logger"] == "kopf.objects"
    assert line["namespace"] == "team-a"
    assert line["kind"] == "MachineIdentity"
    assert line["name"] == "app"
    assert line["event"] == "Handler 'nhi_identity_cleanup' failed temporarily: boom"
    # kopf's internals (its settings object, the posting flag, the raw ref) are not logged.
    assert not {"k8s_ref", "k8s_skip", "settings"} & set(line)


def test_kopf_object_logs_keep_their_extra_fields(json_logs: Capture) -> None:
    logger = kopf.LocalObjectLogger(body=kopf.Body(body()), settings=kopf.OperatorSettings())
    logger.info("removed the identity's objects", extra={"removed": ["ServiceAccount/team-a/app"]})
    line = one(json_logs())
    assert line["name"] == "app" and line["removed"] == ["ServiceAccount/team-a/app"]


def test_kopf_logs_about_a_cluster_scoped_object_have_no_namespace(json_logs: Capture) -> None:
    b = body(None)
    b["kind"] = "ClusterIdentityIssuer"
    kopf.ObjectLogger(body=kopf.Body(b), settings=kopf.OperatorSettings()).error("failed")
    line = one(json_logs())
    assert line["kind"] == "ClusterIdentityIssuer" and line["name"] == "app"
    assert "namespace" not in line


def test_fields_the_operator_sets_win_over_kopfs_object(json_logs: Capture) -> None:
    logger = kopf.ObjectLogger(body=kopf.Body(body()), settings=kopf.OperatorSettings())
    logger.warning("child in another namespace", extra={"namespace": "team-b"})
    line = one(json_logs())
    assert line["namespace"] == "team-b" and line["name"] == "app"


def test_info_level_hides_debug_and_kopfs_per_handler_chatter(restore_logging: None) -> None:
    buf = setup("json", "INFO")
    logging.getLogger("nhi.test").debug("debug detail")
    kopf.ObjectLogger(body=kopf.Body(body()), settings=kopf.OperatorSettings()).info(
        "Handler 'x' succeeded."
    )
    logging.getLogger("nhi.test").info("kept")
    assert [json.loads(x)["event"] for x in buf.getvalue().splitlines()] == ["kept"]


# ---------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    "field",
    [
        "token",
        "key",
        "secret",
        "password",
        "value",
        "current",
        "previous",
        "data",
        "stringData",
        "tls.key",
        "ca.key",
        "private_key",
        "api_key",
        "access-token",
        "client_secret",
        "db_password",
        "Authorization",
    ],
)
def test_secret_named_fields_are_redacted(json_logs: Capture, field: str) -> None:
    logging.getLogger("nhi.test").info("x", extra={field: STATIC})
    line = one(json_logs())
    assert line[field] == REDACTED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("secret_name", "team-a/app-api"),
        ("key_algorithm", "ECDSA-P256"),
        ("fingerprint", "sha256:" + "ab" * 32),
        ("serial", "4f2a9c"),
        ("credential", "api"),
        ("metadata", {"name": "app"}),
        ("error", "403 Forbidden Secret/app-api: secrets is forbidden"),
    ],
)
def test_names_fingerprints_and_errors_are_kept(json_logs: Capture, field: str, value: Any) -> None:
    logging.getLogger("nhi.test").info("x", extra={field: value})
    assert one(json_logs())[field] == value


def test_nested_secret_fields_are_redacted_and_the_rest_kept(json_logs: Capture) -> None:
    secret_body = {
        "metadata": {"name": "app-api", "namespace": "ns"},
        "data": {"token": base64.b64encode(JWT.encode()).decode()},
        "items": [{"password": "hunter2hunter2", "user": "svc"}],
    }
    logging.getLogger("nhi.test").info("applied", extra={"object": secret_body})
    line = one(json_logs())
    assert line["object"]["metadata"] == {"name": "app-api", "namespace": "ns"}
    assert line["object"]["data"] == REDACTED
    assert line["object"]["items"] == [{"password": REDACTED, "user": "svc"}]


def test_bytes_and_unknown_objects_are_never_printed_raw(json_logs: Capture) -> None:
    class Holder:
        def __repr__(self) -> str:
            return f"Holder(token={JWT!r})"

        __str__ = __repr__

    logging.getLogger("nhi.test").info(
        "x", extra={"blob": STATIC.encode(), "thing": Holder(), "mapping": kopf.Body(body())}
    )
    line = one(json_logs())
    assert line["blob"] == f"<{len(STATIC)} bytes>"
    assert JWT not in line["thing"] and REDACTED in line["thing"]
    assert line["mapping"]["metadata"]["name"] == "app"
    assert_clean(json.dumps(line))


@pytest.mark.parametrize(
    "text",
    [
        f"token is {JWT} here",
        f"Authorization: Bearer {JWT}",
        f"headers={{'Authorization': 'Bearer {STATIC}'}}",
        f"authorization: Basic {base64.b64encode(b'user:' + STATIC.encode()).decode()}",
        f"got key\n{KEY_PEM}\nend",
        f"truncated {KEY_PEM[:120]}",
        f"data: {base64.b64encode(KEY_PEM.encode()).decode()}",
        f"data: {base64.b64encode(JWT.encode()).decode()}",
        f"{{'current': b'{STATIC}', 'previous': '{STATIC}'}}",
        f'{{"data": {{"password": "{STATIC}"}}}}',
        f"https://vault/v1/auth?token={STATIC}&x=1",
        f"client_secret={STATIC} and api_key={STATIC}",
    ],
)
def test_secrets_inside_text_are_scrubbed(json_logs: Capture, text: str) -> None:
    logging.getLogger("nhi.test").warning(text, extra={"detail": text})
    line = one(json_logs())
    assert REDACTED in line["event"] and REDACTED in line["detail"]
    assert_clean(json.dumps(line))


@pytest.mark.parametrize(
    "text",
    [
        "Secret ns/ca: the certificate lacks basicConstraints CA:TRUE",
        "Secret ns/ca: tls.key missing or empty; a CA Secret needs the CA certificate",
        "issued credential api (ServiceAccountToken, fingerprint sha256:ab12, reason Created)",
        "basic constraints are required",
        "the token credential api is Ready",
        "spec.credentials[0].ttl: must be at least 10m",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_exception_text_and_traceback_are_scrubbed(json_logs: Capture) -> None:
    log = logging.getLogger("nhi.test")
    try:
        raise ValueError(f"apply failed for {{'token': '{STATIC}'}} with {JWT} and {KEY_PEM}")
    except ValueError:
        log.exception("reconcile failed")
    line = one(json_logs())
    assert line["level"] == "error"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "ValueError: apply failed" in line["exception"]
    assert line["exception"].count(REDACTED) >= 3
    assert_clean(json.dumps(line))


def test_structlog_exc_info_is_scrubbed(json_logs: Capture) -> None:
    try:
        raise RuntimeError(f"Bearer {STATIC}")
    except RuntimeError:
        nhi_logging.get_logger("nhi.s").error("failed", exc_info=True)
    line = one(json_logs())
    assert "RuntimeError" in line["exception"]
    assert_clean(json.dumps(line))


# ---------------------------------------------------------------------------- text format


def test_text_format_is_readable_and_redacted(restore_logging: None) -> None:
    buf = setup("text", "INFO")
    log = logging.getLogger("nhi.test")
    log.info("issued credential", extra={"credential": "api", "token": JWT})
    try:
        raise ValueError(f"bad key {KEY_PEM}")
    except ValueError:
        log.exception("reconcile failed")
    kopf.ObjectLogger(body=kopf.Body(body()), settings=kopf.OperatorSettings()).warning("slow")
    out = buf.getvalue()
    assert not out.lstrip().startswith("{")
    first = out.splitlines()[0]
    assert "issued credential" in first and "credential=api" in first
    assert f"token={REDACTED}" in first or f"token='{REDACTED}'" in first
    assert "Traceback" in out and "ValueError: bad key" in out
    assert "namespace=team-a" in out and "name=app" in out and "kind=MachineIdentity" in out
    assert "\x1b[" not in out  # no colours when not writing to a terminal
    assert_clean(out)


def test_setup_replaces_handlers_instead_of_adding(restore_logging: None) -> None:
    nhi_logging.setup("json", "INFO")
    nhi_logging.setup("text", "WARNING")
    assert len(logging.getLogger().handlers) == 1
    assert logging.getLogger().level == logging.WARNING
