"""The only code that talks to the API server.

A small asyncio client on aiohttp: the official ``kubernetes`` package is synchronous, and
running it in kopf's thread pool would cap concurrency at the pool size and block on every
request. Connection settings (kubeconfig, in-cluster, exec plugins) still come from the
``kubernetes`` package's config loader, so everything a user's kubeconfig does works here.

Every write is a server-side apply with one field manager, so one request creates, updates
and corrects drift. Errors become :class:`ApiError` subclasses that carry the API server's
status and reason; request bodies are never put into an error message.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from nhi import FIELD_MANAGER

# kind -> (api prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Event": ("/api/v1", "events", True),
    "Pod": ("/api/v1", "pods", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "CronJob": ("/apis/batch/v1", "cronjobs", True),
    "MachineIdentity": ("/apis/nhi.dev/v1alpha1", "machineidentities", True),
    "IdentityIssuer": ("/apis/nhi.dev/v1alpha1", "identityissuers", True),
    "ClusterIdentityIssuer": ("/apis/nhi.dev/v1alpha1", "clusteridentityissuers", False),
    "IdentityPolicy": ("/apis/nhi.dev/v1alpha1", "identitypolicies", False),
    "AccessGrant": ("/apis/nhi.dev/v1alpha1", "accessgrants", True),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings", True),
    "ClusterKopfPeering": ("/apis/kopf.dev/v1", "clusterkopfpeerings", False),
    "PolicyReport": ("/apis/wgpolicyk8s.io/v1alpha2", "policyreports", True),
    "ClusterPolicyReport": ("/apis/wgpolicyk8s.io/v1alpha2", "clusterpolicyreports", False),
    "Report": ("/apis/openreports.io/v1alpha1", "reports", True),
    "ClusterReport": ("/apis/openreports.io/v1alpha1", "clusterreports", False),
    "TokenReview": ("/apis/authentication.k8s.io/v1", "tokenreviews", False),
    "SubjectAccessReview": ("/apis/authorization.k8s.io/v1", "subjectaccessreviews", False),
}


#: Ask for PartialObjectMetadata: metadata only, whatever the kind.
METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(
        self, status: int, reason: str, message: str, *, kind: str = "", name: str = ""
    ) -> None:
        target = f" {kind}/{name}" if kind else ""
        super().__init__(f"{status} {reason}{target}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Forbidden(ApiError):
    pass


class Invalid(ApiError):
    pass


def _error(status: int, body: Any, kind: str, name: str) -> ApiError:
    reason = message = ""
    if isinstance(body, Mapping):
        reason = str(body.get("reason", ""))
        message = str(body.get("message", ""))
    cls: type[ApiError] = {404: NotFound, 409: Conflict, 403: Forbidden, 422: Invalid}.get(
        status, ApiError
    )
    return cls(status, reason or "Error", message[:1000], kind=kind, name=name)


#: What json.dumps(ensure_ascii=False) leaves unescaped that YAML must not see raw: DEL and
#: every non-ASCII character (YAML 1.1 refuses C1 controls and reads NEL, U+2028 and U+2029
#: as line breaks, which a quoted scalar folds into spaces).
_RAW = re.compile(r"[^\x00-\x7e]")


def _yaml_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def encode_body(body: Any, content_type: str) -> str:
    """A request body: JSON, or, for an apply patch (``application/apply-patch+yaml``), JSON
    that is also YAML with the same meaning.

    json.dumps writes a character outside the Basic Multilingual Plane (an emoji) as a UTF-16
    surrogate pair, ``\\ud83d\\ude00``: valid JSON, but YAML reads each half as a character
    of its own and refuses surrogates, so the API server would refuse every apply of an
    object that holds one. Here every non-ASCII character is written as a YAML escape, ``\\u``
    with 4 hex digits or ``\\U`` with 8: plain ASCII that YAML reads back exactly.
    """
    if not content_type.endswith("+yaml"):
        return json.dumps(body)
    return _RAW.sub(_yaml_escape, json.dumps(body, ensure_ascii=False))


def path_for(
    kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    prefix, plural, namespaced = RESOURCES[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass(frozen=True)
class Connection:
    server: str
    ssl_context: ssl.SSLContext | bool
    headers: Mapping[str, str]


def load_connection(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """Read connection settings the way kubectl does: kubeconfig, else in-cluster."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg
        )
    except (k8s_config.ConfigException, FileNotFoundError, TypeError):
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx: ssl.SSLContext | bool
    if cfg.verify_ssl:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    headers: dict[str, str] = {}
    token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if token:
        prefix = cfg.api_key_prefix.get("authorization", "")
        headers["Authorization"] = f"{prefix} {token}".strip() if prefix else token
        if not headers["Authorization"].lower().startswith("bearer "):
            headers["Authorization"] = f"Bearer {headers['Authorization']}"
    return Connection(server=cfg.host.rstrip("/"), ssl_context=ctx, headers=headers)


