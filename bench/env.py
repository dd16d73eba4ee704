"""What every scenario shares: the control plane, API clients, apiserver metrics, the operator.

The operator always runs as its own process (``python -m nhi.cli.operator``), exactly as
``make run`` and the e2e tests start it; the bench talks to the API server with
:class:`nhi.k8s.client.Api` under its own User-Agent, and counts its own requests so they
can be taken out of the API server's totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from nhi.k8s.client import Api, Connection, NotFound, load_connection

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
BENCH_AGENT = "nhi-bench/1"
FLOOR_AGENT = "nhi-bench-floor/1"

#: Verbs that change something (as ``apiserver_request_total`` spells them).
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
#: Long-running verbs: a watch is counted when it ends, not per event.
LONG_RUNNING_VERBS = frozenset({"WATCH", "WATCHLIST", "CONNECT"})
#: Heartbeats of the control plane itself (apiserver identity leases), never the operator.
BACKGROUND_RESOURCES = frozenset({"leases"})

Key = tuple[str, str]  # (verb, resource[/subresource])


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def gather_limited(
    items: Iterable[T], fn: Callable[[T], Awaitable[Any]], limit: int = 32
) -> list[Any]:
    """``fn`` over ``items`` with at most ``limit`` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def request_key(method: str, path: str, params: Mapping[str, str] | None) -> Key:
    """The (verb, resource) the API server's metrics will book a request under."""
    segs = [s for s in path.split("?")[0].split("/") if s]
    if segs[:1] == ["api"]:
        segs = segs[2:]
    elif segs[:1] == ["apis"]:
        segs = segs[3:]
    name = sub = ""
    if segs and segs[0] == "namespaces" and len(segs) >= 3:
        segs = segs[2:]
    resource = segs[0] if segs else ""
    if len(segs) > 1:
        name = segs[1]
    if len(segs) > 2:
        sub = segs[2]
    verb = method.upper()
    if verb == "GET":
        if params and params.get("watch") in ("1", "true"):
            verb = "WATCH"
        elif not name:
            verb = "LIST"
    return verb, f"{resource}/{sub}" if sub else resource


class CountingApi(Api):
    """nhi's async client, with its own User-Agent and a count of what it sent."""

    def __init__(self, connection: Connection, agent: str, *, limit: int = 64) -> None:
        headers = {**connection.headers, "User-Agent": agent}
        super().__init__(
            Connection(connection.server, connection.ssl_context, headers), limit=limit
        )
        self.counts: Counter[Key] = Counter()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        verb, resource = request_key(method, path, kwargs.get("params"))
        if verb == "PATCH" and kwargs.get("content_type") == "application/apply-patch+yaml":
            verb = "APPLY"
        self.counts[(verb, resource)] += 1
        return await super().request(method, path, **kwargs)


_METRIC = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_request_totals(text: str) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for labels, value in _METRIC.findall(text):
        lbl = dict(_LABEL.findall(labels))
        resource = lbl.get("resource", "")
        if not resource:
            continue  # non-resource URLs (/metrics, /healthz, /version)
        if lbl.get("subresource"):
            resource = f"{resource}/{lbl['subresource']}"
        out[(lbl.get("verb", ""), resource)] += int(float(value))
    return out


def delta(after: Counter[Key], before: Counter[Key]) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for k, v in after.items():
        d = v - before.get(k, 0)
        if d > 0:
            out[k] = d
    return out


def minus(total: Counter[Key], own: Counter[Key]) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for k, v in total.items():
        d = v - own.get(k, 0)
        if d > 0:
            out[k] = d
    return out


def non_watch(counts: Mapping[Key, int]) -> int:
    return sum(v for (verb, _), v in counts.items() if verb not in LONG_RUNNING_VERBS)


def writes(counts: Mapping[Key, int], *, background: bool = False) -> int:
    return sum(
        v
        for (verb, res), v in counts.items()
        if verb in WRITE_VERBS and (background or res.split("/")[0] not in BACKGROUND_RESOURCES)
    )


