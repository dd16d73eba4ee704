"""``nhi inventory`` and ``nhi report`` on a fake API server: what is listed (Secrets by type
only), filters, the three formats, the HTML page (self-contained, escaped), and no Secret
value in any output."""

from __future__ import annotations

import asyncio
import base64
import json
from html.parser import HTMLParser
from typing import Any

import pytest
import yaml

from nhi.cli import inventory as cli
from nhi.cli.main import build_parser
from nhi.models.inventory_config import InventoryConfig
from tests.unit.inventory_factories import T0, stamp

pytestmark = pytest.mark.unit

TOKEN_VALUE = "eyJhbGciOiJSUzI1NiJ9.secret-token-value"
KEY_VALUE = "-----BEGIN PRIVATE KEY-----secret-key-value"


def item(kind: str, ns: str, name: str, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "uid": f"u-{name}", "creationTimestamp": stamp(T0)}
    if ns:
        meta["namespace"] = ns
    return {"kind": kind, "metadata": {**meta, **extra.pop("metadata", {})}, **extra}


OBJECTS: dict[str, list[dict[str, Any]]] = {
    "serviceaccounts": [
        item("ServiceAccount", "app", "default"),
        item("ServiceAccount", "app", "boss", metadata={"labels": {"owner": "team-x"}}),
        item("ServiceAccount", "app", "<script>alert(1)</script>"),
    ],
    "deployments": [
        item("Deployment", "app", "web", spec={"template": {"spec": {}}}),
        item("Deployment", "app", "api", spec={"template": {"spec": {}}}),
        item(
            "Deployment", "app", "ctl", spec={"template": {"spec": {"serviceAccountName": "boss"}}}
        ),
    ],
    "clusterrolebindings": [
        item(
            "ClusterRoleBinding",
            "",
            "boss-admin",
            roleRef={"kind": "ClusterRole", "name": "cluster-admin"},
            subjects=[{"kind": "ServiceAccount", "name": "boss", "namespace": "app"}],
        ),
    ],
    "clusterroles": [
        item(
            "ClusterRole",
            "",
            "cluster-admin",
            rules=[{"verbs": ["*"], "resources": ["*"], "apiGroups": ["*"]}],
        )
    ],
    "secrets?type=kubernetes.io/service-account-token": [
        item(
            "Secret",
            "app",
            "old-token",
            type="kubernetes.io/service-account-token",
            metadata={"annotations": {"kubernetes.io/service-account.name": "boss"}},
            data={"token": base64.b64encode(TOKEN_VALUE.encode()).decode()},
        ),
    ],
    "secrets?type=kubernetes.io/tls": [
        item(
            "Secret",
            "app",
            "tls",
            type="kubernetes.io/tls",
            data={"tls.crt": "bm9wZQ==", "tls.key": base64.b64encode(KEY_VALUE.encode()).decode()},
        ),
    ],
    "namespaces": [item("Namespace", "", "app")],
}


class FakeApi:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def request(self, method: str, path: str, *, params: dict[str, str], **_: Any) -> Any:
        assert method == "GET"
        plural = path.rsplit("/", 1)[1]
        key = plural + (f"?{params['fieldSelector']}" if "fieldSelector" in params else "")
        self.paths.append(key)
        if plural == "secrets":
            assert "fieldSelector" in params, "Secrets are listed by type only"
        return {"items": OBJECTS.get(key, []), "metadata": {}}


def run(fn: Any, *args: Any) -> Any:
    return asyncio.run(fn(FakeApi(), None, *args))  # type: ignore[arg-type]


def test_inventory_json_lists_identities_with_findings_and_no_secret_value(capsys) -> None:
    run(cli.inventory, None, None, None, "json", None)
    out = capsys.readouterr().out
    data = {i["name"]: i for i in json.loads(out)}
    boss = data["boss"]
    assert boss["owner"] == "team-x" and boss["state"] == "unmanaged"
    assert boss["workloads"] == ["Deployment/app/ctl"]
    assert {
        "binding": "ClusterRoleBinding/boss-admin",
        "role": "ClusterRole/cluster-admin",
        "scope": "cluster",
    } in boss["bindings"]
    assert {f["rule"] for f in boss["findings"]} >= {"cluster-admin-binding", "legacy-token-secret"}
    assert TOKEN_VALUE not in out and "secret-key-value" not in out
    assert "c2VjcmV0LWtleS12YWx1ZQ" not in out


def test_inventory_filters_and_table(capsys) -> None:
    run(cli.inventory, None, "team-x", "NHI5", "table", None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "SERVICEACCOUNT", "STATE"]
    assert [line.split()[1] for line in lines[1:]] == ["boss"]
    run(cli.inventory, "managed", None, None, "yaml", None)
    assert yaml.safe_load(capsys.readouterr().out) == []


