"""What a scenario hands back: checks (value vs floor vs target), details and notes."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


def stats(values: list[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "median": round(statistics.median(vals), 4),
        "min": round(min(vals), 4),
        "max": round(max(vals), 4),
    }


def percentile(values: list[float], p: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


@dataclass
class Check:
    """One measured quantity: its runs, the floor's runs (if any), the ratio and the target."""

    name: str
    unit: str
    values: list[float]
    target: str
    ok: bool | None = None
    floor_values: list[float] | None = None
    ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update({f"{k}": v for k, v in stats(self.values).items()})
        if self.floor_values:
            out["floor"] = stats(self.floor_values)
        return out


@dataclass
class Result:
    id: str
    title: str
    status: str = "info"  # pass | miss | skipped | info | error
    checks: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def settle(self) -> None:
        """pass when every check with a target passed, miss when one missed."""
        if self.status in ("skipped", "error"):
            return
        verdicts = [c.ok for c in self.checks if c.ok is not None]
        if verdicts:
            self.status = "pass" if all(verdicts) else "miss"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "checks": [c.to_dict() for c in self.checks],
            "details": self.details,
            "notes": self.notes,
        }


def ratio_check(
    name: str,
    unit: str,
    values: list[float],
    floor_values: list[float],
    limit: float,
    target_note: str = "",
) -> Check:
    med = stats(values)["median"]
    fmed = stats(floor_values)["median"]
    ratio = round(med / fmed, 3) if fmed and fmed > 0 else None
    return Check(
        name=name,
        unit=unit,
        values=values,
        floor_values=floor_values,
        ratio=ratio,
        target=f"<= {limit}x floor{target_note}",
        ok=None if ratio is None else ratio <= limit,
    )
