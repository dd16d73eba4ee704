"""Label selectors: the typed value, its query string, matching, and parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.fields import SpecError, as_list, as_object, as_strings, label_key, label_value


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_query(self) -> str:
        """The selector as a ``labelSelector`` query string."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for key, op, values in self.match_expressions:
            if op == "In":
                parts.append(f"{key} in ({','.join(values)})")
            elif op == "NotIn":
                parts.append(f"{key} notin ({','.join(values)})")
            elif op == "Exists":
                parts.append(key)
            else:
                parts.append(f"!{key}")
        return ",".join(parts)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes label-selector semantics; an empty selector matches nothing here."""
        if self.empty:
            return False
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and (not present or labels[key] not in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


def parse_selector(raw: Any, path: str, strict: bool = False) -> LabelSelector:
    """A label selector. ``strict``: its keys and values are checked as Kubernetes checks
    them, for a selector that is sent to the API server (an IdentityPolicy's namespace
    selector is only matched here, and a policy is never ignored for a key it cannot match).
    """
    s = as_object(raw, path)
    labels = as_object(s.get("matchLabels"), f"{path}.matchLabels")
    if strict:
        for k, v in labels.items():
            label_key(k, f"{path}.matchLabels")
            label_value(v, f"{path}.matchLabels[{k!r}]")
    exprs = []
    for i, e in enumerate(as_list(s.get("matchExpressions"), f"{path}.matchExpressions")):
        ep = f"{path}.matchExpressions[{i}]"
        e = as_object(e, ep)
        op = e.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SpecError(f"{ep}.operator", "must be one of In, NotIn, Exists, DoesNotExist")
        values = as_strings(e.get("values"), f"{ep}.values")
        if strict:
            label_key(e.get("key"), f"{ep}.key")
            for j, v in enumerate(values):
                label_value(v, f"{ep}.values[{j}]")
        exprs.append((str(e.get("key", "")), str(op), values))
    return LabelSelector(
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        match_expressions=tuple(exprs),
    )
