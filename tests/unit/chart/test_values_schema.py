"""values.schema.json is strict: the shipped values pass it, and Helm itself refuses bad values before rendering."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from tests.unit.chart.conftest import CHART, Helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_schema_is_a_valid_draft_7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("values_file", ["values.yaml", "ci/all-enabled-values.yaml"])
def test_shipped_values_satisfy_the_schema(values_file: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    override = yaml.safe_load((CHART / values_file).read_text())
    jsonschema.Draft7Validator(SCHEMA).validate(merge(values, override))


def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of values: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in override.items()}}
    return override


# (--set argument, what helm's error must mention)
BAD_VALUES = [
    ("imagePullPolicy=Always", "imagePullPolicy"),  # a misspelt top-level key is not silently ignored
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("image.digest=latest", "digest"),
    ("operator.healthPort=80", "healthPort"),
    ("operator.metricsPort=80", "metricsPort"),
    ("metrics.prometheusRule.runbookBaseUrl=docs", "runbookBaseUrl"),
    ("operator.logLevel=loud", "logLevel"),
    ("operator.replicas=0", "replicas"),
    ("operator.leaderElection.leaseDurationSeconds=0", "leaseDurationSeconds"),
    ("imcluster.name=Chat_1", "name"),
    ("imcluster.enabled=yes", "enabled"),
    ("metrics.serviceMonitor.interval=soon", "interval"),
    ("tests.gatewayUrl=ftp://gateway", "gatewayUrl"),
    ("operator.resources.requests.cpu=lots", "cpu"),
]


@pytest.mark.parametrize(("setting", "mentions"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_helm_refuses_bad_values(helm: Helm, setting: str, mentions: str) -> None:
    flag = "--set-string" if setting.startswith("imcluster.enabled") else "--set"
    error = helm.template_error(flag, setting)
    assert "values don't meet the specifications of the schema" in error, error
    assert mentions in error, error


@pytest.mark.parametrize(("setting", "mentions"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_jsonschema_agrees_with_helm_on_bad_values(setting: str, mentions: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    path, _, raw = setting.partition("=")
    value: Any = raw if setting.startswith("imcluster.enabled") else yaml.safe_load(raw)
    keys = path.split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)