class Api:
    """Async access to the API server, one connection pool per process."""

    def __init__(self, connection: Connection, *, limit: int = 64, timeout: float = 30) -> None:
        self.connection = connection
        self._limit = limit
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        #: Watches hold their connection for minutes: they get a pool of their own, so they
        #: never take a connection from the requests.
        self._watch_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.connection.server,
                headers=dict(self.connection.headers),
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context, limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    @property
    def watch_session(self) -> aiohttp.ClientSession:
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = aiohttp.ClientSession(
                base_url=self.connection.server,
                headers=dict(self.connection.headers),
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context, limit=0),
            )
        return self._watch_session

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
        kind: str = "",
        name: str = "",
    ) -> Any:
        url = path + (f"?{urlencode(params)}" if params else "")
        data = encode_body(body, content_type) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept:
            headers["Accept"] = accept
        for attempt in range(5):
            async with self.session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                parsed: Any = json.loads(text) if text and text[0] in "{[" else text
                if resp.status == 429 or (resp.status >= 500 and method == "GET"):
                    # Throttled or a transient server error: back off a little and retry.
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
                    continue
                if resp.status >= 400:
                    raise _error(resp.status, parsed, kind, name)
                return parsed
        raise _error(resp.status, parsed, kind, name)

    # ------------------------------------------------------------------ verbs

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.request(
                "GET", path_for(kind, namespace, name), kind=kind, name=name
            )
            return obj
        except NotFound:
            return None

    async def get_metadata(
        self, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object's metadata only (a Secret's data never leaves the API server)."""
        try:
            obj: dict[str, Any] = await self.request(
                "GET",
                path_for(kind, namespace, name),
                accept=METADATA_ACCEPT,
                kind=kind,
                name=name,
            )
            return obj
        except NotFound:
            return None

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        page_size: int = 500,
    ) -> list[dict[str, Any]]:
        return [
            item
            async for item in self.iterate(
                kind, namespace, label_selector=label_selector, page_size=page_size
            )
        ]

    async def iterate(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        params: dict[str, str] = {"limit": str(page_size)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self.request("GET", path_for(kind, namespace), params=params, kind=kind)
            for item in page.get("items", []):
                item.setdefault("kind", kind)
                yield item
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return
            params["continue"] = cont

    async def stream(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        accept: str | None = None,
        read_timeout: float = 360.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch request, one parsed JSON object per line.

        The connection has no total time limit (the server ends a watch after its
        ``timeoutSeconds``); a silent connection is given up after ``read_timeout``.
        """
        headers = {"Accept": accept} if accept else None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=read_timeout
        )
        url = path + f"?{urlencode(params)}"
        async with self.watch_session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                text = await resp.text()
                parsed: Any = json.loads(text) if text and text[0] == "{" else text
                raise _error(resp.status, parsed, "", "")
            buffer = b""
            async for chunk in resp.content.iter_any():
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)

    async def apply(
        self, obj: Mapping[str, Any], *, subresource: str | None = None, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` with the operator's field manager."""
        meta = obj["metadata"]
        params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
        if force:
            params["force"] = "true"
        result: dict[str, Any] = await self.request(
            "PATCH",
            path_for(obj["kind"], meta.get("namespace"), meta["name"], subresource),
            body=obj,
            params=params,
            content_type="application/apply-patch+yaml",
            kind=obj["kind"],
            name=meta["name"],
        )
        return result

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH",
            path_for(kind, namespace, name, subresource),
            body=patch,
            params={"fieldManager": FIELD_MANAGER},
            content_type=content_type,
            kind=kind,
            name=name,
        )
        return result

    async def create(
        self,
        kind: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        name: str | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST",
            path_for(kind, namespace, name, subresource),
            body=body,
            params={"fieldManager": FIELD_MANAGER},
            kind=kind,
            name=name or "",
        )
        return result

    async def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete; False when it was already gone. ``uid`` guards against a namesake."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request(
                "DELETE", path_for(kind, namespace, name), body=body, kind=kind, name=name
            )
            return True
        except NotFound:
            return False

    # ------------------------------------------------------------------ reviews

    async def token_review(
        self, token: str, audiences: builtins.list[str] | None = None
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        result: dict[str, Any] = await self.request(
            "POST", path_for("TokenReview"), body=body, kind="TokenReview"
        )
        return dict(result.get("status") or {})

    async def can_i(
        self,
        user: str,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        groups: builtins.list[str] | None = None,
    ) -> bool:
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        spec: dict[str, Any] = {"user": user, "resourceAttributes": attrs}
        if groups:
            spec["groups"] = groups
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        result = await self.request(
            "POST", path_for("SubjectAccessReview"), body=body, kind="SubjectAccessReview"
        )
        return bool((result.get("status") or {}).get("allowed"))
