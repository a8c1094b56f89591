"""The Grafana dashboard and the alert rules, as files and against a running platform.

As files: every platform metric they use is exposed, the dashboard has a datasource variable and
an import input, and its platform panels follow the job, instance and vhost variables.

Against the running platform: a real Prometheus (Debian's ``/usr/bin/prometheus``, scraping every
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

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskplatform.metrics import Metrics
from taskplatform.metrics.registry import UNKNOWN_TASK_TYPE, reason_label
from taskplatform.models import TERMINAL, DeadLetterStatus, TaskMessage, TaskStatus
from taskplatform.runtime import build_platform_topology, build_registry
from taskplatform.settings import PlatformSettings
from taskplatform.store import create_store
from taskplatform.store.deadletters import DeadLetterFilter
from tests.deploy.test_stack import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    PROMETHEUS_FILE,
    _alert_exprs,
    _dashboard_panels,
    metric_names_used,
)
from tests.deploy.tools import require_command
from tests.support.services import RABBITMQ_URL, fresh_postgres_database, require_rabbitmq
from tests.support.tcp_proxy import free_port
from tests.support.worker_process import ROOT

#: The rabbitmq_prometheus series the dashboard and alerts may use (per-queue series need
#: ``prometheus.return_per_object_metrics = true``, set in deploy/rabbitmq/rabbitmq.conf).
RABBITMQ_SERIES = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
}
DASHBOARD_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_SELECTOR = re.compile(r"(?<![\w:])(\w+)\{([^}]*)\}")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return data


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query of the dashboard."""
    return [(p, t) for p in _dashboard_panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = dashboard["templating"]["list"]
    return variables


# ---------------------------------------------------------------- as files
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


def test_the_dashboard_has_a_datasource_variable_and_an_import_input() -> None:
    dashboard = _dashboard()
    [source] = [v for v in _variables(dashboard) if v["name"] == "datasource"]
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
    for panel, target in _targets(dashboard):
        assert panel["datasource"] == DASHBOARD_DATASOURCE, panel["title"]
        assert target["datasource"] == DASHBOARD_DATASOURCE, panel["title"]


def test_platform_panels_follow_the_job_and_instance_variables_and_rabbitmq_ones_the_vhost() -> None:
    dashboard = _dashboard()
    names = {v["name"] for v in _variables(dashboard)}
    assert {"datasource", "job", "instance", "task_type", "vhost"} <= names
    for panel, target in _targets(dashboard):
        for name, matchers in _SELECTOR.findall(target["expr"]):
            where = f"{panel['title']}: {name}"
            if name.startswith(("taskplatform_", "process_", "python_")) or name == "up":
                assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, where
            elif name.startswith("rabbitmq_"):
                assert 'vhost=~"$vhost"' in matchers, where
            else:
                pytest.fail(f"{where}: a metric of neither the platform nor RabbitMQ")
        assert 'job="' not in target["expr"], f"{panel['title']}: a hard-coded job"
        if target["expr"].lstrip().startswith("sum by") and "rabbitmq_" in target["expr"]:
            assert "sum by (vhost, queue)" in target["expr"], f"{panel['title']}: not split by vhost"


def test_only_api_panels_count_requests_per_second() -> None:
    for panel, target in _targets(_dashboard()):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if unit == "reqps":
            assert "taskplatform_api_requests_total" in target["expr"], panel["title"]
        if "taskplatform_tasks_" in target["expr"] and "rate(" in target["expr"]:
            assert unit in ("suffix:tasks/s", "percentunit"), f"{panel['title']}: {unit}"


def test_with_bool_keeps_every_series_of_a_comparison() -> None:
    """The check itself (used on the alert expressions below)."""
    assert _with_bool('up{job!="a"} == 0 or absent(up)') == 'up{job!="a"} == bool 0 or absent(up)'
    assert _with_bool("(a / b) > 0.10 and c >= 20") == "(a / b) > bool 0.10 and c >= bool 20"
    assert _with_bool('x{q=~".*>.*"} > bool 1') == 'x{q=~".*>.*"} > bool 1'
    assert _with_bool("time() - max(y[5m]) < 120") == "time() - max(y[5m]) < bool 120"


def _with_bool(expr: str) -> str:
    """``expr`` with ``bool`` after each comparison (outside label matchers, ranges and strings):
    a comparison then returns 0 or 1 for every series instead of dropping the false ones."""
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        char = expr[i]
        if quote:
            out.append(char)
            if char == "\\":
                out.append(expr[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
            out.append(char)
        elif char in "{[":
            depth += 1
            out.append(char)
        elif char in "}]":
            depth -= 1
            out.append(char)
        elif depth == 0 and (op := re.match(r"==|!=|>=|<=|>|<", expr[i:])):
            out.append(op.group(0))
            i += len(op.group(0))
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------- the running platform
#: Grafana's $__rate_interval for a few hours at a 15 s scrape interval (the provisioned one):
#: at least this, and longer when the load took longer (as for a longer time range), so that
#: every rate covers the whole load.
RATE_INTERVAL_SECONDS = 120
#: Seconds of samples each dead-letter series holds (from its 0) when the test evaluates: then an
#: extrapolation over the last second of a range is under 3 % (the load kills at most 4 of a kind).
SERIES_SECONDS = 40


@dataclass
class StoreFigures:
    """What the store holds after the load: the truth the metrics must match."""

    statuses: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    dead_by_type_and_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_kinds: Counter[str] = field(default_factory=Counter)
    dead_pending: int = 0


@dataclass
class Live:
    prometheus: str
    at: float = 0.0
    range: str = ""
    rate_interval: str = ""
    prefix: str = ""
    task_types: frozenset[str] = frozenset()
    variables: dict[str, str] = field(default_factory=dict)
    store: StoreFigures = field(default_factory=StoreFigures)
    api_processes: int = 2
    workers: int = 2
    rabbitmq_source: str = ""
    submitted: int = 0
    dead_tasks: int = 0
    provoked: set[str] = field(default_factory=set)
    poison: list[str] = field(default_factory=list)

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """The vector ``expr`` evaluates to at ``at``: (labels, value) of each series."""
        response = httpx.get(
            f"{self.prometheus}/api/v1/query", params={"query": expr, "time": self.at}, timeout=10
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def substitute(self, expr: str) -> str:
        """``expr`` with the dashboard's variables as Grafana fills them in ("All" selected)."""
        text = expr.replace("$__rate_interval", self.rate_interval).replace("$__range", self.range)
        for name, value in self.variables.items():
            text = text.replace("${" + name + "}", value).replace("$" + name, value)
        assert "$" not in text, f"an unknown variable in {expr}"
        return text

    def ours(self, labels: dict[str, str]) -> bool:
        """A series of this test (queues of other tests on the broker are left out)."""
        queue = labels.get("queue")
        return queue is None or queue.startswith(self.prefix)


def _grafana_regex(values: Iterable[str]) -> str:
    """A multi-value variable with "All" selected, as Grafana writes it into a Prometheus query."""
    escaped = [re.sub(r"[\\$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), v) for v in values]
    return "(" + "|".join(escaped) + ")"


def _label_values(live: Live, definition: str) -> list[str]:
    """A ``label_values(selector, label)`` variable query through Prometheus's HTTP API."""
    match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", definition.strip())
    assert match, f"not a label_values query: {definition}"
    selector, label = match.group(1), match.group(2)
    params: dict[str, Any] = {"start": live.at - 3600, "end": live.at}
    if selector:
        params["match[]"] = live.substitute(selector)
    response = httpx.get(f"{live.prometheus}/api/v1/label/{label}/values", params=params, timeout=10)
    assert response.status_code == 200, response.text
    values: list[str] = response.json()["data"]
    return values


class QueueFigures(Collector):
    """A stand-in for rabbitmq_prometheus's per-queue series, for a broker without the plugin:
    messages ready and consumers of this test's queues, read over AMQP every half second (AMQP
    does not tell unacknowledged messages: 0; ``messages`` is ready + unacked)."""

    def __init__(self, queues: list[str], vhost: str) -> None:
        self._queues = queues
        self._vhost = vhost
        self._figures: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                connection = await aio_pika.connect(RABBITMQ_URL)
            except (aio_pika.exceptions.AMQPError, OSError):
                await asyncio.sleep(0.5)  # the broker restarts (another test's doing): try again
                continue
            try:
                await self._poll_over(connection)
            except (aio_pika.exceptions.AMQPError, OSError):
                continue  # the connection went away: a new one
            finally:
                with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
                    await connection.close()

    async def _poll_over(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        while not self._stop.is_set():
            for name in self._queues:
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:  # not declared (yet); it closed the channel
                    self._figures.pop(name, None)
                    channel = await connection.channel()
                    continue
                result = queue.declaration_result
                self._figures[name] = (int(result.message_count), int(result.consumer_count))
            await asyncio.sleep(0.5)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, f"{name} (stand-in)", labels=["vhost", "queue"])
            for name in sorted(RABBITMQ_SERIES)
        }
        for queue, (ready, consumers) in sorted(self._figures.items()):
            families["rabbitmq_queue_messages"].add_metric([self._vhost, queue], ready)
            families["rabbitmq_queue_messages_ready"].add_metric([self._vhost, queue], ready)
            families["rabbitmq_queue_messages_unacked"].add_metric([self._vhost, queue], 0)
            families["rabbitmq_queue_consumers"].add_metric([self._vhost, queue], consumers)
        return list(families.values())


def _rabbitmq_prometheus_url() -> str | None:
    url = os.environ.get(
        "TASKPLATFORM_TEST_RABBITMQ_METRICS_URL", "http://127.0.0.1:15692/metrics/per-object"
    )
    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return None
    return url if response.status_code == 200 and "rabbitmq_queue_messages" in response.text else None


def _wait(
    what: str, check: Callable[[], bool], timeout: float, logs: Path | None = None, every: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tails = ""
            if logs is not None:
                for log in sorted(logs.glob("*.log")):
                    tails += f"\n--- {log.name}\n" + "\n".join(
                        log.read_text(errors="replace").splitlines()[-20:]
                    )
            raise AssertionError(f"{what}: not within {timeout:.0f}s{tails}")
        time.sleep(every)


def _prometheus_config(targets: dict[str, tuple[list[str], str | None]], rules: Path) -> dict[str, Any]:
    """The shipped configuration with this test's targets and a one-second rhythm."""
    shipped = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    jobs = [job["job_name"] for job in shipped["scrape_configs"]]
    assert sorted(jobs) == sorted(targets), "a scrape job of the shipped configuration has no test target"
    scrape_configs = []
    for job in shipped["scrape_configs"]:
        hosts, path = targets[job["job_name"]]
        adapted = {k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "static_configs"}
        adapted["static_configs"] = [{"targets": hosts}]
        if path is not None:
            adapted["metrics_path"] = path
        if job["job_name"] == "rabbitmq":  # a busy broker's per-queue page is large
            adapted.update(scrape_interval="2s", scrape_timeout="2s")
        scrape_configs.append(adapted)
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _drive(live: Live, api: str, settings: PlatformSettings) -> list[str]:
    """The load: tasks through the API, poison messages straight to the work queue."""
    requests: list[dict[str, Any]] = [
        {"task_type": "test_noop", "parameters": {"value": i}} for i in range(20)
    ]
    requests += [{"task_type": "test_flaky", "parameters": {"fail_times": 1}}] * 5  # retried once
    requests += [{"task_type": "test_flaky", "parameters": {"fail_times": 10}}] * 3  # attempts-exhausted
    requests += [{"task_type": "test_boom", "parameters": {"value": i}} for i in range(4)]  # non-retryable
    requests += [{"task_type": "test_picky", "parameters": {"value": -i - 1}} for i in range(2)]  # permanent
    live.provoked |= {"attempts-exhausted", "non-retryable", "permanent-failure"}
    ids = []
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for body in requests:
            response = await client.post("/api/v1/tasks", json=body)
            assert response.status_code in (201, 202), response.text
            ids.append(response.json()["task_id"])
        for path in ("/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == 200
    live.submitted = len(ids)
    live.dead_tasks = sum(1 for r in requests if r["task_type"] in ("test_boom", "test_picky")) + 3

    topology = build_platform_topology(settings, build_registry(settings))
    routing_key = topology.routing_key_for("test_noop")

    def message(body: bytes, **headers: Any) -> aio_pika.Message:
        return aio_pika.Message(body, headers=headers or None, message_id=uuid.uuid4().hex)

    def naming_a_missing_task(task_type: str = "test_noop") -> TaskMessage:
        return TaskMessage(task_id=f"missing-{uuid.uuid4().hex}", task_type=task_type)

    def headers_of(task: TaskMessage) -> dict[str, Any]:
        return {"x-task-id": task.task_id, "x-task-type": task.task_type}

    def body_of(task: TaskMessage) -> bytes:
        return task.model_dump_json().encode()

    # each names a task of its own (a record is per task id, or per content for a malformed one)
    named = [naming_a_missing_task() for _ in range(5)]
    nobody = naming_a_missing_task("test_nobody_knows")
    poison = [
        (message(b'{"task_id": "half', **headers_of(named[0])), "bad-json"),
        # the same message again: it dies again, on its own
        (message(b'{"task_id": "half', **headers_of(named[0])), "bad-json"),
        (message(body_of(named[1])), "missing-header"),
        (message(b"[1, 2, 3]", **headers_of(named[2])), "invalid-body"),
        (message(body_of(named[4]), **headers_of(named[3])), "header-mismatch"),
        (message(body_of(named[4]), **headers_of(named[4])), "unknown-task"),
        (message(body_of(nobody), **headers_of(nobody)), "unknown-task-type"),
    ]
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.work_exchange)
        for item, reason in poison:
            await exchange.publish(item, routing_key=routing_key, mandatory=True)
            live.provoked.add(reason)
            live.poison.append(reason)
    finally:
        await connection.close()
    return ids


async def _store_figures(store_url: str, ids: list[str], task_types: frozenset[str]) -> StoreFigures:
    store = create_store(store_url)
    await store.open()
    try:
        figures = StoreFigures()
        for task_id in ids:
            task = await store.get(task_id)
            assert task is not None
            figures.statuses[task.status.value] += 1
            figures.retries += task.retry_count
        counts = await store.count_dead_letters(DeadLetterFilter())
        figures.dead_by_reason = dict(counts.by_reason)
        figures.dead_pending = (
            await store.count_dead_letters(DeadLetterFilter(status=DeadLetterStatus.PENDING))
        ).total
        cursor = None
        while True:
            page = await store.list_dead_letters(DeadLetterFilter(), limit=100, cursor=cursor)
            for record in page.items:
                label = record.task_type if record.task_type in task_types else UNKNOWN_TASK_TYPE
                figures.dead_by_type_and_reason[(label, reason_label(record.reason))] += 1
                figures.dead_kinds[record.kind] += 1
            cursor = page.next_cursor
            if cursor is None:
                return figures
    finally:
        await store.close()


async def _settled(store_url: str, ids: list[str], queues: list[str]) -> int | None:
    """The number of dead-letter records once every task is final and nothing waits in
    ``queues``, else None."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            if queue.declaration_result.message_count:
                return None
    finally:
        await connection.close()
    store = create_store(store_url)
    await store.open()
    try:
        tasks = [await store.get(i) for i in ids]
        if not all(t is not None and t.status in TERMINAL for t in tasks):
            return None
        return (await store.count_dead_letters(DeadLetterFilter())).total
    finally:
        await store.close()


async def _delete_topology(settings: PlatformSettings) -> None:
    topology = build_platform_topology(settings, build_registry(settings))
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        for queue in topology.queues:
            await channel.queue_delete(queue.name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:  # noqa: C901 - one stack, in order
    """API (2 processes), two workers, Prometheus; the load driven and settled; the store's
    figures read; the moment to evaluate at (Prometheus has scraped the final state)."""
    prometheus_bin = require_command("prometheus", "prometheus")
    require_rabbitmq()
    tmp = tmp_path_factory.mktemp("dashboard")
    logs = tmp / "logs"
    logs.mkdir()
    prefix = f"t{uuid.uuid4().hex[:10]}."
    with fresh_postgres_database("tp_dash") as store_url:
        values = {
            "amqp_url": RABBITMQ_URL,
            "store_url": store_url,
            "topology_prefix": prefix,
            "executor_modules": ["tests.support.executables"],
            "metrics_sample_seconds": 1.0,
            "auth": "disabled",
        }
        settings = PlatformSettings(**values)  # type: ignore[arg-type]
        task_types = frozenset(build_registry(settings).task_types())
        env = {
            **os.environ,
            **{
                f"TASKPLATFORM_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v)
                for k, v in values.items()
            },
            "TASKPLATFORM_LOG_LEVEL": "WARNING",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        api_port, worker_ports, prometheus_port = free_port(), [free_port(), free_port()], free_port()
        processes: list[subprocess.Popen[bytes]] = []
        stand_in: QueueFigures | None = None
        stand_in_server: Any = None
        try:
            api_env = {
                **env,
                "TASKPLATFORM_API_PORT": str(api_port),
                "TASKPLATFORM_API_PROCESSES": "2",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / "api-metrics"),
            }
            processes.append(
                _start([sys.executable, "-m", "taskplatform.cli", "api"], api_env, logs / "api.log")
            )
            for n, port in enumerate(worker_ports, 1):
                worker_env = {
                    **env,
                    "TASKPLATFORM_NODE_ID": f"worker-{n}",
                    "TASKPLATFORM_METRICS_PORT": str(port),
                    "TASKPLATFORM_OUTBOX_RELAY_ENABLED": "false",
                }
                processes.append(
                    _start(
                        [sys.executable, "-m", "taskplatform.cli", "worker"],
                        worker_env,
                        logs / f"worker-{n}.log",
                    )
                )

            real = _rabbitmq_prometheus_url()
            if real is not None:
                parts = urlsplit(real)
                rabbitmq_target: tuple[list[str], str | None] = ([parts.netloc], parts.path)
                source = "rabbitmq_prometheus"
            else:
                topology = build_platform_topology(settings, build_registry(settings))
                stand_in = QueueFigures(
                    [q.name for q in topology.queues], urlsplit(RABBITMQ_URL).path[1:] or "/"
                )
                registry = CollectorRegistry()
                registry.register(stand_in)
                stand_in.start()
                stand_in_port = free_port()
                stand_in_server, _thread = start_http_server(stand_in_port, "127.0.0.1", registry=registry)
                rabbitmq_target = ([f"127.0.0.1:{stand_in_port}"], "/metrics")
                source = "stand-in"
            instances = {
                "taskplatform-api": ([f"127.0.0.1:{api_port}"], None),
                "taskplatform-worker": ([f"127.0.0.1:{p}" for p in worker_ports], None),
                "rabbitmq": rabbitmq_target,
                "prometheus": ([f"127.0.0.1:{prometheus_port}"], None),
            }
            config = tmp / "prometheus.yml"
            config.write_text(yaml.safe_dump(_prometheus_config(instances, ALERTS_FILE)), encoding="utf-8")
            processes.append(
                _start(
                    [
                        prometheus_bin,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    ],
                    dict(os.environ),
                    logs / "prometheus.log",
                )
            )
            live = Live(
                prometheus=f"http://127.0.0.1:{prometheus_port}",
                prefix=prefix,
                task_types=task_types,
                rabbitmq_source=source,
            )

            def ready() -> bool:
                for process in processes:
                    assert process.poll() is None, f"{process.args} exited with {process.returncode}"
                try:
                    if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=5).status_code != 200:
                        return False  # not connected to the broker (yet)
                    live.at = time.time()
                    up = live.query("up")
                    ours = live.query("count by (instance) (taskplatform_dead_letters_total)")
                except (httpx.HTTPError, AssertionError):
                    return False
                # every target answers, and every platform process was scraped with its series at 0
                return len(up) == 5 and all(v == 1 for _, v in up) and len(ours) == 3

            _wait("every target up and scraped", ready, 120, logs)
            started = time.time()
            ids = asyncio.run(_drive(live, f"http://127.0.0.1:{api_port}", settings))
            topology = build_platform_topology(settings, build_registry(settings))
            drained = [topology.dead_letter_queue, *(q for wq in topology.work_queues for q in wq.queues)]

            counts: list[int | None] = []

            def settled() -> bool:
                # every task final, queues drained, and no new record for a second (a dead
                # message may be in a DLQ consumer's hands)
                counts.append(asyncio.run(_settled(store_url, ids, drained)))
                return len(counts) > 1 and counts[-1] is not None and counts[-1] == counts[-2]

            _wait("every task settled, every dead letter stored", settled, 180, logs, every=1)

            def scraped() -> bool:
                live.store = asyncio.run(_store_figures(store_url, ids, task_types))
                live.at = time.time()
                by_reason = {
                    s["reason"]: v
                    for s, v in live.query("sum by (reason) (taskplatform_dead_letters_total) > 0")
                }
                finished = live.query("sum(taskplatform_tasks_finished_total)")
                pending = live.query("max(taskplatform_dead_letters_pending)")
                running = live.query("sum(taskplatform_tasks_in_progress)")
                dlq = live.query(f'rabbitmq_queue_messages{{queue="{topology.dead_letter_queue}"}}')
                return (
                    by_reason == live.store.dead_by_reason
                    and finished == [({}, float(sum(live.store.statuses.values())))]
                    and pending == [({}, float(live.store.dead_pending))]
                    and running == [({}, 0.0)]
                    and [v for _, v in dlq] == [0.0]  # RabbitMQ's figures are current too
                )

            _wait("Prometheus has scraped the final figures", scraped, 60, logs, every=1)
            # increase() extrapolates a series to the end of its range by the time since its last
            # scrape (up to a second here), relative to the time it covers: evaluate once every
            # series covers SERIES_SECONDS, so the dead letters it reports round to the exact count
            time.sleep(max(0.0, started + SERIES_SECONDS - time.time()))
            live.at = time.time()
            live.range = f"{math.ceil(live.at - started) + 60}s"
            live.rate_interval = f"{max(RATE_INTERVAL_SECONDS, math.ceil(live.at - started) + 30)}s"
            for variable in _variables(_dashboard()):
                if variable["type"] != "query":
                    continue
                found = _label_values(live, variable["definition"])
                assert found, f"variable {variable['name']}: no values"
                live.variables[variable["name"]] = variable.get("allValue") or _grafana_regex(found)
            yield live
        finally:
            for process in reversed(processes):
                _stop(process)
            if stand_in_server is not None:
                stand_in_server.shutdown()
                stand_in_server.server_close()
            if stand_in is not None:
                stand_in.stop()
            with contextlib.suppress(Exception):
                asyncio.run(_delete_topology(settings))


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
    instances = _label_values(
        live, 'label_values(taskplatform_heartbeat_timestamp_seconds{job=~"$job"}, instance)'
    )
    assert len(instances) == 1 + live.workers
    assert sorted(_label_values(live, "label_values(taskplatform_heartbeat_timestamp_seconds, job)")) == [
        "taskplatform-api",
        "taskplatform-worker",
    ]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_dashboard_expression_returns_data(live: Live) -> None:
    empty = []
    for panel, target in _targets(_dashboard()):
        expr = live.substitute(target["expr"])
        values = [v for labels, v in live.query(expr) if live.ours(labels) and math.isfinite(v)]
        if not values:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_dashboard_counts_match_the_store(live: Live) -> None:
    panels = {p["title"]: p for p, _ in _targets(_dashboard())}

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
    assert values("Targets up") == [({}, float(1 + live.workers))]
    assert {v for _, v in values("Attempts running by instance")} == {0.0}
    assert len(values("Attempts running by instance")) == 1 + live.workers
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
    assert [str(r["expr"]) for r in rules] == _alert_exprs()
    expected = _alert_expectations(live)
    wrong = []
    for rule in rules:
        result = [(s, v) for s, v in live.query(_with_bool(str(rule["expr"]))) if live.ours(s)]
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
    assert sum(len(g["rules"]) for g in rules) == len(_alert_exprs())
    want = set(live.store.dead_by_type_and_reason)

    def firing() -> set[tuple[str, str]]:
        alerts = httpx.get(f"{live.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {
            (a["labels"]["task_type"], a["labels"]["reason"])
            for a in alerts
            if a["labels"]["alertname"] == "TaskplatformDeadLettersRecorded" and a["state"] == "firing"
        }

    _wait("the dead-letter alert fires for every task type and reason", lambda: firing() == want, 30)
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
def test_every_process_reports_its_process_and_python_metrics(live: Live) -> None:
    memory = live.query("process_resident_memory_bytes")
    api = [s for s, _ in memory if s["job"] == "taskplatform-api"]
    assert len({s["pid"] for s in api}) == live.api_processes  # each API process, by pid
    workers = {s["instance"] for s, _ in memory if s["job"] == "taskplatform-worker"}
    assert len(workers) == live.workers and all(v > 0 for _, v in memory)
    cpu = live.query('sum by (instance) (process_cpu_seconds_total{job=~"taskplatform-.*"})')
    assert len(cpu) == 1 + live.workers and all(v > 0 for _, v in cpu)
    assert len(live.query('python_info{job=~"taskplatform-.*"}')) == 1 + live.workers
    gc = {s["instance"] for s, _ in live.query("python_gc_collections_total")}
    assert gc == workers  # an API of several processes cannot read its siblings' collector


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
