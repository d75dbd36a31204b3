"""Courier's alert rules against the real promtool of Debian's Prometheus: the rules file loads, and the unit tests in
tests/integration/prometheus/ fire every alert once and keep each quiet at least once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from tests.harness.prometheus import REPO, promtool
from tests.unit.dashboards.queries import RULES, SHIPPED_ALERTS

RULE_TESTS = REPO / "tests" / "integration" / "prometheus" / "courier-rules.test.yaml"


def rule_tests() -> list[dict[str, Any]]:
    """Every alert_rule_test of the file: alertname, eval_time, exp_alerts."""
    return [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]


def test_promtool_check_rules_accepts_every_rule() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(SHIPPED_ALERTS)} rules found" in checked.stdout


def test_promtool_check_rules_refuses_a_broken_expression(tmp_path: Path) -> None:
    groups = yaml.safe_load(RULES.read_text())
    groups["groups"][0]["rules"][0]["expr"] = "sum by (namespace) (rate(courier_messages_sent_total[10m])"
    broken = tmp_path / "rules.yaml"
    broken.write_text(yaml.safe_dump(groups))
    checked = promtool("check", "rules", str(broken))
    assert checked.returncode != 0
    assert "unclosed left parenthesis" in checked.stdout + checked.stderr


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    cases = rule_tests()
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert sorted(fired) == sorted(SHIPPED_ALERTS), "alerts without a firing test"
    assert sorted(quiet) == sorted(SHIPPED_ALERTS), "alerts without a quiet test"


def test_promtool_test_rules_passes() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_rule_that_no_longer_fires_fails_its_test(tmp_path: Path) -> None:
    """The unit tests can fail: with CourierOutboxStale's threshold raised to an hour its firing case fails."""
    groups = yaml.safe_load(RULES.read_text())
    stale = next(r for g in groups["groups"] for r in g["rules"] if r["alert"] == "CourierOutboxStale")
    stale["expr"] = stale["expr"].replace("> 60", "> 3600")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(groups))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    copy = tmp_path / "rules.test.yaml"
    copy.write_text(yaml.safe_dump(tests))
    tested = promtool("test", "rules", str(copy))
    assert tested.returncode != 0
    assert "alertname: CourierOutboxStale" in tested.stdout + tested.stderr
