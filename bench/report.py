"""bench/RESULTS.md and bench/results.json from the scenarios' results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.env import LONG_RUNNING_VERBS as LONG_RUNNING
from bench.result import Result

TITLES = {
    "1": "Scenario 1: provision N identities at once",
    "2": "Scenario 2: restart with M Ready identities",
    "3": "Scenario 3: N certificates due at once",
    "4": "Scenario 4: revocation latency",
    "5": "Scenario 5: idle cost",
    "6": "Scenario 6: cryptography per issuance",
    "7": "Scenario 7: cert-manager peer",
    "8": "Scenario 8: Vault-signed certificates kept in KV",
    "9": "Scenario 9: discovery and inventory",
    "10": "Scenario 10: AccessGrants expiring in the same second",
    "11": "Scenario 11: audit event batches ingested (usage)",
}


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _measured(c: dict[str, Any]) -> str:
    unit = f" {c['unit']}" if c.get("unit") else ""
    if len(c["values"]) == 1:
        return f"{_num(c['median'])}{unit}"
    return f"{_num(c['median'])}{unit} ({_num(c['min'])}-{_num(c['max'])})"


def _floor(c: dict[str, Any]) -> str:
    f = c.get("floor")
    if not f:
        return "—"
    unit = f" {c['unit']}" if c.get("unit") else ""
    return f"{_num(f['median'])}{unit} ({_num(f['min'])}-{_num(f['max'])})"


def _verdict(ok: bool | None) -> str:
    return {True: "pass", False: "**miss**", None: "—"}[ok]


def _table(details: dict[str, Any], key: str, limit: int = 14) -> list[str]:
    rows = details.get(key) or {}
    if not rows:
        return []
    out = ["| verb resource | count |", "|---|---:|"]
    for i, (k, v) in enumerate(rows.items()):
        if i >= limit:
            out.append(f"| … {len(rows) - limit} more | |")
            break
        out.append(f"| {k} | {_num(v)} |")
    return out


def _section(r: dict[str, Any]) -> list[str]:
    out = [f"## {TITLES.get(r['id'], r['title'])}", ""]
    out.append(f"{r['title']}. Result: **{r['status']}** ({r['seconds']:.0f} s of bench time).")
    out.append("")
    if r["checks"]:
        out += [
            "| measure | median (min-max) | floor | ratio | target | result |",
            "|---|---|---|---|---|---|",
        ]
        for c in r["checks"]:
            ratio = f"{c['ratio']:.2f}x" if c.get("ratio") is not None else "—"
            out.append(
                f"| {c['name']} | {_measured(c)} | {_floor(c)} | {ratio} | {c['target']} "
                f"| {_verdict(c['ok'])} |"
            )
        out.append("")
    for note in r["notes"]:
        out.append(f"- {note}")
    if r["notes"]:
        out.append("")
    d = r["details"]
    if r["id"] in ("1", "3"):
        for side in ("operator_runs", "floor_runs"):
            runs = d.get(side) or []
            if not runs:
                continue
            key = next((k for k in runs[0] if k.startswith("requests_by_verb_resource")), "")
            out.append(f"**{side.replace('_', ' ')}** (requests per identity, first run):")
            out.append("")
            out += _table(runs[0], key)
            out.append("")
        simple = {k: v for k, v in d.items() if not isinstance(v, list | dict)}
        if simple:
            out.append("Parameters: " + ", ".join(f"{k}={v}" for k, v in simple.items()))
            out.append("")
        for side in ("operator_runs", "floor_runs"):
            for i, run in enumerate(d.get(side) or []):
                flat = {k: v for k, v in run.items() if not isinstance(v, dict)}
                out.append(f"- {side} #{i + 1}: " + ", ".join(f"{k}={v}" for k, v in flat.items()))
        out.append("")
    elif r["id"] == "2":
        setup = d.get("setup") or {}
        out.append("Setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
        out.append("")
        for i, run in enumerate(d.get("restarts") or []):
            flat = {k: v for k, v in run.items() if not isinstance(v, dict)}
            if not run.get("steady_reached", True):
                flat["steady_seconds"] = f"not reached within {run.get('cap_seconds')} s"
            out.append(f"- restart #{i + 1}: " + ", ".join(f"{k}={v}" for k, v in flat.items()))
        out.append("")
        restarts = d.get("restarts") or []
        if restarts:
            out.append("Requests during the first restart window (apiserver metrics):")
            out.append("")
            out += _table(restarts[0], "requests_by_verb_resource")
            out.append("")
    elif r["id"] == "5":
        out.append(
            f"Identities: {d.get('identities_ready')} Ready of {d.get('identities_total')}; "
            f"lease heartbeats (excluded): {d.get('lease_heartbeats_per_minute')}/min; "
            f"operator RSS: {d.get('operator_rss_mb')} MB."
        )
        out.append("")
        per_min = d.get("requests_per_minute_by_verb_resource") or {}
        counted = {k: v for k, v in per_min.items() if k.split()[0] not in LONG_RUNNING}
        watches = sum(v for k, v in per_min.items() if k.split()[0] in LONG_RUNNING)
        out.append("Per minute, by verb and resource (apiserver metrics, watches excluded):")
        out.append("")
        out += _table({"rows": counted}, "rows") or ["(none)"]
        out.append("")
        out.append(
            f"Watch requests that ended in the window (reconnects, not counted): {watches:.1f}/min."
        )
        out.append("")
        by_client = d.get("audit_non_watch_per_minute_by_client") or {}
        out.append(
            "Audit log, non-watch requests per minute by client: "
            + (", ".join(f"{k} {v}" for k, v in by_client.items()) or "none")
        )
        ops = d.get("audit_operator_requests") or {}
        if ops:
            out.append("")
            out.append(
                "The operator's requests in the window (audit log): "
                + ", ".join(f"{k} x{v}" for k, v in ops.items())
            )
        out.append("")
    elif r["id"] in ("4", "9"):
        flat = {k: v for k, v in d.items() if not isinstance(v, list | dict)}
        out.append(", ".join(f"{k}={v}" for k, v in flat.items()))
        out.append("")
    elif r["id"] == "6":
        out += [
            "| algorithm | iterations/run | nhi ms (runs) | floor ms (runs) |",
            "|---|---|---|---|",
        ]
        for alg, v in (d.get("algorithms") or {}).items():
            out.append(
                f"| {alg} | {v['iterations']} | {', '.join(_num(x) for x in v['nhi_ms'])} "
                f"| {', '.join(_num(x) for x in v['floor_ms'])} |"
            )
        out.append("")
    elif r["id"] == "7":
        for step in d.get("steps") or []:
            rc = "timed out" if step.get("timed_out") else f"exit {step.get('rc')}"
            out.append(f"- `{step['cmd']}` → {rc} after {step['seconds']} s")
            text = (step.get("output") or "").strip()
            if text:
                out.append("")
                out.append("  ```")
                out += [f"  {line}" for line in text.splitlines()[-12:]]
                out.append("  ```")
        out.append("")
    if r["status"] == "error" and d.get("error"):
        out += ["```", str(d["error"])[-3000:], "```", ""]
    return out


def write(
    results: list[Result],
    meta: dict[str, Any],
    out_md: Path,
    out_json: Path,
    analysis: Path | None = None,
) -> None:
    data = {"meta": meta, "scenarios": [r.to_dict() for r in results]}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    render(data, out_md, out_json.name, analysis)


def render(
    data: dict[str, Any], out_md: Path, json_name: str, analysis: Path | None = None
) -> None:
    """RESULTS.md from the data of results.json (also: ``python -m bench --from-json``)."""
    m = data["meta"]
    lines = [
        "# nhi-operator benchmarks",
        "",
        f"Generated by `python -m bench {m['argv']}` on {m['date']} "
        f"({m['total_minutes']:.1f} min). Raw numbers: `{json_name}`.",
        "",
        "Every result is either a ratio to a floor measured in the same run on the same "
        "machine, or an absolute target from the issue. API requests are counted from the API "
        "server's `apiserver_request_total` (deltas, the bench's own requests taken out).",
        "",
        "## Machine",
        "",
        f"- nproc: {m['machine']['nproc']}, memory: {m['machine']['memory_gib']} GiB, "
        f"CPU: {m['machine']['cpu_model']}",
        f"- Python {m['machine']['python']}, Kubernetes {m['kubernetes']} "
        "(local control plane: etcd, kube-apiserver, kube-controller-manager on loopback)",
        f"- load average at start {m['load_start']}, at end {m['load_end']}"
        + (
            f"; other work was running on the machine during the run "
            f"(peak 1-min load seen {m['load_peak']} on {m['machine']['nproc']} cores, "
            f"{m['other_controlplanes']} other control plane(s) / test runs present)"
            if m.get("busy")
            else ""
        ),
        f"- source tree measured: {m.get('source', 'not recorded')}",
        f"- scale: {m['scale']} ({m['sizes']}), runs per scenario: {m['runs']}",
        "",
        "## Summary",
        "",
        "| scenario | measure | median (min-max) | floor | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["scenarios"]:
        if not r["checks"]:
            lines.append(f"| {r['id']} {r['title']} | — | — | — | — | — | {r['status']} |")
        for c in r["checks"]:
            ratio = f"{c['ratio']:.2f}x" if c.get("ratio") is not None else "—"
            lines.append(
                f"| {r['id']} | {c['name']} | {_measured(c)} | {_floor(c)} | {ratio} "
                f"| {c['target']} | {_verdict(c['ok'])} |"
            )
    lines.append("")
    for note in m.get("notes") or []:
        lines.append(f"- {note}")
    if m.get("notes"):
        lines.append("")
    for r in data["scenarios"]:
        lines += _section(r)
    if analysis is not None and analysis.exists():
        lines += ["", analysis.read_text().strip(), ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines).rstrip() + "\n")
