"""Start and stop etcd, kube-apiserver and kube-controller-manager on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nhi.testenv import manifests
from nhi.testenv.errors import ControlPlaneError as ControlPlaneError
from nhi.testenv.manifests import REPO_ROOT as REPO_ROOT
from nhi.testenv.manifests import authority_policy as authority_policy
from nhi.testenv.openbao import LOGIN_SERVICE_ACCOUNT, OpenBao
from nhi.testenv.pki import Pki, write_kubeconfig

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: The controllers of kube-controller-manager that what runs here relies on, as a real cluster
#: runs them. No kubelet runs here, so the node, pod, volume and endpoint controllers would
#: have nothing to act on. clusterrole-aggregation fills the built-in admin, edit and view
#: ClusterRoles from the aggregated ones: without it they stay empty, and binding them proves
#: nothing about what an identity can do.
CONTROLLERS = ",".join(
    [
        "clusterrole-aggregation-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "deployment-controller",
        "replicaset-controller",
        "statefulset-controller",
        "daemonset-controller",
        "job-controller",
        "cronjob-controller",
        "ttl-after-finished-controller",
        "root-ca-certificate-publisher-controller",
    ]
)

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Metadata only: request and response bodies (and so Secret values) never reach the log.
  - level: Metadata
"""


#: The common name of the client certificate kube-apiserver presents to the usage endpoint.
AUDIT_CLIENT_NAME = "kube-apiserver-audit"


