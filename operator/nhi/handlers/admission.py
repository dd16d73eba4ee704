"""IdentityPolicy enforcement: the validating admission webhook and the policies' status.

- ``@kopf.on.validate`` for MachineIdentity CREATE and UPDATE, registered only when the
  webhook is enabled (``--webhook-port``): kopf refuses to start with admission handlers and
  no server. kopf routes each request to the handler; :class:`AdmissionServer` is the server.
- :class:`AdmissionServer` serves HTTPS with the certificate kept in a Secret
  (:mod:`nhi.reconcilers.webhook`), renews it in place without closing the listening socket,
  and writes the ValidatingWebhookConfiguration itself (kopf's managed mode would set
  ``timeoutSeconds: 30``, ``failurePolicy: Fail`` and no namespaceSelector).

The IdentityPolicies' status is a controller of its own: :mod:`nhi.handlers.policy_status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import kopf

from nhi import GROUP, VERSION
from nhi.builders.webhook import build_configuration, client_config
from nhi.crypto.serving import ServingMaterial
from nhi.handlers import runtime
from nhi.models.duration import parse_duration
from nhi.policies.webhook import renewal_time, serving_hosts
from nhi.reconcilers.policy import AdmissionResult, AdmissionReviewer, needs_review
from nhi.reconcilers.webhook import WebhookCertificates
from nhi.settings import Settings
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.handlers.admission")


#: The kopf handler id, and the URL path the API server posts to.
WEBHOOK_ID = "validate-machineidentity"
GRANT_WEBHOOK_ID = "validate-accessgrant"
#: Longest pause between two looks at the certificate Secret (another replica may renew it).
MAX_CHECK_INTERVAL = 60.0
RETRY_INTERVAL = 5.0


# ------------------------------------------------------------------------------ validation


_reviewer: AdmissionReviewer | None = None


def reviewer() -> AdmissionReviewer:
    global _reviewer
    rt = runtime.get()
    if _reviewer is None or _reviewer.api is not rt.api:
        _reviewer = AdmissionReviewer(rt.api)
    return _reviewer


async def validate_identity(
    *,
    userinfo: kopf.UserInfo,
    warnings: list[str],
    namespace: str | None,
    name: str,
    dryrun: bool,
    **kwargs: Any,
) -> None:
    """Refuse a MachineIdentity that breaks a Deny policy or grants what its writer lacks.

    Fails closed: an error while reviewing (an API error reading the policies, a bug, an input
    nothing foresaw) refuses the request with a message saying so, rather than admitting
    something unchecked; writing it again once the cause is gone succeeds. (When nobody
    answers at all, the configuration's failurePolicy Ignore applies: see docs/policy.md.)
    """
    try:
        result = await _review(userinfo, namespace, kwargs)
    except Exception as err:
        log.error(
            "could not review a MachineIdentity; refused it",
            extra={"namespace": namespace, "identity": name, "error": repr(err)},
        )
        raise kopf.AdmissionError(
            f"nhi-operator could not check this MachineIdentity ({type(err).__name__}: "
            f"{str(err)[:500]}), so it is refused; try again, and if this persists see the "
            "operator's log",
            code=500,
        ) from err
    if result is None:
        return
    operation: str | None = kwargs.get("operation")
    warnings.extend(result.warnings)
    outcome = "denied" if result.denied else ("warned" if result.warnings else "admitted")
    if result.denied or result.warnings:
        log.info(
            "%s a MachineIdentity",
            outcome,
            extra={
                "namespace": namespace,
                "identity": name,
                "user": userinfo.get("username"),
                "operation": operation,
                "dryRun": dryrun,
                "reasons": result.denied or result.warnings,
            },
        )
    if result.denied:
        raise kopf.AdmissionError(result.message, code=403)


async def _review(
    userinfo: kopf.UserInfo, namespace: str | None, kwargs: Mapping[str, Any]
) -> AdmissionResult | None:
    """The review of one request; None when it needs none (see needs_review)."""
    old: Mapping[str, Any] | None = kwargs.get("old")
    new: Mapping[str, Any] | None = kwargs.get("new")
    operation: str | None = kwargs.get("operation")
    new_body: Mapping[str, Any] | None = dict(new) if new is not None else None
    old_body: Mapping[str, Any] | None = dict(old) if old is not None else None
    if not needs_review(operation or "", new_body, old_body):
        return None
    rv = reviewer()
    # Live reads: see AdmissionReviewer.policies.
    policies, labels = await asyncio.gather(rv.policies(), rv.namespace_labels(namespace or ""))
    return await rv.review(
        operation=operation or "",
        new=new_body,
        old=old_body,
        userinfo=dict(userinfo),
        policies=policies,
        namespace_labels=labels,
    )


async def validate_grant(
    *,
    userinfo: kopf.UserInfo,
    namespace: str | None,
    name: str,
    **kwargs: Any,
) -> None:
    """Refuse an AccessGrant for an identity that does not exist, beyond what the policies
    allow, or giving what its requester lacks (fails closed, like validate_identity)."""
    new: Mapping[str, Any] | None = kwargs.get("new")
    old: Mapping[str, Any] | None = kwargs.get("old")
    try:
        rv = reviewer()
        policies, labels = await asyncio.gather(rv.policies(), rv.namespace_labels(namespace or ""))
        result = await rv.review_grant(
            operation=str(kwargs.get("operation") or ""),
            new=dict(new) if new is not None else None,
            old=dict(old) if old is not None else None,
            userinfo=dict(userinfo),
            policies=policies,
            namespace_labels=labels,
        )
    except Exception as err:
        log.error(
            "could not review an AccessGrant; refused it",
            extra={"namespace": namespace, "grant": name, "error": repr(err)},
        )
        raise kopf.AdmissionError(
            f"nhi-operator could not check this AccessGrant ({type(err).__name__}), so it is "
            "refused; try again",
            code=500,
        ) from err
    if result.denied:
        log.info(
            "denied an AccessGrant",
            extra={"namespace": namespace, "grant": name, "user": userinfo.get("username"),
                   "reasons": result.denied},
        )  # fmt: skip
        raise kopf.AdmissionError(result.message, code=403)


class _DenialIsNotAnError(logging.Filter):
    """kopf logs every refused admission as a handler failure at ERROR; a denial is the
    webhook doing its job (logged above at INFO with the reasons), so drop kopf's line."""

    PREFIXES = tuple(f"Webhook {i!r} failed permanently" for i in (WEBHOOK_ID, GRANT_WEBHOOK_ID))

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def register() -> None:
    logging.getLogger("kopf.objects").addFilter(_DenialIsNotAnError())
    handlers: list[tuple[str, str, Any]] = [("machineidentities", WEBHOOK_ID, validate_identity)]
    if current_settings().access_grants:
        handlers.append(("accessgrants", GRANT_WEBHOOK_ID, validate_grant))
    for plural, handler_id, fn in handlers:
        kopf.on.validate(
            GROUP,
            VERSION,
            plural,
            id=handler_id,
            operations=["CREATE", "UPDATE"],
            ignore_failures=True,
            side_effects=False,
        )(fn)


if current_settings().webhook_enabled:
    register()


# ------------------------------------------------------------------------------ server


def _load(context: ssl.SSLContext, material: ServingMaterial) -> None:
    """Load the certificate and key into a live context: new handshakes use them at once."""
    from nhi.crypto import cert_pem, private_key_pem

    with tempfile.TemporaryDirectory(prefix="nhi-webhook-") as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(cert_pem(material.cert))
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem(material.key))
        context.load_cert_chain(cert, key)


