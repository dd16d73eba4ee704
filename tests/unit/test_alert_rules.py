"""The shipped Prometheus alert rules: promtool checks, unit tests and runbooks.

Runs ``promtool check rules`` and ``promtool test rules`` on
manifests/prometheus/nhi-operator.rules.yaml and its tests, and checks that
every alert has a runbook under docs/runbooks/ and test cases, firing and not
firing. promtool comes with the Debian ``prometheus`` package; without it these
tests fail rather than skip, so a missing tool is never mistaken for passing
rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "manifests" / "prometheus" / "nhi-operator.rules.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "nhi-operator.rules.test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL_PREFIX = "https://github.com/nhi-dev/nhi-operator/blob/main/docs/runbooks/"

EXPECTED_ALERTS = {
    "NHICredentialExpiringSoon",
    "NHICredentialExpired",
    "NHICredentialRenewalOverdue",
    "NHIRotationFailing",
    "NHIIdentityNotReady",
    "NHIIssuerNotReady",
    "NHIIssuerCAExpiringSoon",
    "NHIOperatorDown",
    "NHIInventoryCriticalFinding",
    "NHIAccessGrantOverdue",
}


def _promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool is not on PATH. Install the Debian 'prometheus' package "
            "(apt-get install -y prometheus), which provides /usr/bin/promtool; "
            "`make test` installs it.",
            pytrace=False,
        )
    return path


def _run_promtool(*args: str) -> None:
    cmd = [_promtool(), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in _alert_rules()})


def _rule_test_cases() -> list[dict[str, Any]]:
    doc = _load(RULE_TESTS)
    return [case for group in doc["tests"] for case in group.get("alert_rule_test") or []]


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    _run_promtool("test", "rules", str(RULE_TESTS))


def test_rule_tests_load_the_shipped_rule_file() -> None:
    rule_files = _load(RULE_TESTS)["rule_files"]
    resolved = {(RULE_TESTS.parent / f).resolve() for f in rule_files}
    assert RULES.resolve() in resolved


def test_all_expected_alerts_are_defined() -> None:
    assert set(_alert_names()) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: f"{r['alert']}")
def test_alert_has_severity_annotations_and_runbook(rule: dict[str, Any]) -> None:
    alert = rule["alert"]
    assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, alert
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{alert} has no {key} annotation"
    assert annotations["runbook_url"] == f"{RUNBOOK_URL_PREFIX}{alert}.md"
    runbook = RUNBOOKS / f"{alert}.md"
    assert runbook.is_file(), f"{alert}: runbook {runbook.relative_to(ROOT)} does not exist"
    assert alert in runbook.read_text(encoding="utf-8")


@pytest.mark.parametrize("alert", _alert_names())
def test_alert_is_tested_firing_and_not_firing(alert: str) -> None:
    cases = [case for case in _rule_test_cases() if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), (
        f"{alert}: no test case in {RULE_TESTS.relative_to(ROOT)} expects it to fire"
    )
    assert any(not case.get("exp_alerts") for case in cases), (
        f"{alert}: no test case in {RULE_TESTS.relative_to(ROOT)} expects it not to fire"
    )


def test_runbook_index_links_every_alert() -> None:
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    for alert in _alert_names():
        assert f"({alert}.md)" in index, f"docs/runbooks/README.md does not link {alert}.md"
