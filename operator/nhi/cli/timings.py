"""The KPIs the operator measures as it works, read back from Prometheus for `nhi report
--prometheus URL`: time-to-rotate (a due renewal to its rotation) and time-to-revoke (the last
workload gone to the identity revoked), as quantiles over a window. The inventory's own KPIs
are computed from a listing; these two are only in the operator's histograms.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from nhi.cli.errors import CliError

#: The histograms (docs/observability.md) and the names the report gives them.
HISTOGRAMS = {
    "timeToRotate": "nhi_credential_time_to_rotate_seconds",
    "timeToRevoke": "nhi_identity_time_to_revoke_seconds",
}
QUANTILES = (0.5, 0.95)
TIMEOUT = 10.0


@dataclass(frozen=True)
class Timing:
    """How many were observed in the window, and the quantiles (None without any)."""

    count: int
    p50: float | None
    p95: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "p50Seconds": self.p50, "p95Seconds": self.p95}

    def text(self) -> str:
        if not self.count or self.p50 is None or self.p95 is None:
            return "none observed"
        return f"p50 {_span(self.p50)}, p95 {_span(self.p95)} ({self.count} observed)"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


def queries(metric: str, window: str) -> dict[str, str]:
    """The PromQL of one histogram's count and quantiles over ``window``."""
    rate = f"sum by (le) (rate({metric}_bucket[{window}]))"
    out = {"count": f"sum(increase({metric}_count[{window}]))"}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = f"histogram_quantile({q}, {rate})"
    return out


def scalar(body: Any) -> float | None:
    """The one value of an instant query's answer; None when empty or not a number (a
    quantile of no observation is NaN)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise CliError(f"Prometheus answered {str(body)[:200]}")
    result = (body.get("data") or {}).get("result") or []
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise CliError(f"Prometheus answered an unexpected result: {str(result)[:200]}") from None
    return value if math.isfinite(value) else None


def _get(url: str, expr: str) -> Any:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=TIMEOUT) as resp:
            return json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise CliError(f"could not query Prometheus at {url}: {err}") from None


async def read(url: str, window: str) -> dict[str, Timing]:
    """Each histogram's timing over ``window`` (a PromQL duration such as 7d)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--prometheus: {url!r} is not an http(s) URL")
    out = {}
    for name, metric in HISTOGRAMS.items():
        values = {
            key: scalar(await asyncio.to_thread(_get, url, expr))
            for key, expr in queries(metric, window).items()
        }
        count = values["count"]
        out[name] = Timing(
            count=round(count) if count is not None else 0,
            p50=values["p50"],
            p95=values["p95"],
        )
    return out
