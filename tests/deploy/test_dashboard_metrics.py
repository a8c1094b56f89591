"""The Grafana dashboard and the alert rules against a running platform (as files:
``test_dashboard_files.py``).

 a real Prometheus (Debian's ``/usr/bin/prometheus``, scraping every
second, RabbitMQ every two, with the shipped alert rules loaded) scrapes a real API (two
processes, prometheus-client's multiprocess mode) and two real worker processes on PostgreSQL
and RabbitMQ, while a mixed load runs: tasks that complete, that are retried and complete, that
are dead-lettered (non-retryable, permanent failure, attempts exhausted), and poison messages
published straight to the work queue (malformed bodies, missing headers, a task that does not
exist, an unknown type, one of them twice). Then every dashboard expression (its variables
substituted as Grafana would) and every alert expression from the shipped files is evaluated:
each returns data, and what they count matches the store (dead letters by reason exactly).

RabbitMQ's series come from rabbitmq_prometheus when the broker serves them
(``TASKPLATFORM_TEST_RABBITMQ_METRICS_URL``, by default ``http://127.0.0.1:15692/metrics/per-object``);
a broker without the plugin gets a stand-in that serves the same series for this test's queues,
read over AMQP (``test_rabbitmq_series_come_from_rabbitmq_prometheus`` says which was used).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml

from taskplatform.metrics.registry import UNKNOWN_TASK_TYPE
from taskplatform.models import TaskStatus
from tests.deploy.dashboard import load_dashboard, targets, with_bool
from tests.deploy.live_stack import Live, label_values, run_live_stack, wait_until
from tests.deploy.stack_files import (
    ALERTS_FILE,
    alert_exprs,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The stack, started once for this module's tests."""
    yield from run_live_stack(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_load_left_what_it_was_meant_to_in_the_store(live: Live) -> None:
    """The ground truth first: every provoked reason is in the store, a record per dead task and
    per poison message (the two copies of one malformed message each died on their own)."""
    assert set(live.store.dead_by_reason) == live.provoked
    assert live.store.statuses[TaskStatus.DEAD_LETTER.value] == live.dead_tasks
    assert sum(live.store.dead_by_reason.values()) == live.dead_tasks + len(live.poison)
    malformed = [
        r for r in live.poison if r in ("bad-json", "missing-header", "invalid-body", "header-mismatch")
    ]
    assert live.store.dead_kinds["message"] == len(malformed)  # no task's own message


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_dashboard_variable_lists_values(live: Live) -> None:
    assert set(live.variables) == {"job", "instance", "task_type", "vhost"}
    instances = label_values(
        live, 'label_values(taskplatform_heartbeat_timestamp_seconds{job=~"$job"}, instance)'
    )
    assert len(instances) == live.instances
    assert sorted(label_values(live, "label_values(taskplatform_heartbeat_timestamp_seconds, job)")) == [
        "taskplatform-api",
        "taskplatform-grpc",
        "taskplatform-worker",
    ]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_dashboard_expression_returns_data(live: Live) -> None:
    empty = []
    for panel, target in targets(load_dashboard()):
        expr = live.substitute(target["expr"])
        values = [v for labels, v in live.query(expr) if live.ours(labels) and math.isfinite(v)]
        if not values:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_dashboard_counts_match_the_store(live: Live) -> None:
    panels = {p["title"]: p for p, _ in targets(load_dashboard())}

    def values(title: str) -> list[tuple[dict[str, str], float]]:
        [target] = panels[title]["targets"]
        return [(labels, v) for labels, v in live.query(live.substitute(target["expr"])) if live.ours(labels)]

    in_range = {
        labels["reason"]: round(v) for labels, v in values("Dead letters in the time range by reason")
    }
    assert in_range == live.store.dead_by_reason
    assert values("Pending dead letters") == [({}, float(live.store.dead_pending))]
    assert values("In progress") == [({}, 0.0)]
    assert values("Outbox backlog") == [({}, 0.0)]
    assert values("Oldest queued task") == [({}, 0.0)]
    assert values("Targets up") == [({}, float(live.instances))]
    assert {v for _, v in values("Attempts running by instance")} == {0.0}
    assert len(values("Attempts running by instance")) == live.instances
    assert {labels["queue"] for labels, v in values("Dead-letter queue depth") if v == 0} == {
        f"{live.prefix}tasks.dlq.queue"
    }  # the DLQ consumers moved every dead message into the store


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dead_letters_by_reason_match_the_store_exactly(live: Live) -> None:
    by_reason = {
        labels["reason"]: v for labels, v in live.query("sum by (reason) (taskplatform_dead_letters_total)")
    }
    assert {r: int(v) for r, v in by_reason.items() if v} == live.store.dead_by_reason
    assert all(v == int(v) for v in by_reason.values())
    # every reason series exists, at 0 when nothing died for it
    assert set(by_reason) >= set(live.store.dead_by_reason) | {"other", "lease-expired", "delivery_limit"}
    by_type = live.query("sum by (task_type, reason) (taskplatform_dead_letters_total) > 0")
    assert (
        Counter({(s["task_type"], s["reason"]): int(v) for s, v in by_type})
        == live.store.dead_by_type_and_reason
    )
    finished = {
        s["status"]: int(v) for s, v in live.query("sum by (status) (taskplatform_tasks_finished_total) > 0")
    }
    assert finished == dict(live.store.statuses)
    assert live.query("sum(taskplatform_task_retries_total)") == [({}, float(live.store.retries))]
    assert live.query("sum(taskplatform_tasks_submitted_total)") == [({}, float(live.submitted))]


def _alert_expectations(live: Live) -> dict[str, Callable[[dict[str, str]], float]]:
    """Per alert, what its condition (with ``bool``) is for a series after this load."""
    finished = sum(live.store.statuses.values())
    ratio_high = live.store.statuses[TaskStatus.DEAD_LETTER.value] / finished > 0.10 and finished >= 20
    recorded = set(live.store.dead_by_type_and_reason)
    return {
        "TaskplatformDeadLettersRecorded": lambda s: float((s["task_type"], s["reason"]) in recorded),
        "TaskplatformFailureRatioHigh": lambda s: float(ratio_high),
    }


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_alert_expression_returns_data_and_says_what_the_store_says(live: Live) -> None:
    groups = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert [str(r["expr"]) for r in rules] == alert_exprs()
    expected = _alert_expectations(live)
    wrong = []
    for rule in rules:
        result = [(s, v) for s, v in live.query(with_bool(str(rule["expr"]))) if live.ours(s)]
        if not result:
            wrong.append(f"{rule['alert']}: no data")
        want = expected.get(rule["alert"], lambda _s: 0.0)
        wrong += [f"{rule['alert']} {s}: {v}" for s, v in result if v != want(s)]
    assert not wrong, "\n".join(wrong)
    # and the dead letters each alert reports are the store's, per task type and reason
    [recorded] = [r for r in rules if r["alert"] == "TaskplatformDeadLettersRecorded"]
    reported = Counter(
        {(s["task_type"], s["reason"]): round(v) for s, v in live.query(str(recorded["expr"]))}
    )
    assert reported == live.store.dead_by_type_and_reason


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_prometheus_fires_the_dead_letter_alert_for_tasks_and_poison_messages(live: Live) -> None:
    rules = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy
    assert sum(len(g["rules"]) for g in rules) == len(alert_exprs())
    want = set(live.store.dead_by_type_and_reason)

    def firing() -> set[tuple[str, str]]:
        alerts = httpx.get(f"{live.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {
            (a["labels"]["task_type"], a["labels"]["reason"])
            for a in alerts
            if a["labels"]["alertname"] == "TaskplatformDeadLettersRecorded" and a["state"] == "firing"
        }

    wait_until("the dead-letter alert fires for every task type and reason", lambda: firing() == want, 30)
    assert (UNKNOWN_TASK_TYPE, "unknown-task-type") in want and ("test_noop", "bad-json") in want
    alerts = httpx.get(f"{live.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    # Firing ones: a scrape that timed out (one second here) on a busy host makes an up == 0
    # rule pending for a moment, which is what its ``for`` is there to absorb.
    others = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"} - {
        "TaskplatformDeadLettersRecorded",
        "TaskplatformFailureRatioHigh",
    }
    assert not others, f"alerts a healthy stack should not raise: {others}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_grpc_row_counts_the_calls_made(live: Live) -> None:
    handled = {
        f"{s['grpc_method']} {s['grpc_code']}": v
        for s, v in live.query(
            'sum by (grpc_method, grpc_code) (grpc_server_handled_total{job="taskplatform-grpc"}) > 0'
        )
    }
    assert handled == {k: float(v) for k, v in live.grpc_calls.items()}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_process_reports_its_process_and_python_metrics(live: Live) -> None:
    memory = live.query("process_resident_memory_bytes")
    api = [s for s, _ in memory if s["job"] == "taskplatform-api"]
    assert len({s["pid"] for s in api}) == live.api_processes  # each API process, by pid
    workers = {s["instance"] for s, _ in memory if s["job"] == "taskplatform-worker"}
    assert len(workers) == live.workers and all(v > 0 for _, v in memory)
    grpc = {s["instance"] for s, _ in memory if s["job"] == "taskplatform-grpc"}
    assert len(grpc) == 1
    cpu = live.query('sum by (instance) (process_cpu_seconds_total{job=~"taskplatform-.*"})')
    assert len(cpu) == live.instances and all(v > 0 for _, v in cpu)
    assert len(live.query('python_info{job=~"taskplatform-.*"}')) == live.instances
    gc = {s["instance"] for s, _ in live.query("python_gc_collections_total")}
    assert gc == workers | grpc  # an API of several processes cannot read its siblings' collector


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_docs_and_openapi_requests_are_counted_by_their_route(live: Live) -> None:
    routes = {
        s["route"]: v
        for s, v in live.query('sum by (route) (taskplatform_api_requests_total{method="GET", status="200"})')
    }
    assert routes.get("/docs") == 1 and routes.get("/openapi.json") == 1
    assert "unmatched" not in routes


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rabbitmq_series_come_from_rabbitmq_prometheus(live: Live) -> None:
    if live.rabbitmq_source != "rabbitmq_prometheus":
        pytest.skip(
            "SKIPPED LOUDLY: the broker serves no rabbitmq_prometheus metrics (enable the plugin, or set "
            "TASKPLATFORM_TEST_RABBITMQ_METRICS_URL); the RabbitMQ panels and alerts were evaluated on a "
            "stand-in serving the same series for this test's queues"
        )
    queues = {s["queue"] for s, _ in live.query("rabbitmq_queue_messages") if live.ours(s)}
    assert f"{live.prefix}tasks.dlq.queue" in queues
