"""Shared fixtures: the real local control plane, the operator as a subprocess, namespaces.

When NHI_TEST_KUBECONFIG points at an existing cluster (kind, k3d, a real one), the tests use
it instead of starting the local control plane, so the same suite runs in a user's CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
TEST_AUTHORITY_POLICY = "nhi-test-authority"
TEST_GRANT_POLICY_PREFIX = "nhi-test-"


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll until ``predicate`` returns a truthy value; return it, or fail with ``message``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}; last error: {last_error!r}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: kubeconfig, binaries, and helpers the tests share."""

    kubeconfig: Path
    bin_dir: Path | None
    control_plane: Any = None  # nhi.testenv.ControlPlane when started here

    def tool(self, name: str) -> str:
        if self.bin_dir is not None and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name)
        if not found:
            raise AssertionError(f"{name} not found")
        return found

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, as_user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}"]
        if as_user:
            cmd.append(f"--as={as_user}")
        proc = subprocess.run(
            [*cmd, *args], input=input, text=True, capture_output=True, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict[str, Any] | str) -> None:
        # JSON, not YAML: PyYAML leaves strings such as 1e10 unquoted, which kubectl's YAML 1.2
        # parser then reads as numbers.
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        import json

        return dict(json.loads(proc.stdout))

    def env(self) -> dict[str, str]:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        return env

    def logs(self) -> str:
        return self.control_plane.all_logs() if self.control_plane is not None else ""


_CLUSTER: Cluster | None = None


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    global _CLUSTER
    external = os.environ.get("NHI_TEST_KUBECONFIG")
    if external:
        from nhi.testenv import build_binaries

        bin_dir = None
        with contextlib.suppress(Exception):
            bin_dir = build_binaries()
        _CLUSTER = Cluster(kubeconfig=Path(external), bin_dir=bin_dir)
        yield _CLUSTER
        _CLUSTER = None
        return
    from nhi.testenv import ControlPlane

    cp = ControlPlane()
    cp.start()
    assert cp.bin_dir is not None
    _CLUSTER = Cluster(kubeconfig=cp.kubeconfig, bin_dir=cp.bin_dir, control_plane=cp)
    try:
        yield _CLUSTER
    finally:
        _CLUSTER = None
        cp.stop()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    # The operator's own namespace: cluster issuers keep their roots and CRLs there.
    ns = os.environ.get("NHI_NAMESPACE", "nhi-system")
    if cluster.get("namespace", ns) is None:
        cluster.kubectl("create", "namespace", ns, check=False)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=nhi-operator",
    )
    # As every install does: who may ask for an adoption or a rollout is checked at admission.
    # Under a name of its own: the e2e tests install the chart's beside it.
    if cluster.control_plane is not None:
        cluster.control_plane.install_authority_policy(name=TEST_AUTHORITY_POLICY)
    else:
        from nhi.testenv.controlplane import authority_policy

        cluster.kubectl(
            "apply", "--server-side", "-f", "-", input=authority_policy(TEST_AUTHORITY_POLICY)
        )
    # Who asked for an AccessGrant and who decided, recorded by the API server.
    if cluster.control_plane is not None:
        cluster.control_plane.install_grant_policies(prefix=TEST_GRANT_POLICY_PREFIX)
    else:
        from nhi.testenv.manifests import grant_policies

        cluster.kubectl(
            "apply", "--server-side", "-f", "-", input=grant_policies(TEST_GRANT_POLICY_PREFIX)
        )
    return cluster


@pytest.fixture(scope="session")
def openbao(crds: Cluster) -> Any:
    """The real OpenBao server of nhi.testenv beside the control plane, configured against
    it (engines, auth methods, the operator's policy); stopped with the control plane."""
    if crds.control_plane is None:
        pytest.skip("OpenBao runs beside the local control plane only")
    return crds.control_plane.start_openbao(os.environ.get("NHI_NAMESPACE", "nhi-system"))


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    metrics_port: int
    cluster: Cluster | None = None
    args: tuple[str, ...] = ()

    def restart(self, log_path: Path | None = None) -> None:
        """Stop the process and start a fresh one in its place (same arguments)."""
        assert self.cluster is not None
        self.stop()
        new = start_operator(
            self.cluster, log_path or self.log_path.with_suffix(".restart.log"), *self.args
        )
        self.proc, self.log_path = new.proc, new.log_path
        self.health_port, self.metrics_port = new.health_port, new.metrics_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_operator(
    cluster: Cluster, log_path: Path, *extra: str, env: dict[str, str] | None = None
) -> OperatorProcess:
    health, metrics = free_port(), free_port()
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nhi.cli.operator",
            "--log-format",
            "json",
            f"--health-port={health}",
            f"--metrics-port={metrics}",
            *extra,
        ],
        env=env or cluster.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    op = OperatorProcess(proc, log_path, health, metrics, cluster=cluster, args=extra)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"operator exited with {proc.returncode}:\n{op.log()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:
                return int(r.status) == 200
        return False

    wait_for(healthy, timeout=60, message="the operator's /healthz")
    return op


_OPERATOR: OperatorProcess | None = None


@pytest.fixture(scope="session")
def operator(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, running as a subprocess against the cluster for the whole session."""
    global _OPERATOR
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    op = start_operator(crds, log_path)
    _OPERATOR = op
    try:
        yield op
    finally:
        _OPERATOR = None
        op.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        if _OPERATOR is not None:
            report.sections.append(("operator log (tail)", _OPERATOR.log()[-6000:]))
        if _CLUSTER is not None and _CLUSTER.control_plane is not None:
            report.sections.append(("control plane logs (tail)", _CLUSTER.logs()[-6000:]))
