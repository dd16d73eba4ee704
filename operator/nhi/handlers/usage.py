"""The usage endpoint: kube-apiserver's audit webhook backend posts ``audit.k8s.io/v1``
EventList batches here (``--usage-port``; off by default). docs/usage.md sets it up.

Every request is authenticated before its body is read: a client certificate signed by
``--usage-client-ca-file`` (optionally with one of ``--usage-client-names`` as its common
name), or ``Authorization: Bearer`` with the token kept in the Secret
``--usage-token-secret``. Anything else is refused with 401. A body over ``--usage-max-body``
gets 413, one that is not an EventList gets 400 naming the first bad field, and nothing of
it is counted. Every answer is counted in ``nhi_usage_batches_total{result}``. Bodies are
never logged: a log line names the result and the peer, nothing of the events.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
import time
from typing import Any

import aiohttp.web

from nhi import metrics_usage as metrics
from nhi.handlers import runtime
from nhi.models.duration import parse_duration
from nhi.models.usage import AuditError, parse_batch
from nhi.reconcilers.usage import UsageStore
from nhi.reconcilers.usage_log import AuditLogTail
from nhi.settings import Settings
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.handlers.usage")

PATH = "/audit"
#: How long the bearer token read from its Secret is trusted before it is read again.
TOKEN_TTL = 30.0


def tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.usage_tls_cert_file, settings.usage_tls_key_file)
    if settings.usage_client_ca_file:
        context.load_verify_locations(settings.usage_client_ca_file)
        # Optional: a client with a bearer token and no certificate is still let through
        # the handshake; the handler refuses it unless the token matches.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _common_name(peercert: Any) -> str:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class UsageEndpoint:
    """The aiohttp application and its authentication; the counting is the store's."""

    def __init__(self, settings: Settings, store: UsageStore) -> None:
        self.settings = settings
        self.store = store
        self.names = {n.strip() for n in settings.usage_client_names.split(",") if n.strip()}
        self._token: tuple[str, float] | None = None
        self.runner: aiohttp.web.AppRunner | None = None

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application(client_max_size=self.settings.usage_max_body)
        app.add_routes([aiohttp.web.post(PATH, self.handle)])
        return app

    async def start(self) -> None:
        self.runner = aiohttp.web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self.runner.setup()
        s = self.settings
        site = aiohttp.web.TCPSite(
            self.runner, s.usage_address, s.usage_port, ssl_context=tls_context(s)
        )
        await site.start()
        log.info(
            "started the usage endpoint", extra={"address": f"{s.usage_address}:{s.usage_port}"}
        )

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ------------------------------------------------------------------ authentication

    async def token(self) -> str:
        """The accepted bearer token ('' when none is configured or its Secret is missing)."""
        name = self.settings.usage_token_secret
        if not name:
            return ""
        now = time.monotonic()
        if self._token is not None and now - self._token[1] < TOKEN_TTL:
            return self._token[0]
        import base64

        secret = await self.store.api.get("Secret", self.settings.operator_namespace, name)
        raw = ((secret or {}).get("data") or {}).get("token") or ""
        try:
            value = base64.b64decode(raw).decode().strip()
        except ValueError:
            value = ""
        self._token = (value, now)
        return value

    async def authenticated(self, request: aiohttp.web.Request) -> bool:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        if peercert:  # only present when it verified against the client CA
            return not self.names or _common_name(peercert) in self.names
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        expected = await self.token()
        return bool(expected) and hmac.compare_digest(presented.strip(), expected)

    # ------------------------------------------------------------------ the request

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if not await self.authenticated(request):
            return _refuse(
                "unauthenticated", 401, "a client certificate or bearer token is required"
            )
        if request.content_type != "application/json":
            return _refuse("unsupported_media_type", 415, "expected application/json")
        limit = self.settings.usage_max_body
        if request.content_length is not None and request.content_length > limit:
            return _refuse("too_large", 413, f"the body is larger than {limit} bytes")
        try:
            raw = await request.read()
        except aiohttp.web.HTTPRequestEntityTooLarge:
            return _refuse("too_large", 413, f"the body is larger than {limit} bytes")
        try:
            batch = parse_batch(json.loads(raw))
        except (ValueError, RecursionError) as err:  # AuditError is a ValueError
            reason = str(err) if isinstance(err, AuditError) else "the body is not valid JSON"
            return _refuse("malformed", 400, reason)
        if not self.store.is_active():
            # The API server retries the batch; through the Service it reaches the active one.
            return _refuse("standby", 503, "this replica is a standby: retry")
        counted, replayed = self.store.ingest(batch.observations, batch.mints)
        metrics.usage_batches.labels("accepted").inc()
        return aiohttp.web.json_response({"counted": counted, "replayed": replayed})


def _refuse(result: str, status: int, message: str) -> aiohttp.web.Response:
    metrics.usage_batches.labels(result).inc()
    log.info("refused an audit batch", extra={"result": result, "status": status})
    return aiohttp.web.json_response(
        {"kind": "Status", "status": "Failure", "code": status, "message": message},
        status=status,
    )


# ------------------------------------------------------------------------------ wiring

_endpoint: UsageEndpoint | None = None
_tail: AuditLogTail | None = None


async def start() -> None:
    """Load the persisted usage, start the flush loop and the endpoint (if enabled)."""
    global _endpoint
    settings = current_settings()
    if not settings.usage_enabled or _endpoint is not None:
        return
    rt = runtime.get()
    store = UsageStore(
        rt.api,
        settings.operator_namespace,
        rt.clock.now,
        unused_after=parse_duration(settings.usage_unused_after),
        flush_interval=settings.usage_flush_interval,
        learning_window=parse_duration(settings.usage_learning_window),
        events=rt.events,
        namespaces=settings.namespaces,
    )
    _endpoint = UsageEndpoint(settings, store)
    if rt.discovery is not None:
        # The inventory's unused ServiceAccounts count from their last request too.
        rt.discovery.usage = store.last_seen
    if rt.grants is not None:
        # What each AccessGrant was used for comes from the same books.
        rt.grants.reconciler.usage = lambda namespace, name: store.books.get((namespace, name))
    # Loads the persisted usage first (events counted meanwhile are merged: UsageStore.load);
    # with peering, only the active replica counts and writes.
    store.start(rt.view, active=rt.gate.active)
    if settings.usage_audit_log:
        global _tail
        _tail = AuditLogTail(settings.usage_audit_log, store)
        _tail.start()
    if settings.usage_port:
        await _endpoint.start()


async def stop() -> None:
    global _endpoint, _tail
    if _tail is not None:
        await _tail.stop()
        _tail = None
    if _endpoint is not None:
        await _endpoint.stop()
        await _endpoint.store.stop()
        _endpoint = None
