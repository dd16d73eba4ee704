"""Scenario 6: cryptography per issuance, for each key algorithm.

What the operator runs for each X509 issuance: nhi.crypto ``generate_key`` +
``PreparedIssuer.issue_leaf`` (an X.509-SVID signed by an ECDSA-P256 CA, the bench issuer's
algorithm), with the CA checked once beforehand, as the operator does when it loads an
issuer's signer; against ``cryptography`` used directly: the same key generation and a
CertificateBuilder with the same extensions, signed by the same CA. The two alternate
iteration by iteration so that drift in the machine's load hits both alike, and each is timed
with the CPU clock of the bench thread (``time.thread_time``): on a shared machine, time spent
waiting for a core would otherwise land on whichever side happened to be running.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench.result import Result, ratio_check
from nhi import crypto
from nhi.crypto.keys import KeyAlgorithm

SPIFFE = "spiffe://bench.example.org/ns/bench/sa/app"
TTL = dt.timedelta(hours=24)

#: Iterations per run (full, small). RSA key generation (a random prime search) dominates RSA
#: issuance and is slow: fewer iterations, whose key generations both sides share (see run).
ITERATIONS = {
    KeyAlgorithm.ECDSA_P256: (200, 20),
    KeyAlgorithm.ECDSA_P384: (150, 10),
    KeyAlgorithm.ED25519: (200, 20),
    KeyAlgorithm.RSA_2048: (40, 2),
    KeyAlgorithm.RSA_3072: (16, 1),
    KeyAlgorithm.RSA_4096: (8, 1),
}


def _raw_key(alg: KeyAlgorithm) -> crypto.PrivateKey:
    if alg is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlgorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if alg is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(65537, int(alg.value.removeprefix("RSA-")))


def make_floor(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> Callable[[crypto.PrivateKey], x509.Certificate]:
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

    def issue(key: crypto.PrivateKey) -> x509.Certificate:
        pub = key.public_key()
        now = dt.datetime.now(dt.UTC)
        ku = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=isinstance(pub, rsa.RSAPublicKey),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + TTL)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE)]), True
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(ku, True)
            .add_extension(eku, False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), False)
            .add_extension(aki, False)
            .sign(ca_key, hashes.SHA256())
        )

    return issue


def run(runs: int, small: bool) -> Result:
    res = Result("6", "Cryptography per issuance, by key algorithm")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = crypto.build_self_signed_ca("bench CA", ca_key, now, dt.timedelta(days=365))
    floor = make_floor(ca_cert, ca_key)
    # Once per CA, as when the operator loads an issuer: not part of an issuance.
    ca = crypto.PreparedIssuer(ca_cert, ca_key, now)

    def nhi_leaf(key: crypto.PrivateKey) -> x509.Certificate:
        return ca.issue_leaf(
            public_key=key.public_key(),
            spiffe_id=SPIFFE,
            dns_names=[],
            now=dt.datetime.now(dt.UTC),
            ttl=TTL,
        )

    def timed(fn: Callable[..., Any], arg: Any) -> tuple[float, Any]:
        t = time.thread_time()
        out = fn(arg)
        return time.thread_time() - t, out

    per_alg = {}
    for alg, (full_n, small_n) in ITERATIONS.items():
        n = small_n if small else full_n
        rsa_key = alg.value.startswith("RSA")
        nhi_runs, floor_runs = [], []
        nhi_leaf(crypto.generate_key(alg))  # warm-up: imports and lazy initialisation
        floor(_raw_key(alg))
        for _ in range(runs):
            keys_nhi, keys_floor, leaves_nhi, leaves_floor = [], [], [], []
            for _ in range(n):
                t, key = timed(crypto.generate_key, alg)
                keys_nhi.append(t)
                leaves_nhi.append(timed(nhi_leaf, key)[0])
                t, key = timed(_raw_key, alg)
                keys_floor.append(t)
                leaves_floor.append(timed(floor, key)[0])
            if rsa_key:
                # The same call on both sides (nhi.crypto.generate_key calls
                # rsa.generate_private_key with the same arguments), whose prime search
                # varies several-fold from key to key: both sides get the median of all of
                # this run's key generations, and their own leaf issuance.
                both = statistics.median(keys_nhi + keys_floor)
                t_nhi = both + statistics.median(leaves_nhi)
                t_floor = both + statistics.median(leaves_floor)
            else:
                t_nhi = statistics.median(k + v for k, v in zip(keys_nhi, leaves_nhi, strict=True))
                t_floor = statistics.median(
                    k + v for k, v in zip(keys_floor, leaves_floor, strict=True)
                )
            nhi_runs.append(round(t_nhi * 1000, 4))
            floor_runs.append(round(t_floor * 1000, 4))
        per_alg[alg.value] = {
            "iterations": n,
            "nhi_ms": nhi_runs,
            "floor_ms": floor_runs,
            "key_generation_median_ms": {
                "nhi": round(statistics.median(keys_nhi) * 1000, 4),
                "cryptography": round(statistics.median(keys_floor) * 1000, 4),
            },
        }
        res.checks.append(ratio_check(f"{alg.value}: key + leaf", "ms", nhi_runs, floor_runs, 1.2))
    res.details["algorithms"] = per_alg
    res.notes.append(
        "Each run's value is the median iteration (key generation + leaf issuance, each side "
        "with its own key). RSA key generation is the same call on both sides and its prime "
        "search varies several-fold from key to key, so for RSA both sides are given the "
        "median of all the run's key generations plus their own median leaf issuance (each "
        "side's own key generation median is in the details). EC and Ed25519 ratios show "
        "nhi's own overhead on top of the same cryptography: the checks of each issuance (the "
        "leaf's inputs, the CA's validity at that time). The CA itself (CA:TRUE, keyCertSign, "
        "key matches certificate) is checked once per CA, when the operator loads an issuer's "
        "signer, as here before the timed loop."
    )
    return res
