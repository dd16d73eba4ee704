"""List-and-watch caches of one resource, kept in plain dicts.

An :class:`Informer` lists a resource (paginated, optionally with server-side label and
field selectors, optionally as metadata only), then watches it from the list's resourceVersion with
bookmarks, and keeps a reduced value per object (``transform``). It calls ``on_change(key,
old, new)`` for every object whose value changed (None: absent), on the first listing too,
and then every consumer added with :meth:`Informer.subscribe`.
When the watch's resourceVersion is too old (410 Gone) or the connection fails, it lists
again and reports only the differences.

Readiness is one flag per informer (``synced``: the first listing is in), so the cost of
starting grows linearly with the number of objects.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nhi.k8s.client import Api, ApiError, path_for

log = logging.getLogger("nhi.informer")

Key = tuple[str, str]  # namespace ("" when cluster-scoped), name
Transform = Callable[[Mapping[str, Any]], Any]
OnChange = Callable[[Key, Any, Any], None]

PAGE_SIZE = 500
WATCH_SECONDS = 300
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Informer:
    """One resource (in one namespace, or all), listed once and then watched."""

    def __init__(
        self,
        api: Api,
        kind: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
        transform: Transform | None = None,
        on_change: OnChange | None = None,
        namespaces: Sequence[str] = (),
        list_slots: asyncio.Semaphore | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self._monotonic = monotonic
        #: Shared by the informers of one operator: how many may list at the same time.
        self.list_slots = list_slots
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.metadata_only = metadata_only
        self.transform: Transform = transform or (lambda obj: obj)
        self.on_change = on_change
        self._subscribers: list[OnChange] = []
        #: Glob patterns of namespaces to keep (client-side); empty: all.
        self.patterns = tuple(namespaces)
        self.objects: dict[Key, Any] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.lists = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, on_change: OnChange) -> None:
        """Tell ``on_change`` too about every change (after :attr:`on_change`)."""
        self._subscribers.append(on_change)

    def _listened(self) -> bool:
        return self.on_change is not None or bool(self._subscribers)

    @property
    def name(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        sel = f" ({self.label_selector})" if self.label_selector else ""
        sel += f" ({self.field_selector})" if self.field_selector else ""
        return f"{self.kind}{where}{sel}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        delay = 0.5
        listed = False
        while True:
            try:
                if not listed:
                    await self.relist()
                    listed = True
                    delay = 0.5
                await self.watch()
            except asyncio.CancelledError:
                raise
            except Gone:
                listed = False
            except Exception as err:  # a broken connection, a server restart, RBAC
                log.warning(
                    "watch failed; listing again",
                    extra={"resource": self.name, "error": str(err)[:300], "retry_in": delay},
                )
                listed = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ------------------------------------------------------------------ list

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    def _wanted(self, key: Key) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(key[0], p) for p in self.patterns)

    async def relist(self) -> None:
        if self.list_slots is None:
            await self._relist()
            return
        async with self.list_slots:
            await self._relist()

    async def _relist(self) -> None:
        started = self._monotonic()
        params = {**self._params(), "limit": str(PAGE_SIZE)}
        fresh: dict[Key, Any] = {}
        path = path_for(self.kind, self.namespace)
        accept = METADATA_LIST if self.metadata_only else None
        while True:
            page = await self.api.request("GET", path, params=params, accept=accept, kind=self.kind)
            for obj in page.get("items") or ():
                key = _key(obj)
                if not self._wanted(key):
                    continue
                value = self.transform(obj)
                if value is not None:
                    fresh[key] = value
            meta = page.get("metadata") or {}
            self.resource_version = str(meta.get("resourceVersion") or "")
            if not meta.get("continue"):
                break
            params["continue"] = str(meta["continue"])
        old, self.objects = self.objects, fresh
        self.lists += 1
        if self._listened():
            for key, value in fresh.items():
                before = old.get(key)
                if before != value:
                    self._report(key, before, value)
            for key, before in old.items():
                if key not in fresh:
                    self._report(key, before, None)
        if not self.synced.is_set():
            log.debug(
                "listed",
                extra={
                    "resource": self.name,
                    "objects": len(fresh),
                    "seconds": round(self._monotonic() - started, 3),
                },
            )
        self.synced.set()

    # ------------------------------------------------------------------ watch

    async def watch(self) -> None:
        """Follow the watch until the server ends it (then the caller watches again)."""
        params = {
            **self._params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        accept = METADATA_WATCH if self.metadata_only else None
        try:
            async for event in self.api.stream(
                path_for(self.kind, self.namespace), params, accept=accept
            ):
                self.apply(event)
        except ApiError as err:
            if err.status == 410:
                raise Gone from None
            raise

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event: update the cache, report the change."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""), "")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        key = _key(obj)
        if not self._wanted(key):
            return
        before = self.objects.get(key)
        value = None if kind == "DELETED" else self.transform(obj)
        if value is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = value
        listened = self.on_change is not None or self._subscribers
        if listened and (before is not None or value is not None):
            if kind == "DELETED" or before != value:
                self._report(key, before, value)

    def _report(self, key: Key, old: Any, new: Any) -> None:
        if self.on_change is not None:
            self._tell(self.on_change, key, old, new)
        for consumer in self._subscribers:
            self._tell(consumer, key, old, new)

    def _tell(self, consumer: OnChange, key: Key, old: Any, new: Any) -> None:
        try:
            consumer(key, old, new)
        except Exception:  # a consumer's bug must not stop the watch
            log.exception("a watch-cache consumer failed", extra={"resource": self.name})


def scopes(namespaces: Sequence[str], *extra: str) -> tuple[list[str | None], tuple[str, ...]]:
    """Where to run a namespaced resource's informers, and which namespaces to keep.

    No namespaces: one cluster-wide informer. Only exact names: one informer per namespace
    (``extra`` added). Any glob: one cluster-wide informer filtered client-side.
    """
    if not namespaces:
        return [None], ()
    if any(set(n) & set("*?[") for n in namespaces):
        return [None], (*namespaces, *(e for e in extra if e))
    exact: list[str | None] = [*sorted({*namespaces, *(e for e in extra if e)})]
    return exact, ()
