"""The running stack the dashboard and alert tests evaluate against (see
``test_dashboard_metrics.py``): a real Prometheus with the shipped rules, a two-process API and
two workers on PostgreSQL and RabbitMQ, driven with a mixed load, and what the store says after."""

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

from taskplatform.metrics.registry import UNKNOWN_TASK_TYPE, reason_label
from taskplatform.models import TERMINAL, DeadLetterStatus
from taskplatform.runtime import build_platform_topology, build_registry
from taskplatform.settings import PlatformSettings
from taskplatform.store import create_store
from taskplatform.store.deadletters import DeadLetterFilter
from tests.deploy.dashboard import load_dashboard, variables
from tests.deploy.live_load import drive
from tests.deploy.rabbitmq_series import QueueFigures, rabbitmq_prometheus_url
from tests.deploy.stack_files import (
    ALERTS_FILE,
    PROMETHEUS_FILE,
)
from tests.deploy.tools import require_command
from tests.support.services import RABBITMQ_URL, fresh_postgres_database, require_rabbitmq
from tests.support.tcp_proxy import free_port
from tests.support.worker_process import ROOT

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
    grpc_servers: int = 1
    grpc_calls: dict[str, int] = field(default_factory=dict)
    rabbitmq_source: str = ""
    submitted: int = 0
    dead_tasks: int = 0
    provoked: set[str] = field(default_factory=set)
    poison: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        """Platform scrape targets: the API (one, in multiprocess mode), gRPC, the workers."""
        return 1 + self.grpc_servers + self.workers

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


def label_values(live: Live, definition: str) -> list[str]:
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


def wait_until(
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


def run_live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:  # noqa: C901 - one stack, in order
    """API (2 processes), the gRPC front door, two workers, Prometheus; the load driven and
    settled; the store's figures read; the moment to evaluate at (Prometheus has scraped the
    final state)."""
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
        grpc_port, grpc_metrics_port = free_port(), free_port()
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
            grpc_env = {
                **env,
                "TASKPLATFORM_GRPC_PORT": str(grpc_port),
                "TASKPLATFORM_METRICS_PORT": str(grpc_metrics_port),
                "TASKPLATFORM_OUTBOX_RELAY_ENABLED": "false",
            }
            processes.append(
                _start([sys.executable, "-m", "taskplatform.cli", "grpc"], grpc_env, logs / "grpc.log")
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

            real = rabbitmq_prometheus_url()
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
                "taskplatform-grpc": ([f"127.0.0.1:{grpc_metrics_port}"], None),
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
                return len(up) == 6 and all(v == 1 for _, v in up) and len(ours) == 4

            wait_until("every target up and scraped", ready, 120, logs)
            started = time.time()
            ids = asyncio.run(drive(live, f"http://127.0.0.1:{api_port}", f"127.0.0.1:{grpc_port}", settings))
            topology = build_platform_topology(settings, build_registry(settings))
            drained = [topology.dead_letter_queue, *(q for wq in topology.work_queues for q in wq.queues)]

            counts: list[int | None] = []

            def settled() -> bool:
                # every task final, queues drained, and no new record for a second (a dead
                # message may be in a DLQ consumer's hands)
                counts.append(asyncio.run(_settled(store_url, ids, drained)))
                return len(counts) > 1 and counts[-1] is not None and counts[-1] == counts[-2]

            wait_until("every task settled, every dead letter stored", settled, 180, logs, every=1)

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

            wait_until("Prometheus has scraped the final figures", scraped, 60, logs, every=1)
            # increase() extrapolates a series to the end of its range by the time since its last
            # scrape (up to a second here), relative to the time it covers: evaluate once every
            # series covers SERIES_SECONDS, so the dead letters it reports round to the exact count
            time.sleep(max(0.0, started + SERIES_SECONDS - time.time()))
            live.at = time.time()
            live.range = f"{math.ceil(live.at - started) + 60}s"
            live.rate_interval = f"{max(RATE_INTERVAL_SECONDS, math.ceil(live.at - started) + 30)}s"
            for variable in variables(load_dashboard()):
                if variable["type"] != "query":
                    continue
                found = label_values(live, variable["definition"])
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
