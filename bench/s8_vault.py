"""Scenario 8: N identities, each an ECDSA-P256 certificate from the Vault issuer kept in KV.

OpenBao (nhi.testenv.openbao) runs beside the control plane; a ClusterIdentityIssuer signs
through its pki engine (Kubernetes auth with a token of the operator's ServiceAccount) and each
identity keeps its certificate in KV v2 too (spec.vault, store Both). The bench applies the N
identities with concurrency 32 and waits until all are Ready. The floor is plain hvac
(nhi.vault's client) doing what Vault sees of one identity, with the same concurrency: a key
and a CSR, ``pki/sign/nhi``, a KV write with its custom metadata. Vault requests per identity
are counted from OpenBao's own metrics (``vault_core_handle_request_count``), for both.

A second floor adds to the first what the operator also writes to Kubernetes for each
identity (the MachineIdentity, its ServiceAccount, the certificate's Secret and the status),
with a plain client (bench.floor) and the operator stopped: the operator cannot do less than
that, so the ratio to it is the operator's own cost (the issue's floor leaves those writes
out, and on a machine where they take longer than Vault's part its 1.3x cannot be met).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import manifests as m
from bench.env import Env, gather_limited
from bench.floor import Floor, credential_status
from bench.objects import apply_all, purge_namespace, wait_ready
from bench.result import Check, Result, ratio_check, stats
from nhi import API_VERSION, crypto
from nhi.builders.rbac import desired_access
from nhi.builders.secrets import build_credential_secret
from nhi.models.identity import MachineIdentity
from nhi.models.issued import Issued
from nhi.testenv.openbao import (
    KV_MOUNT,
    LOGIN_SERVICE_ACCOUNT,
    OPERATOR_ROLE,
    PKI_MOUNT,
    PKI_ROLE,
    OpenBao,
)
from nhi.vault import TokenLogin, VaultClient, VaultPool

ISSUER = "bench-vault"
CONCURRENCY = 32
TRUST_DOMAIN = "bench.example.org"


def vault_issuer(bao: OpenBao) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterIdentityIssuer",
        "metadata": {"name": ISSUER},
        "spec": {
            "trustDomain": TRUST_DOMAIN,
            "vault": {
                "address": bao.address,
                "caBundle": bao.ca_pem,
                "pki": {"mount": PKI_MOUNT, "role": PKI_ROLE},
                "auth": {
                    "kubernetes": {
                        "role": OPERATOR_ROLE,
                        "serviceAccountName": LOGIN_SERVICE_ACCOUNT,
                    }
                },
            },
        },
    }


def identity(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": "team-bench",
            "vault": {"issuerRef": {"kind": "ClusterIdentityIssuer", "name": ISSUER}},
            "credentials": [
                {
                    "name": "mtls",
                    "type": "X509",
                    "issuerRef": {"kind": "ClusterIdentityIssuer", "name": ISSUER},
                    "ttl": "24h",
                    "keyAlgorithm": "ECDSA-P256",
                }
            ],
        },
    }


async def _issuer_ready(env: Env, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        obj = await env.api.get("ClusterIdentityIssuer", None, ISSUER)
        if obj and m.is_ready(obj):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the Vault issuer never became Ready\n{env.operator_log()}")


async def vault_part(client: VaultClient, ns: str, name: str) -> tuple[str, dict[str, str]]:
    """What Vault sees of one identity: a key and a CSR made here, ``pki/sign``, a KV write
    with its metadata. Returns the serial and the Secret's data."""
    key = await asyncio.to_thread(crypto.generate_key, "ECDSA-P256")
    spiffe = crypto.spiffe_id(TRUST_DOMAIN, ns, name)
    csr = crypto.build_csr(key, spiffe_id=spiffe, dns_names=[])
    signed = await client.sign(
        PKI_MOUNT, PKI_ROLE, csr.decode(), uri_sans=[spiffe], dns_names=[], ttl_seconds=86400
    )
    data = {
        "tls.crt": signed.certificate,
        "tls.key": crypto.private_key_pem(key).decode(),
        "ca.crt": "\n".join(signed.chain),
    }
    metadata = {"nhi.dev/identity": f"{ns}/{name}", "nhi.dev/serial": signed.serial}
    await client.kv_write(KV_MOUNT, f"nhi/{ns}/{name}/mtls", data, metadata)
    return signed.serial, data


async def timed_with_vault(
    bao: OpenBao, n: int, one: Callable[[VaultClient, int], Awaitable[Any]]
) -> float:
    """Seconds to run ``one(client, i)`` for N identities with CONCURRENCY at a time, on a
    Vault client of the floor's own (a token, a pool of CONCURRENCY threads)."""
    pool = VaultPool(CONCURRENCY)
    client = VaultClient(bao.address, TokenLogin(bao.operator_token()), pool, ca_pem=bao.ca_pem)
    t0 = time.monotonic()
    try:
        await gather_limited(list(range(n)), lambda i: one(client, i), CONCURRENCY)
    finally:
        client.close()
        pool.close()
    return time.monotonic() - t0


