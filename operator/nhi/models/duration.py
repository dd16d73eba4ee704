"""Go-style durations (``90s``, ``15m``, ``24h``, ``1h30m``) as used by the API.

Every duration of the API is at most :data:`MAX_DURATION` (87600h, ten years): the CRDs
refuse longer ones at admission, and :func:`parse_duration` refuses them again, so a value
written before a rule existed can never overflow a ``datetime`` (year 9999) or Go's
``time.Duration`` (about 292 years). Arithmetic is exact (integers, not floats): ``1.1h`` is
3960 s, not 3960.0000000000005 s.
"""

from __future__ import annotations

import datetime as dt
import re
from fractions import Fraction

#: The longest duration any field of the API accepts: 87600h, ten years.
MAX_DURATION = dt.timedelta(hours=87600)
MAX_DURATION_TEXT = "87600h (10 years)"

_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ns|us|µs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+")
#: More significant digits than this are more than ten years in any unit (87600h is
#: 315360000000000000 ns, 18 digits); fraction digits past it change less than a nanosecond.
_DIGITS = 20
_SYNTAX = "must be a duration such as 90s, 15m, 24h or 1h30m"


def parse_duration(text: object, maximum: dt.timedelta = MAX_DURATION) -> dt.timedelta:
    """Parse a Go duration string, at most ``maximum`` long, to the microsecond (truncated).

    Raises ValueError naming the rule on any bad input, and only ValueError: not a string, not
    the syntax, or longer than ``maximum``.
    """
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(_SYNTAX)
    limit = (maximum // dt.timedelta(microseconds=1)) * 1000
    too_long = f"must be at most {_describe(maximum)}"
    total = Fraction(0)
    for whole, frac, unit in _PART.findall(text):
        digits = whole.lstrip("0")
        if len(digits) > _DIGITS:
            raise ValueError(too_long)
        value = Fraction(int(digits or "0"))
        if frac:
            frac = frac[:_DIGITS]
            value += Fraction(int(frac), 10 ** len(frac))
        total += value * _NS[unit]
        if total > limit:
            raise ValueError(too_long)
    return dt.timedelta(microseconds=int(total / 1000))


def _describe(maximum: dt.timedelta) -> str:
    if maximum == MAX_DURATION:
        return MAX_DURATION_TEXT
    return format_duration(maximum)


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


def utcnow() -> dt.datetime:
    """The operator's clock: aware UTC. Injected wherever a decision depends on it."""
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """UTC RFC 3339 with a ``Z`` and whole seconds, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 time as Kubernetes writes it; ValueError on anything else.

    (A time such as ``0001-01-01T00:00:00+01:00`` is before year 1 in UTC: ValueError too,
    not the OverflowError of ``datetime``.)
    """
    if not isinstance(text, str):
        raise ValueError("must be an RFC 3339 time")
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("must be an RFC 3339 time between years 1 and 9999 in UTC") from None


def parse_time_or_none(value: object) -> dt.datetime | None:
    """:func:`parse_time` of a status field that may be absent or unreadable: None then."""
    if not value:
        return None
    try:
        return parse_time(str(value))
    except ValueError:
        return None
