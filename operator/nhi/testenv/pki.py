"""The certificates, keys and kubeconfigs of a local control plane.

One ECDSA P-256 CA signs the API server's serving certificate and the client certificates;
the service-account signing key is a key pair of its own. Every file is written with mode
0600.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from nhi.crypto import (
    Certificate,
    KeyAlgorithm,
    PrivateKey,
    build_self_signed_ca,
    cert_pem,
    generate_key,
    private_key_pem,
    public_key_pem,
)
from nhi.crypto.serving import issue_tls_cert

_TTL = dt.timedelta(days=365)
_API_SERVER_HOSTS = (
    "localhost",
    "kubernetes",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "127.0.0.1",
    "10.0.0.1",
)


def _key() -> PrivateKey:
    return generate_key(KeyAlgorithm.ECDSA_P256)


@dataclass
class Pki:
    """Certificates and keys of one control plane, written below ``root``."""

    root: Path
    ca_key: PrivateKey = field(init=False)
    ca_cert: Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.ca_key = _key()
        self.ca_cert = build_self_signed_ca("nhi-testenv-ca", self.ca_key, now, _TTL)
        self.write("ca.crt", cert_pem(self.ca_cert))
        self.write("ca.key", private_key_pem(self.ca_key))
        sa_key = _key()
        self.write("sa.key", private_key_pem(sa_key))
        self.write("sa.pub", public_key_pem(sa_key))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(self, name: str, cn: str, org: str | None = None, server: bool = False) -> None:
        key = _key()
        cert = issue_tls_cert(
            self.ca_cert,
            self.ca_key,
            key,
            common_name=cn,
            organization=org,
            hosts=_API_SERVER_HOSTS if server else (),
            client=not server,
            now=dt.datetime.now(dt.UTC),
            ttl=_TTL,
        )
        self.write(f"{name}.crt", cert_pem(cert))
        self.write(f"{name}.key", private_key_pem(key))


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "nhi-local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "nhi-local", "context": {"cluster": "nhi-local", "user": user}}],
        "current-context": "nhi-local",
    }
    # JSON is valid YAML, and keeps this module free of third-party parsers.
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