async def floor_run(bao: OpenBao, run: int, n: int) -> dict[str, Any]:
    """What Vault sees of N identities, with plain hvac and the same concurrency."""
    ns = f"b8-floor-{run}"
    before = bao.request_count()
    seconds = await timed_with_vault(
        bao, n, lambda client, i: vault_part(client, ns, f"id-{i:05d}")
    )
    requests = bao.request_count() - before - 1  # less the metrics read itself
    return {"seconds": round(seconds, 3), "vault_requests": requests}


async def full_floor_run(env: Env, bao: OpenBao, run: int, n: int) -> dict[str, Any]:
    """The Vault floor plus the operator's Kubernetes writes, with a plain client."""
    await env.stop_operator()
    floor = Floor(env.floor_api)
    ns = f"b8-floor-k8s-{run}"
    await env.ensure_namespace(ns, {"nhi.dev/bench-scenario": "8"})

    async def one(client: VaultClient, i: int) -> None:
        body = await floor.api.apply(identity(ns, f"id-{i:05d}"))
        mi = MachineIdentity.from_body(body)
        for obj in desired_access(mi):
            await floor.api.apply(obj)
        cred = mi.spec.credentials[0]
        serial, data = await vault_part(client, ns, mi.name)
        t = dt.datetime.now(dt.UTC)
        issued = Issued(t, t + dt.timedelta(days=1), t, t, 0, "", serial=serial)
        encoded = {k: v.encode() for k, v in data.items()}
        await floor.api.apply(build_credential_secret(mi, cred, encoded, issued.annotations()))
        await floor.write_status(mi, [credential_status(cred, issued)])

    seconds = await timed_with_vault(bao, n, one)
    await purge_namespace(env, ns)
    return {"seconds": round(seconds, 3)}


async def operator_run(env: Env, bao: OpenBao, run: int, n: int) -> dict[str, Any]:
    ns = f"b8-op-{run}"
    await env.ensure_namespace(ns, {"nhi.dev/bench-scenario": "8"})
    await env.ensure_operator()
    await env.wait_quiet(quiet=3.0, limit=600)
    items = [identity(ns, f"id-{i:05d}") for i in range(n)]
    before = bao.request_count()
    t0 = time.monotonic()
    applying = asyncio.create_task(apply_all(env, items, CONCURRENCY))
    t_ready = await wait_ready(env, ns, n, limit=120 + n * 1.0)
    await applying
    if t_ready is None:
        raise RuntimeError(f"{ns}: not all {n} identities became Ready\n{env.operator_log()}")
    requests = bao.request_count() - before - 1
    gone = await env.delete_namespace(ns, limit=600)
    return {
        "namespace": ns,
        "seconds": round(t_ready - t0, 3),
        "vault_requests": requests,
        "namespace_delete_seconds": round(gone, 1),
    }


async def run(env: Env, n: int, runs: int, profile: bool = False) -> Result:
    bao = env.control_plane.start_openbao(m.OPERATOR_NAMESPACE)
    await env.ensure_operator()
    await env.api.apply(vault_issuer(bao))
    await _issuer_ready(env)
    floors = [await floor_run(bao, r, n) for r in range(runs)]
    full = [await full_floor_run(env, bao, r, n) for r in range(runs)]
    if profile:
        await env.start_operator(profile="s8-operator")
    ops = [await operator_run(env, bao, r, n) for r in range(runs)]
    if profile:
        await env.stop_operator()  # pyinstrument writes its report when the process exits
    res = Result("8", f"{n} identities with a Vault-signed certificate kept in KV")
    res.details.update(
        n=n, concurrency=CONCURRENCY, operator_runs=ops, floor_runs=floors, full_floor_runs=full
    )
    res.notes.append(
        "OpenBao dev server (in memory, TLS) beside the control plane; Kubernetes auth for the "
        "operator, a token for the floor. The floor is what Vault sees of one identity (key "
        "and CSR, pki/sign, a KV write and its metadata) with plain hvac; the operator also "
        "creates each identity's ServiceAccount and Secret in Kubernetes."
    )
    res.checks.append(
        ratio_check(
            "time until all Ready",
            "s",
            [r["seconds"] for r in ops],
            [r["seconds"] for r in floors],
            1.3,
        )
    )
    full_check = ratio_check(
        "time until all Ready, against Vault and the same Kubernetes writes",
        "s",
        [r["seconds"] for r in ops],
        [r["seconds"] for r in full],
        1.3,
    )
    full_check.target = "informational (the operator's own cost)"
    full_check.ok = None
    res.checks.append(full_check)
    op_req = [r["vault_requests"] / n for r in ops]
    fl_req = [r["vault_requests"] / n for r in floors]
    fmed = stats(fl_req)["median"]
    res.checks.append(
        Check(
            name="Vault requests per identity (OpenBao's metrics)",
            unit="requests",
            values=op_req,
            floor_values=fl_req,
            ratio=round(stats(op_req)["median"] / fmed, 3) if fmed else None,
            target="informational",
        )
    )
    await env.api.delete("ClusterIdentityIssuer", None, ISSUER)
    return res
