"""The admission webhook's TLS material and configuration: issuance (nhi.crypto.serving),
renewal decisions (nhi.policies.webhook) and the ValidatingWebhookConfiguration
(nhi.builders.webhook)."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509

from nhi.builders import webhook as wh_config
from nhi.crypto import serving
from nhi.policies import webhook as wh
from tests.unit.factories import T0

pytestmark = pytest.mark.unit


HOSTS = ["127.0.0.1", "nhi-operator.nhi-system.svc"]


def _sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v.value) for v in san]


def test_serving_material_is_created_with_ip_and_dns_sans() -> None:
    material, reason = wh.plan_material(None, HOSTS, T0, dt.timedelta(hours=30))
    assert reason == "created"
    assert _sans(material.cert) == HOSTS
    assert material.cert.issuer == material.ca_cert.subject
    assert serving.covers_hosts(material.cert, HOSTS)
    # Round trip through the Secret.
    again = serving.ServingMaterial.from_secret({"data": material.secret_data()})
    assert again is not None and again.serial == material.serial
    assert serving.ServingMaterial.from_secret({"data": {"tls.crt": "bad"}}) is None


def test_serving_cert_is_renewed_after_two_thirds_with_the_same_ca() -> None:
    ttl = dt.timedelta(hours=30)
    material, _ = wh.plan_material(None, HOSTS, T0, ttl)
    assert wh.renewal_time(material.cert) == T0 + dt.timedelta(hours=20)
    same, reason = wh.plan_material(material, HOSTS, T0 + dt.timedelta(hours=19), ttl)
    assert reason == "" and same is material
    renewed, reason = wh.plan_material(material, HOSTS, T0 + dt.timedelta(hours=20), ttl)
    assert reason == "renewed the serving certificate"
    assert renewed.serial != material.serial
    assert renewed.ca_cert == material.ca_cert  # the caBundle does not change
    bundle = renewed.ca_bundle(T0 + dt.timedelta(hours=20))
    assert bundle == material.ca_bundle(T0)


def test_new_host_reissues_the_serving_cert() -> None:
    material, _ = wh.plan_material(None, ["127.0.0.1"], T0)
    renewed, reason = wh.plan_material(material, HOSTS, T0)
    assert reason and _sans(renewed.cert) == HOSTS and renewed.ca_cert == material.ca_cert


def test_ca_rotation_adds_the_new_ca_before_using_it() -> None:
    ca_ttl = dt.timedelta(days=30)
    ttl = dt.timedelta(days=3)
    material, _ = wh.plan_material(None, HOSTS, T0, ttl, ca_ttl)
    material, _ = wh.plan_material(material, HOSTS, T0 + dt.timedelta(days=19), ttl, ca_ttl)
    when = T0 + dt.timedelta(days=21)  # a third of the CA's lifetime left
    rotated, reason = wh.plan_material(material, HOSTS, when, ttl, ca_ttl)
    assert reason == "rotated the CA"
    assert rotated.previous_ca == material.ca_cert
    # The serving cert is not renewed by the CA change alone (bundle first, signature later)...
    assert rotated.ca_cert != material.ca_cert
    assert rotated.serial == material.serial
    # ...but the caBundle now holds both CAs.
    assert rotated.ca_bundle(when).count(b"BEGIN CERTIFICATE") == 2
    # The next renewal is signed by the new CA; the old CA leaves once expired.
    later = when + dt.timedelta(days=3)
    renewed, _ = wh.plan_material(rotated, HOSTS, later, ttl, ca_ttl)
    assert renewed.cert.issuer == renewed.ca_cert.subject
    assert renewed.ca_cert == rotated.ca_cert
    gone, reason = wh.plan_material(renewed, HOSTS, T0 + dt.timedelta(days=31), ttl, ca_ttl)
    assert gone.previous_ca is None


def test_webhook_configuration_cannot_lock_the_cluster_out() -> None:
    material, _ = wh.plan_material(None, HOSTS, T0)
    cfg = wh_config.client_config(
        material, T0, "validate-machineidentity", host="127.0.0.1", port=9443
    )
    assert cfg["url"] == "https://127.0.0.1:9443/validate-machineidentity"
    assert base64.b64decode(cfg["caBundle"]) == material.ca_bundle(T0)
    vwc = wh_config.build_configuration("nhi", cfg, [], "nhi-system")
    [hook] = vwc["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    assert hook["sideEffects"] == "None"
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "nhi-system"],
            }
        ]
    }


def test_webhook_configuration_in_service_mode_and_for_listed_namespaces() -> None:
    material, _ = wh.plan_material(None, HOSTS, T0)
    cfg = wh_config.client_config(
        material, T0, "validate-machineidentity", service="nhi-operator", service_namespace="nhi"
    )
    assert cfg["service"] == {
        "namespace": "nhi",
        "name": "nhi-operator",
        "port": 443,
        "path": "/validate-machineidentity",
    }
    sel = wh_config.namespace_selector(["team-b", "team-a"], "nhi")
    assert sel["matchExpressions"][1] == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a", "team-b"],
    }
    assert len(wh_config.namespace_selector(["team-*"], "nhi")["matchExpressions"]) == 1
    assert wh.serving_hosts("", "svc", "nhi") == [
        "svc",
        "svc.nhi",
        "svc.nhi.svc",
        "svc.nhi.svc.cluster.local",
    ]


def test_ca_rotation_and_a_due_renewal_together_publish_the_ca_first() -> None:
    ca_ttl = dt.timedelta(days=30)
    ttl = dt.timedelta(days=30)
    material, _ = wh.plan_material(None, HOSTS, T0, ttl, ca_ttl)
    when = T0 + dt.timedelta(days=21)  # the CA and the serving certificate are both due
    rotated, reason = wh.plan_material(material, HOSTS, when, ttl, ca_ttl)
    assert reason == "rotated the CA" and rotated.serial == material.serial
    renewed, reason = wh.plan_material(rotated, HOSTS, when + dt.timedelta(seconds=1), ttl, ca_ttl)
    assert reason == "renewed the serving certificate"
    assert renewed.cert.issuer == rotated.ca_cert.subject and renewed.previous_ca is not None
