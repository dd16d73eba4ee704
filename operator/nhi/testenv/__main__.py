"""``python -m nhi.testenv``: the local control plane from the command line.

python -m nhi.testenv build            build or reuse the binaries, print their directory
python -m nhi.testenv up               start the control plane and wait for Ctrl-C
python -m nhi.testenv run              start it, install the CRDs, run the operator in the
                                       foreground, apply the samples (what `make run` does)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from nhi.testenv.controlplane import (
    REPO_ROOT,
    ControlPlane,
    ControlPlaneError,
    build_binaries,
    free_port,
)
from nhi.testenv.openbao import OpenBao

DEFAULT_KUBECONFIG = REPO_ROOT / ".run" / "kubeconfig"
#: Where manifests/samples expects OpenBao; another free port when it is taken.
SAMPLE_OPENBAO = "http://127.0.0.1:8200"


class _Interrupted(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def _banner(cp: ControlPlane) -> None:
    bin_dir = cp.bin_dir
    print(
        "\ncontrol plane ready: "
        f"Kubernetes {cp.version().get('gitVersion')} at {cp.server}\n"
        "In another terminal:\n"
        f"  export KUBECONFIG={cp.kubeconfig}\n"
        f"  export PATH={bin_dir}:$PATH\n"
        "  kubectl get machineidentities -A\n",
        flush=True,
    )


def _wait_forever(cp: ControlPlane, operator: subprocess.Popen[bytes] | None) -> int:
    while True:
        for name in list(cp.processes):
            proc = cp.processes[name]
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}:\n{cp.tail(name)}", file=sys.stderr)
                return 1
        if operator is not None and operator.poll() is not None:
            print(f"nhi-operator exited with {operator.returncode}", file=sys.stderr)
            return int(operator.returncode or 1)
        time.sleep(0.5)


def _operator_healthy(port: int) -> bool:
    import urllib.request

    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return int(r.status) == 200
    return False


def _install(cp: ControlPlane) -> None:
    """What the operator needs before it starts, as the chart installs it."""
    # The operator's own namespace: cluster issuers keep their roots and CRLs there.
    cp.kubectl("create", "namespace", os.environ.get("NHI_NAMESPACE", "nhi-system"))
    cp.install_crds()
    # Where the inventory writes its reports (with --discovery), if the cluster has none.
    cp.install_report_crds()
    # As the chart installs by default: new identities get the operator's finalizer
    # at admission.
    cp.install_finalizer_policy()
    cp.install_authority_policy()
    cp.install_grant_policies()


def _start_openbao(cp: ControlPlane) -> OpenBao:
    """OpenBao beside the control plane, where the samples expect it when the port is free."""
    port = int(SAMPLE_OPENBAO.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            port = free_port()
    return cp.start_openbao(os.environ.get("NHI_NAMESPACE", "nhi-system"), port=port, tls=False)


def _start_operator(
    kubeconfig: Path, health_port: int, metrics_port: int, webhook_port: int, usage: list[str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nhi.cli.operator",
            "--log-format",
            "text",
            "--all-namespaces",
            f"--health-port={health_port}",
            f"--metrics-port={metrics_port}",
            f"--webhook-port={webhook_port}",
            "--webhook-host=127.0.0.1",
            # kube-apiserver's audit webhook posts here: usage per identity (docs/usage.md).
            *usage,
        ],
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
        start_new_session=True,
    )


def _became_healthy(operator: subprocess.Popen[bytes], health_port: int) -> bool:
    deadline = time.monotonic() + 60
    while not _operator_healthy(health_port):
        if operator.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop_operator(operator: subprocess.Popen[bytes] | None) -> None:
    if operator is not None and operator.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)


def cmd_run(args: argparse.Namespace, up_only: bool) -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    kubeconfig = Path(args.kubeconfig)
    cp = ControlPlane(kubeconfig_path=kubeconfig)
    operator: subprocess.Popen[bytes] | None = None
    try:
        print("starting etcd, kube-apiserver and kube-controller-manager ...", flush=True)
        started = time.monotonic()
        cp.start()
        print(f"control plane up in {time.monotonic() - started:.1f}s", flush=True)
        if not up_only:
            _install(cp)
            # Free ports, so a second `make run` or a test run beside it never collides.
            health_port, metrics_port, webhook_port = free_port(), free_port(), free_port()
            operator = _start_operator(
                kubeconfig, health_port, metrics_port, webhook_port, cp.usage_args()
            )
            if not _became_healthy(operator, health_port):
                print("nhi-operator did not become healthy", file=sys.stderr)
                return 1
            bao = _start_openbao(cp)
            samples = REPO_ROOT / "manifests" / "samples"
            text = "\n---\n".join(p.read_text() for p in sorted(samples.rglob("*.yaml")))
            cp.kubectl(
                "apply",
                "--server-side",
                "-f",
                "-",
                input=text.replace(SAMPLE_OPENBAO, bao.address),
            )
            print(f"samples applied from {samples.relative_to(REPO_ROOT)}/", flush=True)
            print(f"OpenBao: {bao.address} (root token in {bao.log_file})", flush=True)
            print(f"metrics: http://127.0.0.1:{metrics_port}/metrics", flush=True)
        _banner(cp)
        if not up_only:
            print("operator running (Ctrl-C stops the operator and the control plane)", flush=True)
        return _wait_forever(cp, operator)
    except _Interrupted:
        print("\nstopping ...", flush=True)
        return 0
    except ControlPlaneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_operator(operator)
        cp.stop()
        print("stopped; no process left behind", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nhi.testenv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or reuse the control-plane binaries")
    for name in ("up", "run"):
        p = sub.add_parser(name)
        p.add_argument(
            "--kubeconfig",
            default=str(DEFAULT_KUBECONFIG),
            help="where to write the admin kubeconfig (default: %(default)s)",
        )
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries())
        return 0
    return cmd_run(args, up_only=args.command == "up")


if __name__ == "__main__":
    sys.exit(main())
