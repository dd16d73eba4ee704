"""The validating webhook's handler fails closed: an error while reviewing refuses the
request (with a message saying so) instead of admitting what was not checked."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from nhi.handlers import admission
from tests.unit.factories import make_body

pytestmark = pytest.mark.unit


class BrokenApi:
    """Every request fails, as with an API server that cannot be reached."""

    async def list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise RuntimeError("connection reset")

    async def request(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("connection reset")


@pytest.fixture
def broken_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = SimpleNamespace(api=BrokenApi(), issuers=SimpleNamespace(capture=lambda kwargs: None))
    monkeypatch.setattr(admission.runtime, "get", lambda: rt)
    monkeypatch.setattr(admission, "_reviewer", None)


async def test_an_error_while_reviewing_refuses_the_request(broken_runtime: None) -> None:
    warnings: list[str] = []
    with pytest.raises(kopf.AdmissionError) as err:
        await admission.validate_identity(
            userinfo={"username": "alice"},
            warnings=warnings,
            namespace="team-a",
            name="app",
            dryrun=False,
            operation="CREATE",
            new=make_body(),
            old=None,
        )
    assert "could not check this MachineIdentity" in str(err.value)
    assert "RuntimeError: connection reset" in str(err.value)
    assert err.value.code == 500
    assert warnings == []


async def test_an_update_that_leaves_the_spec_alone_needs_no_review(broken_runtime: None) -> None:
    """The operator's own finalizer removal must never depend on the review working."""
    body = make_body()
    deleting = {
        **body,
        "metadata": {**body["metadata"], "deletionTimestamp": "2030-01-01T00:00:00Z"},
    }
    await admission.validate_identity(
        userinfo={"username": "system:serviceaccount:nhi-system:nhi-operator"},
        warnings=[],
        namespace="team-a",
        name="app",
        dryrun=False,
        operation="UPDATE",
        new=deleting,
        old=body,
    )


class FakeRequest:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.match_info = {"id": admission.WEBHOOK_ID}

    async def text(self) -> str:
        return json.dumps(self.payload)


async def test_a_request_kopf_fails_on_is_refused() -> None:
    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("resource")

    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002"},
    }
    response = await admission._serve(failing, FakeRequest(review))  # type: ignore[arg-type]
    answer = json.loads(response.text or "{}")
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is False
    assert "so it is refused" in answer["response"]["status"]["message"]
