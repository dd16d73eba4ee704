"""python -m bench [--scale small|full] [--runs N] [--only 1,2,...] [--out bench/RESULTS.md]

Starts its own local control plane (nhi.testenv.ControlPlane), applies crds/, runs the
scenarios and writes RESULTS.md and results.json next to each other. Order: 6 (pure
cryptography, nothing else running); 11 (audit event ingestion, pure as well); the floors of
1 and 3 (no operator running); then one operator process for the operator side of 1 and 3,
for 4 and for 5 (idle); then 2, which restarts it; 8 (discovery and inventory) with the
identities scenario 2 left. 7 (cert-manager probe) runs in the background from the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import manifests as m
from bench import (
    report,
    s1_provision,
    s2_restart,
    s3_rotation,
    s4_revocation,
    s5_idle,
    s6_crypto,
    s7_certmanager,
    s8_vault,
    s9_inventory,
    s10_grants,
    s11_usage,
)
from bench.env import ROOT, Env, load_average, machine_info, source_tree
from bench.result import Result

SIZES: dict[str, dict[str, float]] = {
    # n1: scenario 1's N; m2: scenario 2's M; n3, n4, n10: scenarios 3, 4, 10; n9: scenario 9's
    # namespaces; idle: minutes.
    "small": {
        "n1": 10,
        "m2": 30,
        "n3": 10,
        "n4": 5,
        "idle": 0.5,
        "interval4": 0.5,
        "n10": 20,
        "n9": 5,
        "n8": 10,
    },
    # The issue's sizes (ISSUE below): about 30 minutes on 2 cores.
    "full": {
        "n1": 1000,
        "m2": 5000,
        "n3": 1000,
        "n4": 200,
        "idle": 5.0,
        "interval4": 0.25,
        "n10": 500,
        "n9": 2000,
        "n8": 1000,
    },
}
ISSUE = {"n1": 1000, "m2": 5000, "n3": 1000, "n4": 200, "n10": 500, "n9": 2000, "n8": 1000}
ORDER = ["6", "11", "1", "3", "4", "5", "10", "8", "2", "9", "7"]
CLUSTER = {"1", "2", "3", "4", "5", "10", "9", "8"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=("small", "full"), default="full")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    p.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1 or 2,5")
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--n1", type=int, help="scenario 1's N (overrides --scale)")
    p.add_argument("--m2", type=int, help="scenario 2's M")
    p.add_argument("--n3", type=int, help="scenario 3's N")
    p.add_argument("--n4", type=int, help="scenario 4's N")
    p.add_argument("--n9", type=int, help="scenario 9's namespaces (10 ServiceAccounts each)")
    p.add_argument("--n8", type=int, help="scenario 8's N")
    p.add_argument("--idle-minutes", type=float, help="scenario 5's T")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run the operator of scenarios 1 and 8 under pyinstrument (if installed); profiles "
        "go next to --out. Slows the operator: not for the reported numbers",
    )
    p.add_argument(
        "--analysis",
        default=str(ROOT / "bench" / "ANALYSIS.md"),
        help="a hand-written analysis appended to RESULTS.md when it exists",
    )
    p.add_argument(
        "--from-json",
        metavar="RESULTS_JSON",
        help="run nothing: render --out from an earlier run's results.json (e.g. after "
        "editing the analysis)",
    )
    return p.parse_args(argv)


def other_control_planes(own: set[int]) -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in own:
            continue
        with contextlib.suppress(OSError):
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0]
            if cmd.endswith(b"/kube-apiserver"):
                n += 1
    return n


async def check_issuers(env: Env) -> bool:
    """Create a selfSigned ClusterIdentityIssuer and wait up to 60 s for it to be Ready."""
    await env.ensure_namespace(m.OPERATOR_NAMESPACE)
    await env.start_operator()
    await env.api.apply(m.cluster_issuer())
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline:
        obj = await env.api.get("ClusterIdentityIssuer", None, m.ISSUER)
        if obj and m.is_ready(obj):
            ready = True
            break
        await asyncio.sleep(0.5)
    await env.stop_operator()
    return ready


async def guarded(res_id: str, title: str, fn: Callable[[], Awaitable[Result]]) -> Result:
    t0 = time.monotonic()
    try:
        res = await fn()
    except Exception as err:
        res = Result(res_id, title, status="error")
        res.details["error"] = "".join(traceback.format_exception(err))[-4000:]
        res.notes.append(f"The scenario failed: {type(err).__name__}: {str(err)[:300]}")
    res.seconds = time.monotonic() - t0
    res.settle()
    print(f"[bench] scenario {res_id}: {res.status} ({res.seconds:.0f} s)", flush=True)
    return res


async def main_async(args: argparse.Namespace) -> int:
    sizes = dict(SIZES[args.scale])
    for key in ("n1", "m2", "n3", "n4", "n9", "n8"):
        attr = key
        if getattr(args, attr):
            sizes[key] = getattr(args, attr)
    if args.idle_minutes is not None:
        sizes["idle"] = args.idle_minutes
    small = args.scale == "small"
    runs = max(1, args.runs)
    selected = [s for s in ORDER if not args.only or s in args.only.split(",")]
    out_md = args.out_path
    out_json = out_md.with_name("results.json")
    started = time.monotonic()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    others_start = other_control_planes(set())
    loads = [load_start[0]]
    meta: dict[str, Any] = {
        "argv": " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": date,
        "machine": machine_info(),
        "source": source_tree(),
        "load_start": load_start,
        "scale": args.scale,
        "sizes": ", ".join(f"{k}={v:g}" for k, v in sizes.items()),
        "runs": runs,
        "kubernetes": "not started",
        "notes": [],
    }
    if not small:
        scaled = [f"{k}={sizes[k]:g} (issue: {v})" for k, v in ISSUE.items() if sizes[k] < v]
        if scaled:
            meta["notes"].append(
                f"Smaller than the issue's sizes: {', '.join(scaled)}. "
                "`--n1 1000 --m2 5000 --n3 1000 --n4 200 --n9 2000 --n8 1000` (the full scale) "
                "runs them."
            )

    async def sample_load() -> None:
        while True:
            loads.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_load())
    probe: asyncio.Task[dict[str, Any]] | None = None
    if "7" in selected:
        probe = asyncio.create_task(s7_certmanager.probe(build=not small))
    results: dict[str, Result] = {}
    interrupted = False
    own_pids: set[int] = set()
    if "6" in selected:
        results["6"] = await guarded(
            "6", "Cryptography per issuance", lambda: asyncio.to_thread(s6_crypto.run, runs, small)
        )
    if "11" in selected:
        results["11"] = await guarded(
            "11", "Usage: audit event batches ingested",
            lambda: asyncio.to_thread(s11_usage.run, runs, small),
        )  # fmt: skip
    cluster_ids = [s for s in selected if s in CLUSTER]
    if cluster_ids:
        from nhi.testenv import ControlPlane

        work = Path(tempfile.mkdtemp(prefix="nhi-bench-"))
        cp = ControlPlane()
        cp.start()
        own_pids = {p.pid for p in cp.processes.values()}
        meta["kubernetes"] = cp.version().get("gitVersion", "?")
        env = Env(cp, work, small=small, profile_dir=out_md.parent if args.profile else None)
        try:
            cp.install_crds()
            # As the chart installs it by default: the finalizer is added at admission.
            cp.install_finalizer_policy()
            meta["notes"].append(
                "The MutatingAdmissionPolicy that adds the operator's finalizer to new "
                "MachineIdentities (the chart's default, manifests/base/admissionpolicy.yaml) "
                "is installed for every run, the floor's included."
            )
            env.issuers_work = await check_issuers(env)
            meta["issuers_work"] = env.issuers_work
            meta["notes"].append(
                "A selfSigned ClusterIdentityIssuer became Ready: identities carry an "
                "ECDSA-P256 X509 credential besides the token."
                if env.issuers_work
                else "No selfSigned ClusterIdentityIssuer became Ready within 60 s: "
                "identities carry a token only."
            )
            n1, m2, n3, n4 = (int(sizes[k]) for k in ("n1", "m2", "n3", "n4"))
            floors: dict[str, list[dict[str, Any]]] = {}

            async def floor_phases() -> Result:
                if "1" in cluster_ids:
                    print("[bench] scenario 1: floor runs ...", flush=True)
                    floors["1"] = await s1_provision.floor_phase(env, n1, runs)
                if "3" in cluster_ids:
                    print("[bench] scenario 3: floor runs ...", flush=True)
                    floors["3"] = await s3_rotation.floor_phase(env, n3, runs)
                return Result("floors", "floor runs")

            floor_res = await guarded("floors", "Floor runs of scenarios 1 and 3", floor_phases)

            async def s1() -> Result:
                if floor_res.status == "error":
                    raise RuntimeError(f"the floor runs failed: {floor_res.details.get('error')}")
                ops = await s1_provision.operator_phase(env, n1, runs, args.profile)
                return s1_provision.result(env, n1, floors["1"], ops)

            async def s3() -> Result:
                if floor_res.status == "error":
                    raise RuntimeError(f"the floor runs failed: {floor_res.details.get('error')}")
                ops = await s3_rotation.operator_phase(env, n3, runs)
                return s3_rotation.result(env, n3, floors.get("3", []), ops)

            plan: dict[str, tuple[str, Callable[[], Awaitable[Result]]]] = {
                "1": ("Provision", s1),
                "3": ("Certificates due at once", s3),
                "4": (
                    "Revocation latency",
                    lambda: s4_revocation.run(env, n4, sizes["interval4"]),
                ),
                "2": ("Restart", lambda: s2_restart.run(env, m2, runs, small)),
                "5": ("Idle cost", lambda: s5_idle.run(env, sizes["idle"])),
                "10": (
                    "AccessGrants expiring together",
                    lambda: s10_grants.run(env, int(sizes["n10"]), small),
                ),
                "9": ("Inventory", lambda: s9_inventory.run(env, int(sizes["n9"]))),
                "8": (
                    "Vault issuer and KV",
                    lambda: s8_vault.run(env, int(sizes["n8"]), runs, args.profile),
                ),
            }
            try:
                for sid in cluster_ids:
                    title, fn = plan[sid]
                    print(f"[bench] scenario {sid}: {title} ...", flush=True)
                    results[sid] = await guarded(sid, title, fn)
            except asyncio.CancelledError:
                interrupted = True
                meta["notes"].append("Interrupted: scenarios without a section did not finish.")
        finally:
            await env.close()
            cp.stop()
            failed = any(r.status == "error" for r in results.values())
            if failed or os.environ.get("NHI_KEEP"):
                print(f"[bench] operator logs kept in {work}", flush=True)
            else:
                shutil.rmtree(work, ignore_errors=True)
    if probe is not None and interrupted:
        probe.cancel()
    elif probe is not None:
        info = await probe
        results["7"] = s7_certmanager.result(info)
        results["7"].seconds = float(info.get("seconds", 0.0))
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    meta["load_end"] = load_average()
    meta["load_peak"] = round(max(loads), 2)
    meta["other_controlplanes"] = max(others_start, other_control_planes(own_pids))
    meta["busy"] = meta["load_peak"] > 0.5 * meta["machine"]["nproc"] or bool(
        meta["other_controlplanes"]
    )
    meta["total_minutes"] = (time.monotonic() - started) / 60
    ordered = [results[s] for s in ORDER if s in results]
    analysis = Path(args.analysis) if args.analysis else None
    report.write(ordered, meta, out_md, out_json, analysis)
    print(f"[bench] wrote {out_md} and {out_json}", flush=True)
    if interrupted:
        return 130
    return 1 if any(r.status == "error" for r in ordered) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out_path = Path(args.out).resolve()
    if args.profile:
        import importlib.util

        if importlib.util.find_spec("pyinstrument") is None:
            print("--profile needs pyinstrument: pip install pyinstrument", file=sys.stderr)
            return 2
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        analysis = Path(args.analysis) if args.analysis else None
        report.render(data, args.out_path, Path(args.from_json).name, analysis)
        print(f"[bench] wrote {args.out_path}")
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