def test_report_table_json_and_severity_filter(capsys) -> None:
    run(cli.report, None, "critical", "json", None)
    data = json.loads(capsys.readouterr().out)
    assert data["kpis"]["identities"] == 3
    assert (data["kpis"]["permissionsUsed"], data["kpis"]["rulesWeighed"]) == (None, 0)
    assert {f["rule"] for f in data["findings"]} == {"cluster-admin-binding"}
    run(cli.report, None, None, "table", None)
    out = capsys.readouterr().out
    assert "owner coverage" in out and "default-service-account-used" in out
    assert "permissions used: no usage data" in out


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.external.append(value)


def test_report_html_is_self_contained_and_escaped(capsys) -> None:
    run(cli.report, None, None, "html", None)
    html = capsys.readouterr().out
    page = Page()
    page.feed(html)
    assert "script" not in page.tags and page.external == []
    assert page.tags.count("svg") == 3 and "table" in page.tags
    assert TOKEN_VALUE not in html


def test_html_escapes_what_comes_from_the_cluster() -> None:
    from nhi.cli.report_html import render_html
    from nhi.models.inventory import Finding, ObjectRef
    from nhi.policies.kpis import Kpis

    evil = "<script>alert(1)</script>"
    f = Finding(
        "unknown-owner",
        "NHI1",
        "low",
        "app",
        (ObjectRef("ServiceAccount", "app", evil),),
        f"nobody owns {evil}",
        "label it",
    )
    html = render_html(Kpis(1, 0, 0, 1, 0), [f], T0)
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page()
    page.feed(html)
    assert "script" not in page.tags


def test_the_parser_knows_both_commands() -> None:
    args = build_parser().parse_args(["inventory", "-A", "--state", "unmanaged", "-o", "json"])
    assert (args.state, args.output, args.all_namespaces) == ("unmanaged", "json", True)
    args = build_parser().parse_args(["report", "--format", "html", "--risk", "NHI5"])
    assert (args.output, args.risk) == ("html", "NHI5")


def test_a_bad_config_is_one_line(tmp_path) -> None:
    from nhi.cli.errors import CliError

    bad = tmp_path / "c.yaml"
    bad.write_text("disabledRules: [nope]\n")
    with pytest.raises(CliError, match="disabledRules"):
        cli.load_config(str(bad))
    assert cli.load_config(None) == InventoryConfig()


class FakePrometheus:
    """A local HTTP server answering /api/v1/query as Prometheus does: a rotation histogram
    with observations, no revocation at all."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.queries: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                expr = parse_qs(urlparse(self.path).query)["query"][0]
                outer.queries.append(expr)
                result: list[dict[str, Any]] = []
                if "time_to_rotate" in expr:
                    value = {"sum(": "4", "histogram_quantile(0.5,": "1.5"}
                    found = next((v for k, v in value.items() if expr.startswith(k)), "30")
                    result = [{"metric": {}, "value": [0, found]}]
                elif expr.startswith("histogram_quantile"):
                    result = [{"metric": {}, "value": [0, "NaN"]}]
                body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_report_reads_time_to_rotate_and_revoke_from_prometheus(capsys) -> None:
    prom = FakePrometheus()
    try:
        run(cli.report, None, None, "json", None, prom.url, "1d")
        kpis = json.loads(capsys.readouterr().out)["kpis"]
        assert kpis["timeToRotate"] == {"count": 4, "p50Seconds": 1.5, "p95Seconds": 30.0}
        assert kpis["timeToRevoke"] == {"count": 0, "p50Seconds": None, "p95Seconds": None}
        assert any("[1d]" in q and "time_to_revoke" in q for q in prom.queries)
        run(cli.report, None, None, "table", None, prom.url, "7d")
        out = capsys.readouterr().out
        assert "Time to rotate: p50 1.5s, p95 30s (4 observed)" in out
        assert "Time to revoke: none observed" in out
    finally:
        prom.close()


def test_an_unreachable_prometheus_is_one_clear_error() -> None:
    from nhi.cli.errors import CliError

    with pytest.raises(CliError, match=r"could not query Prometheus at http://127\.0\.0\.1:9"):
        run(cli.report, None, None, "json", None, "http://127.0.0.1:9", "7d")
    with pytest.raises(CliError, match="not an http"):
        run(cli.report, None, None, "json", None, "file:///etc/passwd", "7d")


@pytest.mark.parametrize("window", ["7d", "12h", "1h30m", "500ms"])
def test_the_window_is_a_promql_duration(window: str) -> None:
    args = build_parser().parse_args(["report", "--window", window])
    assert args.window == window


@pytest.mark.parametrize("window", ["7 days", "", "1h)[5m", "d7"])
def test_a_window_that_is_not_a_duration_is_refused(window: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--window", window])