def build_binaries() -> Path:
    """Build or reuse the control-plane binaries; return the directory holding them."""
    override = os.environ.get("NHI_CONTROLPLANE_BIN")
    if override:
        return Path(override)
    script = REPO_ROOT / "hack" / "build-controlplane.sh"
    if not script.exists():
        raise ControlPlaneError(
            f"{script} not found: set NHI_CONTROLPLANE_BIN to a directory with etcd, "
            "kube-apiserver, kube-controller-manager and kubectl"
        )
    out = subprocess.run(["bash", str(script)], check=False, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed (exit {out.returncode})")
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """One local control plane. Use as a context manager, or call start() and stop()."""

    bin_dir: Path | None = None
    work_dir: Path | None = None
    kubeconfig_path: Path | None = None
    verbose: bool = False
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server: str = ""
    #: Where kube-apiserver's audit webhook posts its batches: the operator's usage endpoint
    #: (see usage_args), listening there once an operator runs with those arguments.
    audit_webhook_port: int = 0
    openbao: OpenBao | None = None
    _own_work_dir: bool = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        assert self.kubeconfig_path is not None, "control plane not started"
        return self.kubeconfig_path

    @property
    def logs_dir(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "pki"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "audit.log"

    def binary(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    def start(self, timeout: float = 120.0) -> None:
        if self.bin_dir is None:
            self.bin_dir = build_binaries()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="nhi-controlplane-"))
            self._own_work_dir = True
        for sub in ("pki", "logs", "etcd"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.kubeconfig_path is None:
            self.kubeconfig_path = self.work_dir / "kubeconfig"
        self.kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)

        pki = Pki(self.pki_dir)
        pki.issue("apiserver", "kube-apiserver", server=True)
        pki.issue("admin", "nhi-admin", org="system:masters")
        pki.issue("controller-manager", "system:kube-controller-manager")
        (self.work_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self._write_audit_webhook(pki)

        try:
            self._start_etcd()
            self._start_apiserver()
            write_kubeconfig(self.kubeconfig, self.server, self.pki_dir, "admin")
            write_kubeconfig(
                self.work_dir / "controller-manager.kubeconfig",
                self.server,
                self.pki_dir,
                "controller-manager",
            )
            self._wait_ready(timeout)
            self._start_controller_manager()
            self._wait_default_service_account(timeout)
        except BaseException:
            self.stop()
            raise

    def start_openbao(
        self,
        operator_namespace: str = "nhi-system",
        service_account: str = LOGIN_SERVICE_ACCOUNT,
        *,
        port: int | None = None,
        tls: bool = True,
    ) -> OpenBao:
        """Start OpenBao beside the control plane (once), configured against it.

        The operator's namespace and ServiceAccount are created when missing: the Kubernetes
        auth role of :mod:`nhi.testenv.openbao` is bound to them. :meth:`stop` stops it.
        """
        if self.openbao is not None:
            return self.openbao
        assert self.work_dir is not None, "control plane not started"
        bao = OpenBao(self.work_dir / "openbao", port or free_port(), tls=tls)
        self.openbao = bao
        bao.start()
        self.kubectl("create", "namespace", operator_namespace, check=False)
        self.kubectl(
            "create", "serviceaccount", service_account, "-n", operator_namespace, check=False
        )
        bao.configure(
            kube_server=self.server,
            kube_ca_pem=(self.pki_dir / "ca.crt").read_text(),
            kubectl=self.kubectl,
            operator_namespace=operator_namespace,
            operator_service_account=service_account,
        )
        return bao

    def stop(self) -> None:
        if self.openbao is not None:
            self.openbao.stop()
            self.openbao = None
        for name in reversed(list(self.processes)):
            proc = self.processes.pop(name)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        if self._own_work_dir and self.work_dir is not None and not os.environ.get("NHI_KEEP"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---------------------------------------------------------------- audit webhook

    def _write_audit_webhook(self, pki: Pki) -> None:
        """The usage endpoint's serving certificate, kube-apiserver's client certificate for
        it, and the kubeconfig of the audit webhook backend pointing at it."""
        assert self.work_dir is not None
        if not self.audit_webhook_port:
            self.audit_webhook_port = free_port()
        pki.issue("usage-server", "nhi-usage", server=True)
        pki.issue("audit-webhook", AUDIT_CLIENT_NAME)
        write_kubeconfig(
            self.work_dir / "audit-webhook.kubeconfig",
            f"https://127.0.0.1:{self.audit_webhook_port}/audit",
            self.pki_dir,
            "audit-webhook",
        )

    def usage_args(self) -> list[str]:
        """The operator's arguments that make it the endpoint kube-apiserver sends to."""
        pki = self.pki_dir
        return [
            f"--usage-port={self.audit_webhook_port}",
            "--usage-address=127.0.0.1",
            f"--usage-tls-cert-file={pki / 'usage-server.crt'}",
            f"--usage-tls-key-file={pki / 'usage-server.key'}",
            f"--usage-client-ca-file={pki / 'ca.crt'}",
            f"--usage-client-names={AUDIT_CLIENT_NAME}",
        ]

    # ---------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = proc

    def _start_etcd(self) -> None:
        assert self.work_dir is not None
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                self.binary("etcd"),
                "--name=nhi",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=nhi=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("etcd")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            time.sleep(0.1)
        raise ControlPlaneError(f"etcd did not become healthy\n{self.tail('etcd')}")

    def _start_apiserver(self) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki_dir
        self._spawn(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--audit-policy-file={self.work_dir / 'audit-policy.yaml'}"
                if self.work_dir
                else "",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=100",
                "--audit-log-maxbackup=2",
                # The same events, in batches, to the operator's usage endpoint. Batch mode never
                # blocks a request: while no operator listens, batches are retried, then dropped.
                f"--audit-webhook-config-file={self.work_dir / 'audit-webhook.kubeconfig'}"
                if self.work_dir
                else "",
                "--audit-webhook-mode=batch",
                "--audit-webhook-batch-max-wait=1s",
                "--audit-webhook-initial-backoff=1s",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--max-requests-inflight=1600",
                "--max-mutating-requests-inflight=800",
                "--v=1",
            ],
        )

    def _start_controller_manager(self) -> None:
        assert self.work_dir is not None
        pki = self.pki_dir
        self._spawn(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                f"--kubeconfig={self.work_dir / 'controller-manager.kubeconfig'}",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--concurrent-gc-syncs=50",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )

    def _check_alive(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None and proc.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {proc.returncode}\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {name}| {line}" for line in text)

    def all_logs(self) -> str:
        return "\n".join(
            self.tail(n, 60) for n in ("etcd", "kube-apiserver", "kube-controller-manager")
        )

    # ---------------------------------------------------------------- readiness

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("etcd")
            self._check_alive("kube-apiserver")
            try:
                code, body = self.get("/readyz")
                if code == 200:
                    return
                last = body.decode(errors="replace")[-500:]
            except OSError as err:
                last = str(err)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready: {last}\n{self.tail('kube-apiserver')}")

    def _wait_default_service_account(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("kube-controller-manager")
            code, _ = self.get("/api/v1/namespaces/default/serviceaccounts/default")
            if code == 200:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"the default ServiceAccount never appeared\n{self.tail('kube-controller-manager')}"
        )

    def version(self) -> dict[str, str]:
        code, body = self.get("/version")
        if code != 200:
            raise ControlPlaneError(f"/version answered {code}")
        return dict(json.loads(body))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            text=True,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def install_crds(self) -> None:
        """Apply the repository's CRDs (server-side) and wait until they are Established."""
        manifests.install_crds(self.kubectl)

    def install_report_crds(self) -> bool:
        """:func:`nhi.testenv.manifests.install_report_crds`."""
        return manifests.install_report_crds(self.kubectl)

    def install_authority_policy(self, timeout: float = 60.0, name: str = "") -> float:
        """:func:`nhi.testenv.manifests.install_authority_policy`: returns the seconds waited."""
        return manifests.install_authority_policy(self.kubectl, timeout, name)

    def install_grant_policies(self, timeout: float = 60.0, prefix: str = "") -> float:
        """:func:`nhi.testenv.manifests.install_grant_policies`: returns the seconds waited."""
        return manifests.install_grant_policies(self.kubectl, timeout, prefix)

    def install_finalizer_policy(self, timeout: float = 60.0) -> float:
        """:func:`nhi.testenv.manifests.install_finalizer_policy`: returns the seconds waited."""
        return manifests.install_finalizer_policy(self.kubectl, timeout)


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[ControlPlane]:
    cp = ControlPlane(**kwargs)  # type: ignore[arg-type]
    with cp:
        yield cp
