"""``nhi report --output html``: one self-contained page for an auditor.

No script, no stylesheet or font from elsewhere: the charts are inline SVG bars, so the page
renders the same offline and in a mail attachment. Every value from the cluster is escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape

from nhi.cli.timings import Timing
from nhi.models.duration import rfc3339
from nhi.models.inventory import RISKS, SEVERITIES, Finding
from nhi.policies.kpis import Kpis

COLORS = {"critical": "#8b0000", "high": "#d9534f", "medium": "#f0ad4e", "low": "#5bc0de"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
.tiles{display:flex;gap:1em;flex-wrap:wrap}
.tile{border:1px solid #ccc;border-radius:6px;padding:1em;min-width:10em}
.tile b{display:block;font-size:1.8em}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
.sev{color:#fff;border-radius:3px;padding:0 .4em}
.charts{display:flex;gap:2em;flex-wrap:wrap}
"""


#: How the report names the timings read from Prometheus (nhi.cli.timings).
TIMING_LABELS = {"timeToRotate": "Time to rotate", "timeToRevoke": "Time to revoke"}


def used_text(k: Kpis) -> str:
    """The share of declared permissions used, for people."""
    if k.permissions_used is None:
        return "no usage data"
    return f"{k.permissions_used:.0%} ({k.rules_used}/{k.rules_weighed} declared rules)"


def bar_chart(title: str, data: Mapping[str, int], colors: Mapping[str, str] | None = None) -> str:
    """Horizontal bars, one per key, in an inline SVG."""
    width, row = 360, 24
    top = max(data.values(), default=0) or 1
    bars = []
    for i, (label, value) in enumerate(data.items()):
        w = round(200 * value / top)
        color = (colors or {}).get(label, "#337ab7")
        y = i * row
        bars.append(
            f'<text x="0" y="{y + 16}">{escape(label)}</text>'
            f'<rect x="110" y="{y + 4}" width="{w}" height="16" fill="{color}"></rect>'
            f'<text x="{115 + w}" y="{y + 16}">{value}</text>'
        )
    height = max(row * len(data), row)
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height}" font-size="12">{"".join(bars)}</svg></figure>'
    )


def _tile(label: str, value: str) -> str:
    return f'<div class="tile"><b>{escape(value)}</b>{escape(label)}</div>'


def render_html(
    kpis: Kpis,
    findings: Sequence[Finding],
    now: dt.datetime,
    timings: Mapping[str, Timing] | None = None,
) -> str:
    by_risk = {f"{r} {RISKS[r]}": kpis.findings_by_risk.get(r, 0) for r in RISKS}
    by_sev = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES if s != "info"}
    ages = dict(kpis.credential_ages)
    rows = "".join(
        "<tr>"
        f'<td><span class="sev" style="background:{COLORS.get(f.severity, "#777")}">'
        f"{escape(f.severity)}</span></td>"
        f"<td>{escape(f.risk)}</td><td>{escape(f.rule)}</td>"
        f"<td>{escape(f.namespace or '(cluster)')}</td>"
        f"<td>{'<br>'.join(escape(str(o)) for o in f.objects)}</td>"
        f"<td>{escape(f.message)}</td><td>{escape(f.fix)}</td>"
        "</tr>"
        for f in sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f))
    )
    tiles = "".join(
        (
            _tile("identities", str(kpis.identities)),
            _tile("coverage (used ServiceAccounts managed)", f"{kpis.coverage:.0%}"),
            _tile("owner coverage", f"{kpis.owner_coverage:.0%}"),
            _tile("declared permissions used", used_text(kpis)),
            _tile("open findings", str(len(findings))),
            *(
                _tile(TIMING_LABELS[name].lower(), timing.text())
                for name, timing in (timings or {}).items()
            ),
        )
    )
    charts = "".join(
        (
            bar_chart("Open findings by OWASP NHI risk", by_risk),
            bar_chart("Open findings by severity", by_sev, COLORS),
            bar_chart("Credentials by age", ages),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        "<title>Non-human identities: governance report</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>Non-human identities: governance report</h1>"
        f"<p>Generated {escape(rfc3339(now))} by nhi report.</p>"
        f'<section class="tiles" id="kpis">{tiles}</section>'
        f'<h2>Charts</h2><section class="charts" id="charts">{charts}</section>'
        f'<h2>Findings</h2><table id="findings"><thead><tr><th>Severity</th><th>Risk</th>'
        "<th>Rule</th><th>Namespace</th><th>Objects</th><th>Message</th><th>Fix</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>\n"
    )