def by_verb_resource(counts: Mapping[Key, int], per: float = 1.0) -> dict[str, float]:
    """``{"VERB resource": n}``, largest first, optionally divided by ``per``."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {f"{verb} {res}": round(v / per, 3) for (verb, res), v in items}


def read_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB from /proc (psutil is not a dependency)."""
    rss = hwm = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def source_tree() -> str:
    """The commit measured, and whether the work tree had changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} with uncommitted changes" if dirty else head


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------- the operator


@dataclass
class Operator:
    """The operator as a subprocess (like tests/conftest.py's start_operator)."""

    kubeconfig: Path
    log_path: Path
    args: tuple[str, ...] = ()
    profile_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    metrics_port: int = 0
    started_at: float = 0.0
    peak_rss_mb: float = 0.0
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, limit: float = 120.0) -> float:
        """Start the process; return the seconds until /healthz answered."""
        self.health_port, self.metrics_port = free_port(), free_port()
        cmd = [sys.executable]
        if self.profile_path is not None:
            cmd += ["-m", "pyinstrument", "-r", "session", "-o", str(self.profile_path)]
        cmd += [
            "-m",
            "nhi.cli.operator",
            "--log-format",
            "json",
            f"--health-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
            *self.args,
        ]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "operator"), env.get("PYTHONPATH", "")) if p
        )
        self.started_at = time.monotonic()
        self.proc = self._spawn(cmd, env)
        self.peak_rss_mb = 0.0
        deadline = self.started_at + limit
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if await self._healthy():
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator never became healthy:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._http

    async def _healthy(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self.http.get(f"http://127.0.0.1:{self.health_port}/healthz") as r:
                return r.status == 200
        return False

    async def metric(self, name: str) -> float:
        """Sum of one of the operator's own Prometheus series (0 when not there yet)."""
        total = 0.0
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith(name) and (line[len(name)] in " {"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def rss(self) -> tuple[float, float]:
        rss, hwm = read_rss_mb(self.pid) if self.alive() else (0.0, 0.0)
        self.peak_rss_mb = max(self.peak_rss_mb, rss, hwm)
        return rss, hwm

    async def stop(self, limit: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + limit
            for _ in range(int(limit * 10) + 1):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


# ------------------------------------------------------------------------------ the env


@dataclass
class Env:
    """One control plane, the bench's API clients, and the operator's log directory."""

    control_plane: Any  # nhi.testenv.ControlPlane
    work_dir: Path
    small: bool
    profile_dir: Path | None = None
    api: CountingApi = field(init=False)
    floor_api: CountingApi = field(init=False)
    operator: Operator | None = None
    #: Whether a selfSigned ClusterIdentityIssuer became Ready in this tree.
    issuers_work: bool = False
    _op_seq: int = 0

    def __post_init__(self) -> None:
        conn = load_connection(str(self.control_plane.kubeconfig))
        self.api = CountingApi(conn, BENCH_AGENT)
        self.floor_api = CountingApi(conn, FLOOR_AGENT)

    async def close(self) -> None:
        await self.stop_operator()
        await self.api.close()
        await self.floor_api.close()

    # ---------------------------------------------------------------- apiserver metrics

    async def request_totals(self) -> Counter[Key]:
        async with self.api.session.get("/metrics") as resp:
            resp.raise_for_status()
            return parse_request_totals(await resp.text())

    def own(self) -> Counter[Key]:
        """Everything the bench's clients have sent so far (to subtract from deltas)."""
        return self.api.counts + self.floor_api.counts

    # ---------------------------------------------------------------- the operator

    async def start_operator(self, *args: str, profile: str | None = None) -> Operator:
        await self.stop_operator()
        self._op_seq += 1
        prof = None
        if profile and self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            prof = self.profile_dir / f"{profile}.pyisession"
        op = Operator(
            kubeconfig=Path(self.control_plane.kubeconfig),
            log_path=self.work_dir / f"operator-{self._op_seq}.log",
            args=args,
            profile_path=prof,
        )
        try:
            await op.start()
        except BaseException:
            await op.stop()
            raise
        self.operator = op
        return op

    def operator_log(self, chars: int = 3000) -> str:
        return self.operator.log_tail(chars) if self.operator is not None else ""

    async def identities(self) -> int:
        return len(await self.api.list("MachineIdentity"))

    async def ensure_operator(self) -> Operator:
        """The running operator, or a fresh one that has reconciled every identity."""
        if self.operator is not None and self.operator.alive():
            return self.operator
        op = await self.start_operator()
        await self.wait_quiet(quiet=3.0, limit=900, expect=await self.identities())
        return op

    async def stop_operator(self) -> None:
        if self.operator is not None:
            await self.operator.stop()
            self.operator = None

    async def wait_quiet(
        self,
        quiet: float = 3.0,
        limit: float = 300.0,
        interval: float = 0.5,
        expect: float = 0.0,
    ) -> float:
        """Wait until no write request reached the API server (leases aside) and the
        operator's reconcile count stood still for ``quiet`` seconds, and that count reached
        ``expect`` (a freshly started operator reconciles every identity once: until then
        it is still starting, however quiet it looks); return when the last activity was
        seen (monotonic)."""
        start = time.monotonic()
        last_change = start
        prev_w = -1
        prev_r = -1.0
        while True:
            totals = await self.request_totals()
            w = writes(minus(totals, self.own()))
            r = await self.operator.metric(RECONCILES) if self.operator else 0.0
            now = time.monotonic()
            if w != prev_w or r != prev_r:
                last_change = now
                prev_w, prev_r = w, r
            if now - last_change >= quiet and r >= expect:
                return last_change
            if now - start > limit:
                return last_change
            await asyncio.sleep(interval)

    # ---------------------------------------------------------------- objects

    async def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        await self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"nhi.dev/bench": "true", **(labels or {})}},
            }
        )

    async def delete_namespace(self, name: str, limit: float = 300.0) -> float:
        """Delete a namespace and wait until it is gone; return the seconds it took."""
        started = time.monotonic()
        await self.api.delete("Namespace", None, name)
        while time.monotonic() - started < limit:
            try:
                if await self.api.get("Namespace", None, name) is None:
                    break
            except NotFound:
                break
            await asyncio.sleep(1.0)
        return time.monotonic() - started


RECONCILES = "nhi_reconcile_duration_seconds_count"
