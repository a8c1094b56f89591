"""The shipped Prometheus configuration and alert rules, checked by promtool: the configuration
(and the rule files it loads) is valid, and every alert passes its unit tests in
deploy/prometheus/alerts.test.yml, which hold a case that fires and one that does not for each."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.stack_files import ALERTS_FILE, PROMETHEUS_FILE
from tests.deploy.tools import require_command

RULE_TESTS_FILE = ALERTS_FILE.with_name("alerts.test.yml")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_command("promtool", "prometheus")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603


def _alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS_FILE.read_text(encoding="utf-8"))["tests"]
    return tests


def test_the_shipped_prometheus_config_and_its_rules_are_valid(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(PROMETHEUS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    # the rule files are checked with it: all of them found, every rule parsed
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    assert f"SUCCESS: {len(_alert_names())} rules found" in result.stdout, result.stdout


def test_every_alert_passes_its_unit_tests(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RULE_TESTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The check itself: promtool compares the rendered annotations, so a count off by one fails."""
    shutil.copy(ALERTS_FILE, tmp_path / ALERTS_FILE.name)
    text = RULE_TESTS_FILE.read_text(encoding="utf-8")
    assert text.count("About 40 dead letter(s)") == 1
    (tmp_path / RULE_TESTS_FILE.name).write_text(text.replace("About 40 dead", "About 39 dead"))
    result = _run(promtool, "test", "rules", str(tmp_path / RULE_TESTS_FILE.name))
    assert result.returncode != 0
    report = result.stdout + result.stderr
    assert "About 39 dead letter(s)" in report and "About 40 dead letter(s)" in report  # expected, got


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in _rule_tests():
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(_alert_names())
    assert names, "alerts.yml has alerts"
    assert not names - fires, f"no case where it fires: {sorted(names - fires)}"
    assert not names - quiet, f"no case where it stays quiet: {sorted(names - quiet)}"
    assert not (fires | quiet) - names, f"cases of unknown alerts: {sorted((fires | quiet) - names)}"