class AdmissionServer:
    """kopf's webhook-server protocol: serve, then yield the client config.

    Unlike ``kopf.WebhookServer``, a renewed certificate is loaded into the running TLS
    context instead of restarting the HTTP site, so no request is ever refused during a
    renewal; the caBundle stays the same because the CA does.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cert_ttl = parse_duration(settings.webhook_cert_ttl)
        self.address = settings.webhook_address or (
            "0.0.0.0" if settings.webhook_service else settings.webhook_host  # noqa: S104
        )
        self.hosts = serving_hosts(
            "" if settings.webhook_service else settings.webhook_host,
            settings.webhook_service,
            settings.operator_namespace,
        )

    def certificates(self) -> WebhookCertificates:
        rt = runtime.get()
        return WebhookCertificates(
            rt.api,
            self.settings.operator_namespace,
            self.settings.webhook_secret,
            self.hosts,
            rt.clock.now,
            cert_ttl=self.cert_ttl,
        )

    def configuration(self, material: ServingMaterial) -> dict[str, Any]:
        s = self.settings

        def reach(path: str) -> dict[str, Any]:
            return client_config(
                material,
                runtime.get().clock.now(),
                path,
                host=s.webhook_host,
                port=s.webhook_port,
                service=s.webhook_service,
                service_namespace=s.operator_namespace,
                service_port=s.webhook_service_port,
            )

        grants = reach(GRANT_WEBHOOK_ID) if s.access_grants else None
        return build_configuration(
            s.webhook_configuration, reach(WEBHOOK_ID), s.namespaces, s.operator_namespace, grants
        )

    async def _material(self, certs: WebhookCertificates) -> ServingMaterial:
        while True:
            try:
                return await certs.ensure()
            except Exception as err:
                log.error(
                    "could not read or write the webhook certificate; retrying",
                    extra={
                        "secret_name": f"{certs.namespace}/{certs.secret_name}",
                        "error": str(err),
                    },
                )
                await asyncio.sleep(RETRY_INTERVAL)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        certs = self.certificates()
        material = await self._material(certs)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _load(context, material)

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await _serve(fn, request)

        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner, self.address, self.settings.webhook_port, ssl_context=context
            )
            await site.start()
            log.info(
                "started the admission webhook",
                extra={
                    "address": f"{self.address}:{self.settings.webhook_port}",
                    "hosts": self.hosts,
                    "configuration": self.settings.webhook_configuration,
                },
            )
            configuration = self.configuration(material)
            await self._publish(certs, configuration)
            yield cast(kopf.WebhookClientConfig, configuration["webhooks"][0]["clientConfig"])
            while True:
                due = (renewal_time(material.cert) - certs.clock()).total_seconds()
                await asyncio.sleep(min(max(due, 1.0), MAX_CHECK_INTERVAL))
                fresh = await self._material(certs)
                if fresh.serial != material.serial:
                    _load(context, fresh)
                    log.info(
                        "loaded the renewed webhook certificate",
                        extra={
                            "serial": f"{fresh.serial:x}",
                            "notAfter": fresh.cert.not_valid_after_utc.isoformat(),
                        },
                    )
                material = fresh
                # Re-applied every time: restores a configuration deleted or edited by hand
                # and carries a new CA into the caBundle (server-side apply: a no-op if equal).
                configuration = self.configuration(material)
                await self._publish(certs, configuration)
        finally:
            await runner.cleanup()

    async def _publish(self, certs: WebhookCertificates, configuration: dict[str, Any]) -> None:
        try:
            await certs.publish(configuration)
        except Exception as err:
            log.error(
                "could not write the ValidatingWebhookConfiguration",
                extra={"configuration": configuration["metadata"]["name"], "error": str(err)},
            )


async def _serve(fn: kopf.WebhookFn, request: aiohttp.web.Request) -> aiohttp.web.Response:
    """One AdmissionReview. A request kopf fails on is refused (fails closed); only a body
    that is not an AdmissionReview at all (no request uid to answer) gets an HTTP error."""
    try:
        data = json.loads(await request.text())
    except json.JSONDecodeError as err:
        raise aiohttp.web.HTTPBadRequest(reason=str(err) or None) from None
    try:
        response = await fn(data, webhook=request.match_info.get("id"), headers={}, sslpeer={})
    except Exception as err:
        log.error("could not answer an admission request; refused it", extra={"error": repr(err)})
        uid = (data.get("request") or {}).get("uid") if isinstance(data, dict) else None
        if not isinstance(uid, str) or not uid:
            raise aiohttp.web.HTTPBadRequest(reason=type(err).__name__) from None
        return aiohttp.web.json_response(
            {
                "apiVersion": data.get("apiVersion") or "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": uid,
                    "allowed": False,
                    "status": {
                        "code": 500,
                        "message": f"nhi-operator could not check this request "
                        f"({type(err).__name__}), so it is refused; try again",
                    },
                },
            }
        )
    return aiohttp.web.json_response(response)


@kopf.on.startup(id="nhi_admission_startup")
async def configure_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = current_settings()
    if ours.webhook_enabled:
        settings.admission.server = AdmissionServer(ours)
        settings.admission.managed = None  # written by AdmissionServer, see above
