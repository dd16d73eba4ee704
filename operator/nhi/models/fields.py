"""Checks shared by the models' parsers: each returns the typed value or raises
:class:`SpecError` naming the field and the rule it breaks."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.models.duration import parse_duration

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: A label key's name part and a label value (the prefix of a key is a DNS subdomain).
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class SpecError(ValueError):
    """A spec field breaks a rule. ``path`` is the field, e.g. ``spec.credentials[1].ttl``."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}")
        self.path = path
        self.rule = rule


def as_object(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def as_list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(path, "must be a list")
    return value


def as_strings(value: Any, path: str) -> tuple[str, ...]:
    items = as_list(value, path)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise SpecError(f"{path}[{i}]", "must be a non-empty string")
    return tuple(items)


def as_duration(value: Any, path: str) -> dt.timedelta:
    try:
        return parse_duration(value)
    except ValueError as err:
        raise SpecError(path, str(err)) from None


def hours(delta: dt.timedelta) -> str:
    """``10m``, ``1h``, ``8760h``: a bound the way the CRD's messages write it."""
    minutes = int(delta.total_seconds()) // 60
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def dns_subdomain(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise SpecError(
            path,
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )
    return value


def label_key(key: Any, path: str) -> str:
    """A label key as Kubernetes checks it: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
    if (
        not isinstance(key, str)
        or len(name) > 63
        or not _LABEL_NAME.fullmatch(name)
        or (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)))
    ):
        raise SpecError(
            path,
            "must be a label key: an optional DNS subdomain prefix and '/', then at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return key


def label_value(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_NAME.fullmatch(value or "a"):
        raise SpecError(
            path,
            "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit",
        )
    return value
