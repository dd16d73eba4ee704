"""Go-style durations (``90s``, ``15m``, ``24h``, ``1h30m``) as used by the API."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+$")


def parse_duration(text: str) -> dt.timedelta:
    """Parse a Go duration string; raise ValueError naming the rule on bad input."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError("must be a duration such as 90s, 15m, 24h or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    """Render a timedelta the way Go prints durations (``1h30m0s``), whole seconds."""
    total = int(delta.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{sign}{h}h{m}m{s}s"
    if m:
        return f"{sign}{m}m{s}s"
    return f"{sign}{s}s"


def rfc3339(moment: dt.datetime) -> str:
    """UTC RFC 3339 with a ``Z`` and whole seconds, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 time as Kubernetes writes it."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)
