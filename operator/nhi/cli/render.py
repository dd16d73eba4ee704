"""Pure output helpers for the ``nhi`` CLI: aligned tables, key/value blocks, durations, dumps.

Nothing here talks to the API server; every function that depends on the clock takes ``now``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from nhi.models.duration import parse_time

#: What a table cell shows when there is nothing to show.
NONE = "-"
#: Longest identifier (serial, fingerprint) shown whole in a table; longer ones are shortened.
MAX_ID_WIDTH = 23

OUTPUT_FORMATS = ("table", "json", "yaml")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces, headers in upper case, as ``kubectl get`` prints them.

    The last column is not padded, so lines carry no trailing spaces. Empty cells show ``-``.
    """
    cells = [[h.upper() for h in headers]] + [
        [str(c) if str(c) != "" else NONE for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def render_kv(pairs: Sequence[tuple[str, Any]], indent: int = 0) -> str:
    """``Key:  value`` lines with the values aligned; lists print one item per line.

    A value that is a list of strings continues on the following lines, indented under the
    value column; an empty value prints ``-``.
    """
    if not pairs:
        return ""
    width = max(len(k) for k, _ in pairs) + 1
    pad = " " * indent
    lines: list[str] = []
    for key, value in pairs:
        label = f"{pad}{key + ':':<{width}}  "
        if isinstance(value, list | tuple):
            items = [str(v) for v in value] or [NONE]
            lines.append(label + items[0])
            lines.extend(" " * len(label) + item for item in items[1:])
        else:
            text = NONE if value is None or value == "" else str(value)
            lines.append(label + text)
    return "\n".join(line.rstrip() for line in lines)


def dump(data: Any, fmt: str) -> str:
    """Structured output: ``json`` (indented) or ``yaml`` (block style, keys in given order)."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r}")


def human_duration(delta: dt.timedelta) -> str:
    """A short, rounded duration as ``kubectl`` prints ages.

    For example 45s, 3m20s, 42m, 5h10m, 30h, 3d4h, 45d, 2y30d: precision drops as the
    duration grows. The sign is ignored (see :func:`expires_in`).
    """
    seconds = int(abs(delta.total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m{s}s" if s else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        m = minutes % 60
        return f"{hours}h{m}m" if m else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        h = hours % 24
        return f"{days}d{h}h" if h else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest = divmod(days, 365)
    if years < 8:
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def parse_moment(value: Any) -> dt.datetime | None:
    """An RFC 3339 time from the API, or None when it is missing or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def expires_in(not_after: dt.datetime | None, now: dt.datetime) -> str:
    """``23h`` while valid, ``expired 5m ago`` after, ``-`` when unknown."""
    if not_after is None:
        return NONE
    if not_after > now:
        return human_duration(not_after - now)
    return f"expired {human_duration(now - not_after)} ago"


def due_in(when: dt.datetime | None, now: dt.datetime) -> str:
    """``in 16h`` for a future moment, ``overdue 2m`` for a past one, ``-`` when unknown."""
    if when is None:
        return NONE
    if when > now:
        return f"in {human_duration(when - now)}"
    return f"overdue {human_duration(now - when)}"


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """``5m ago`` (or ``in 5m`` for a future moment), ``-`` when unknown."""
    if when is None:
        return NONE
    if when > now:
        return f"in {human_duration(when - now)}"
    return f"{human_duration(now - when)} ago"


def short_id(value: str, width: int = MAX_ID_WIDTH) -> str:
    """A serial or fingerprint cut to ``width`` characters (with ``…``) for a table cell."""
    if len(value) <= width:
        return value
    return value[: width - 1] + "…"


def pick(mapping: Mapping[str, Any] | None, *path: str) -> Any:
    """``mapping[path[0]][path[1]]...`` or None when any step is missing."""
    value: Any = mapping
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
