"""When the admission webhook's TLS material is renewed: pure decisions that take ``now``.

The serving certificate is renewed when two thirds of its lifetime have passed and is signed
by the same CA, so the caBundle the API server trusts does not change. The CA is replaced when
a third of its (long) lifetime is left: the new CA first joins the caBundle next to the old
one, and only the next serving certificate is signed by it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from nhi.crypto import CLOCK_SKEW, Certificate, build_self_signed_ca, generate_key
from nhi.crypto.serving import (
    ServingMaterial,
    covers_hosts,
    issue_serving_cert,
    signed_by,
    validity,
)

DEFAULT_CA_TTL = dt.timedelta(days=3650)
DEFAULT_CERT_TTL = dt.timedelta(days=30)
RENEW_AFTER_FRACTION = 2 / 3  # of a certificate's lifetime


def renewal_time(cert: Certificate) -> dt.datetime:
    """When two thirds of the certificate's lifetime (after the back-dating) have passed."""
    issued, not_after = validity(cert)
    not_before = issued + CLOCK_SKEW
    lifetime = not_after - not_before
    if lifetime <= dt.timedelta(0):
        return issued
    return not_before + lifetime * RENEW_AFTER_FRACTION


def ca_due(ca: Certificate, now: dt.datetime) -> bool:
    """A third of the CA's lifetime or less is left."""
    not_before, not_after = validity(ca)
    return now >= not_after - (not_after - not_before) / 3


def serving_hosts(
    host: str, service: str = "", namespace: str = "", extra: Sequence[str] = ()
) -> list[str]:
    """The names the API server may use to reach the webhook, for the certificate's SANs."""
    out: list[str] = []
    names = [host] if host else []
    if service:
        names += [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local",
        ]
    for name in [*names, *extra]:
        if name and name not in out:
            out.append(name)
    return out


def plan_material(
    current: ServingMaterial | None,
    hosts: Sequence[str],
    now: dt.datetime,
    cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
    ca_ttl: dt.timedelta = DEFAULT_CA_TTL,
) -> tuple[ServingMaterial, str]:
    """The material to serve with, and why it changed ("" when ``current`` is kept).

    A new CA is only ever *added* to the caBundle here; the serving certificate keeps the old
    CA's signature until its own renewal, by which time the API server trusts both.
    """
    if current is None:
        ca_key = generate_key()
        ca = build_self_signed_ca("nhi-operator webhook CA", ca_key, now, ca_ttl)
        key = generate_key()
        cert = issue_serving_cert(ca, ca_key, key, hosts, now, cert_ttl)
        return ServingMaterial(ca, ca_key, cert, key), "created"
    material = current
    reason = ""
    prev = material.previous_ca
    if prev is not None and prev.not_valid_after_utc <= now:
        material = ServingMaterial(material.ca_cert, material.ca_key, material.cert, material.key)
        reason = "dropped the expired previous CA"
    rotated = False
    if ca_due(material.ca_cert, now) or material.ca_cert.not_valid_after_utc <= now:
        ca_key = generate_key()
        ca = build_self_signed_ca("nhi-operator webhook CA", ca_key, now, ca_ttl)
        material = ServingMaterial(ca, ca_key, material.cert, material.key, material.ca_cert)
        reason = "rotated the CA"
        rotated = True
    trusted = signed_by(material.cert, material.ca_cert) or (
        material.previous_ca is not None and signed_by(material.cert, material.previous_ca)
    )
    leaf_due = (
        not trusted or now >= renewal_time(material.cert) or not covers_hosts(material.cert, hosts)
    )
    if (
        leaf_due
        and rotated
        and material.cert.not_valid_after_utc > now
        and covers_hosts(material.cert, hosts)
    ):
        # The new CA must reach the caBundle before a certificate signed by it is served:
        # keep the (still valid) certificate this round, renew it on the next.
        leaf_due = False
    if leaf_due:
        key = generate_key()
        cert = issue_serving_cert(material.ca_cert, material.ca_key, key, hosts, now, cert_ttl)
        material = ServingMaterial(
            material.ca_cert, material.ca_key, cert, key, material.previous_ca
        )
        reason = reason or "renewed the serving certificate"
    return material, reason
