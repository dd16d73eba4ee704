"""The list-and-watch cache: what it keeps and which changes it reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from nhi.k8s.client import ApiError
from nhi.runtime.informer import METADATA_LIST, Gone, Informer, scopes

pytestmark = pytest.mark.unit


def obj(name: str, rv: int, namespace: str = "ns", **labels: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "resourceVersion": str(rv), "labels": labels}
    return {"metadata": meta}


class FakeApi:
    """Serves list pages and one scripted watch stream."""

    def __init__(self, pages: list[list[dict[str, Any]]], events: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.events = events
        self.requests: list[tuple[str, dict[str, str], str | None]] = []

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str], accept: str | None, **_: Any
    ) -> dict[str, Any]:
        self.requests.append((path, dict(params), accept))
        page = int(params.get("continue", "0"))
        meta: dict[str, Any] = {"resourceVersion": "100"}
        if page + 1 < len(self.pages):
            meta["continue"] = str(page + 1)
        return {"items": self.pages[page], "metadata": meta}

    async def stream(
        self, path: str, params: Mapping[str, str], **_: Any
    ) -> AsyncIterator[dict[str, Any]]:
        self.requests.append((path, dict(params), None))
        for event in self.events:
            yield event


def recorder() -> tuple[list[tuple[Any, Any, Any]], Any]:
    seen: list[tuple[Any, Any, Any]] = []
    return seen, lambda key, old, new: seen.append((key, old, new))


def rv_of(o: Mapping[str, Any]) -> str:
    return str(o["metadata"]["resourceVersion"])


def test_listing_pages_through_and_reports_every_object_once() -> None:
    api = FakeApi([[obj("a", 1), obj("b", 2)], [obj("c", 3)]], [])
    seen, on_change = recorder()
    inf = Informer(
        api,  # type: ignore[arg-type]
        "Secret",
        label_selector="x=y",
        metadata_only=True,
        transform=rv_of,
        on_change=on_change,
    )
    asyncio.run(inf.relist())
    assert inf.synced.is_set()
    assert inf.objects == {("ns", "a"): "1", ("ns", "b"): "2", ("ns", "c"): "3"}
    assert sorted(k for k, _, _ in seen) == [("ns", "a"), ("ns", "b"), ("ns", "c")]
    assert inf.resource_version == "100"
    # Server-side selector and paging on every page; metadata only asked for.
    assert [r[1].get("continue") for r in api.requests] == [None, "1"]
    assert all(r[1]["labelSelector"] == "x=y" and r[1]["limit"] == "500" for r in api.requests)
    assert all(r[2] == METADATA_LIST for r in api.requests)


def test_a_field_selector_is_sent_on_the_list_and_the_watch() -> None:
    api = FakeApi([[obj("a", 1)]], [])
    inf = Informer(
        api,  # type: ignore[arg-type]
        "Secret",
        field_selector="type=kubernetes.io/tls",
        transform=rv_of,
    )
    asyncio.run(inf.relist())
    asyncio.run(inf.watch())
    assert [r[1]["fieldSelector"] for r in api.requests] == ["type=kubernetes.io/tls"] * 2
    assert "labelSelector" not in api.requests[0][1]


def test_a_second_listing_reports_only_the_differences() -> None:
    api = FakeApi([[obj("a", 1), obj("b", 2)]], [])
    seen, on_change = recorder()
    inf = Informer(api, "Secret", transform=rv_of, on_change=on_change)  # type: ignore[arg-type]
    asyncio.run(inf.relist())
    seen.clear()
    api.pages = [[obj("a", 1), obj("c", 5)]]
    asyncio.run(inf.relist())
    assert sorted(seen) == [(("ns", "b"), "2", None), (("ns", "c"), None, "5")]


def test_watch_events_update_the_cache() -> None:
    seen, on_change = recorder()
    inf = Informer(
        FakeApi([], []),  # type: ignore[arg-type]
        "Pod",
        transform=lambda o: None if o["metadata"]["labels"].get("skip") else rv_of(o),
        on_change=on_change,
    )
    inf.apply({"type": "ADDED", "object": obj("a", 7)})
    inf.apply({"type": "MODIFIED", "object": obj("a", 8)})
    inf.apply({"type": "ADDED", "object": obj("skipped", 9, skip="1")})
    inf.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}})
    assert inf.objects == {("ns", "a"): "8"}
    assert inf.resource_version == "12"
    # A kept object that stops matching the transform is reported as gone.
    inf.apply({"type": "MODIFIED", "object": obj("a", 13, skip="1")})
    inf.apply({"type": "DELETED", "object": obj("skipped", 14, skip="1")})
    assert inf.objects == {}
    assert seen == [
        (("ns", "a"), None, "7"),
        (("ns", "a"), "7", "8"),
        (("ns", "a"), "8", None),
    ]


def test_expired_resource_version_asks_for_a_new_listing() -> None:
    inf = Informer(FakeApi([], []), "Pod")  # type: ignore[arg-type]
    with pytest.raises(Gone):
        inf.apply({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}})
    with pytest.raises(ApiError):
        inf.apply({"type": "ERROR", "object": {"code": 500, "reason": "InternalError"}})


def test_watch_resumes_from_the_listed_version_with_bookmarks() -> None:
    api = FakeApi([[obj("a", 1)]], [{"type": "DELETED", "object": obj("a", 101)}])
    seen, on_change = recorder()
    inf = Informer(api, "Pod", transform=rv_of, on_change=on_change)  # type: ignore[arg-type]

    async def go() -> None:
        await inf.relist()
        await inf.watch()

    asyncio.run(go())
    params = api.requests[-1][1]
    assert params["resourceVersion"] == "100"
    assert params["allowWatchBookmarks"] == "true" and params["watch"] == "true"
    assert seen[-1] == (("ns", "a"), "1", None)
    assert inf.resource_version == "101"


def test_glob_namespaces_are_filtered_client_side() -> None:
    api = FakeApi([[obj("a", 1, namespace="team-a"), obj("b", 2, namespace="other")]], [])
    inf = Informer(api, "Pod", transform=rv_of, namespaces=("team-*",))  # type: ignore[arg-type]
    asyncio.run(inf.relist())
    assert list(inf.objects) == [("team-a", "a")]


@pytest.mark.parametrize(
    ("namespaces", "extra", "where", "keep"),
    [
        ((), ("nhi-system",), [None], ()),
        (("b", "a"), ("nhi-system",), ["a", "b", "nhi-system"], ()),
        (("team-*",), ("nhi-system",), [None], ("team-*", "nhi-system")),
    ],
)
def test_scopes(
    namespaces: tuple[str, ...], extra: tuple[str, ...], where: list[Any], keep: tuple[str, ...]
) -> None:
    assert scopes(namespaces, *extra) == (where, keep)
