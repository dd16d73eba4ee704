"""Structured logs: JSON by default, readable text for a terminal, secrets redacted.

Everything goes through the standard library's logging (kopf's own loggers included) and is
rendered by structlog, so every line has the same shape. A redaction step runs last before
rendering: it drops values of fields whose names say they hold a secret, and scrubs anything
that looks like a token, a private key or a PEM block from every string.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"

SECRET_FIELDS = frozenset(
    {
        "token",
        "tokens",
        "key",
        "private_key",
        "privatekey",
        "tls.key",
        "secret",
        "password",
        "value",
        "current",
        "previous",
        "data",
        "stringdata",
        "client_key",
        "authorization",
    }
)

# A field whose last word says it holds a secret: api_key, ca.key, access-token, client_secret,
# db_password... but not secret_name, key_algorithm or metadata (the last word decides).
_SECRET_FIELD = re.compile(
    r"(?:^|[._-])(?:token|tokens|key|keys|secret|secrets|password|passwd|passphrase|pwd"
    r"|privatekey|authorization|cookie|value|current|previous|data|stringdata)$",
    re.I,
)

# Field names whose value is a secret when they appear quoted inside free text (a dict's repr,
# a JSON document in an error message).
_QUOTED_NAMES = (
    r"token|password|passwd|secret|client[_-]?secret|api[_-]?key|private[_-]?key|"
    r"tls\.key|ca\.key|key|current|previous|authorization"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # PEM blocks of any kind (keys, certificates, CSRs): certificates are not secret, but a
    # PEM in a log line is never useful and a key must never slip through. A block cut short
    # (no END line) is redacted to the end of the text.
    (re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.S), REDACTED),
    # The same, base64-encoded (a Secret's `data`): base64("-----BEGIN ") = "LS0tLS1CRUdJTi".
    (re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]*"), REDACTED),
    # JSON Web Tokens (service-account tokens): three base64url segments starting with eyJ.
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # The same, base64-encoded: base64('{"') = "eyJ", base64("eyJ") = "ZXlK".
    (re.compile(r"ZXlK[A-Za-z0-9+/]{16,}={0,2}"), REDACTED),
    # Credentials in HTTP headers: "Authorization: Basic ...", "Bearer ...".
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[A-Za-z]+\s+[^\s\"',}]+"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}"), REDACTED),
    # A secret-named key with a quoted value inside text: {'token': 'abc'}, "password": "x",
    # {'current': b'...'}.
    (
        re.compile(r"(?i)([\"'](?:" + _QUOTED_NAMES + r")[\"']\s*:\s*b?)([\"'])(?:\\.|(?!\2).)*\2"),
        r"\1" + "'" + REDACTED + "'",
    ),
    # Query-string or command-line style: token=..., password=..., client_secret=...
    (
        re.compile(
            r"(?i)\b((?:access[_-]?)?token|password|passwd|client[_-]?secret|api[_-]?key)=[^&\s\"',]+"
        ),
        r"\1=" + REDACTED,
    ),
]


def scrub(text: str) -> str:
    """``text`` with every PEM block, token and credential-looking value replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_secret_field(name: str) -> bool:
    """True when a field named ``name`` holds a secret value (its value is never logged)."""
    lowered = name.lower()
    return lowered in SECRET_FIELDS or bool(_SECRET_FIELD.search(lowered))


def _redact_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if is_secret_field(key) and value not in ("", [], {}):
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Raw bytes in a log field are a value, never a name: say how many, not what.
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value("", v) for v in value]
    # Anything else (an exception, a kopf Body, a custom object) is rendered as text here,
    # so that the renderer's repr() fallback cannot print what the scrubbing did not see.
    return scrub(str(value))


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret value survives into a rendered line."""
    for k in list(event_dict):
        if k == "event":
            event_dict[k] = scrub(str(event_dict[k]))
        else:
            event_dict[k] = _redact_value(k, event_dict[k])
    return event_dict


_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def _extra_from_record(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Lift ``extra={...}`` fields and kopf's object context into the event."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is None:
        return event_dict
    for k, v in vars(record).items():
        if k not in _STD_ATTRS and not k.startswith("_") and k not in event_dict:
            event_dict[k] = v
    # kopf attaches the object it is logging about as `k8s_ref`.
    ref = event_dict.pop("k8s_ref", None)
    if isinstance(ref, Mapping):
        for field in ("namespace", "kind", "name"):
            if ref.get(field):  # a cluster-scoped object has no namespace
                event_dict.setdefault(field, ref[field])
    event_dict.pop("k8s_skip", None)
    event_dict.pop("settings", None)
    return event_dict


def setup(fmt: str = "json", level: str = "INFO") -> None:
    """Configure logging for the whole process (operator, kopf, libraries)."""
    renderer: Any
    if fmt == "text":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _extra_from_record],
        processors=[
            _extra_from_record,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if root.level > logging.DEBUG:
        # kopf logs every successful handler call at INFO; the operator logs what it did.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
