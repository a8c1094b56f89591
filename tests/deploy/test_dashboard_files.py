"""The Grafana dashboard and the alert rules as files: every platform metric they use is exposed
(and every one exposed is used), the dashboard has a datasource variable and an import input, its
platform panels follow the job, instance and vhost variables, and only API panels count requests
per second."""

from __future__ import annotations

import pytest

from taskplatform.metrics import Metrics
from tests.deploy.dashboard import (
    RABBITMQ_SERIES,
    SELECTOR,
    load_dashboard,
    targets,
    variables,
    with_bool,
)
from tests.deploy.stack_files import DASHBOARD_DATASOURCE, DASHBOARD_FILE, metric_names_used


def test_every_metric_the_dashboard_and_alerts_use_is_exposed() -> None:
    used = metric_names_used()
    exposed = Metrics().exposed_names()
    platform = {name for name in used if name.startswith("taskplatform_")}
    assert platform, "the dashboard uses platform metrics"
    assert not platform - exposed, f"not in the registry: {sorted(platform - exposed)}"
    rabbitmq = {name for name in used if name.startswith("rabbitmq_")}
    assert not rabbitmq - RABBITMQ_SERIES, f"unknown RabbitMQ series: {sorted(rabbitmq - RABBITMQ_SERIES)}"
    # nothing the platform exposes is forgotten by the dashboard and the alerts
    own = {name for name in exposed if name.startswith("taskplatform_")}
    assert not own - used, f"exposed but on no panel or alert: {sorted(own - used)}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= exposed
    grpc = {name for name in used if name.startswith("grpc_")}
    assert grpc, "the dashboard has a gRPC row"
    assert not grpc - exposed, f"not in the registry: {sorted(grpc - exposed)}"


def test_the_dashboard_has_a_datasource_variable_and_an_import_input() -> None:
    dashboard = load_dashboard()
    [source] = [v for v in variables(dashboard) if v["name"] == "datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    [given] = dashboard["__inputs"]
    assert (given["name"], given["type"], given["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    # the input (replaced on import) is the variable's default; provisioned, it names no
    # datasource and Grafana takes the first Prometheus one (the stack has one); nothing else
    # names a datasource directly
    assert source["current"]["value"] == "${DS_PROMETHEUS}"
    text = DASHBOARD_FILE.read_text(encoding="utf-8")
    assert text.count("${DS_PROMETHEUS}") == 1
    assert '"uid": "prometheus"' not in text
    for panel, target in targets(dashboard):
        assert panel["datasource"] == DASHBOARD_DATASOURCE, panel["title"]
        assert target["datasource"] == DASHBOARD_DATASOURCE, panel["title"]


def test_platform_panels_follow_the_job_and_instance_variables_and_rabbitmq_ones_the_vhost() -> None:
    dashboard = load_dashboard()
    names = {v["name"] for v in variables(dashboard)}
    assert {"datasource", "job", "instance", "task_type", "vhost"} <= names
    for panel, target in targets(dashboard):
        for name, matchers in SELECTOR.findall(target["expr"]):
            where = f"{panel['title']}: {name}"
            if name.startswith(("taskplatform_", "grpc_", "process_", "python_")) or name == "up":
                assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, where
            elif name.startswith("rabbitmq_"):
                assert 'vhost=~"$vhost"' in matchers, where
            else:
                pytest.fail(f"{where}: a metric of neither the platform nor RabbitMQ")
        assert 'job="' not in target["expr"], f"{panel['title']}: a hard-coded job"
        if target["expr"].lstrip().startswith("sum by") and "rabbitmq_" in target["expr"]:
            assert "sum by (vhost, queue)" in target["expr"], f"{panel['title']}: not split by vhost"


def test_only_api_panels_count_requests_per_second() -> None:
    for panel, target in targets(load_dashboard()):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if unit == "reqps":
            assert "taskplatform_api_requests_total" in target["expr"], panel["title"]
        if "taskplatform_tasks_" in target["expr"] and "rate(" in target["expr"]:
            assert unit in ("suffix:tasks/s", "percentunit"), f"{panel['title']}: {unit}"


def test_with_bool_keeps_every_series_of_a_comparison() -> None:
    """The check itself (used on the alert expressions below)."""
    assert with_bool('up{job!="a"} == 0 or absent(up)') == 'up{job!="a"} == bool 0 or absent(up)'
    assert with_bool("(a / b) > 0.10 and c >= 20") == "(a / b) > bool 0.10 and c >= bool 20"
    assert with_bool('x{q=~".*>.*"} > bool 1') == 'x{q=~".*>.*"} > bool 1'
    assert with_bool("time() - max(y[5m]) < 120") == "time() - max(y[5m]) < bool 120"
