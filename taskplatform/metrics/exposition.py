"""Serving metrics: the text a scrape gets, and the worker's own small HTTP server.

When the API runs several processes (``API_PROCESSES`` > 1) each writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and a scrape of any of them
adds all of them up. prometheus-client's process collector reports only the process it runs in,
which would be whichever one answered the scrape; so in that mode ``process_*`` is read from
``/proc`` for every live process writing to the directory, one series per process with a
``pid`` label (sum them by instance). ``python_info`` is the same for all of them. The garbage
collector's counts live inside each interpreter and cannot be read from another process, so
``python_gc_*`` is left out in that mode.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from taskplatform.metrics.registry import Metrics

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus-client's multiprocess mode writes: ``counter_1234.db``,
#: ``gauge_livesum_1234.db``…, the writing process's id last.
_DB_FILE = re.compile(r"_(\d+)\.db$")


def render(metrics: Metrics) -> tuple[bytes, str]:
    """The scrape body and its content type: this process's metrics, or every process's in
    multiprocess mode."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        ProcessesCollector(directory, registry=registry)
        PlatformCollector(registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


class ProcessesCollector(Collector):
    """``process_*`` of every live process that writes metrics to ``directory`` (multiprocess
    mode), each sample labelled with its ``pid``. A process that exited leaves its files behind
    (its counts still add up) but no ``/proc`` entry, so it drops out here."""

    def __init__(
        self, directory: str, *, proc: str = "/proc", registry: CollectorRegistry | None = None
    ) -> None:
        self._directory = directory
        self._proc = proc
        if registry is not None:
            registry.register(self)

    def pids(self) -> list[int]:
        """The ids of the live processes that wrote files to the directory."""
        try:
            names = os.listdir(self._directory)
        except OSError:
            return []
        found = {int(m.group(1)) for m in map(_DB_FILE.search, names) if m}
        return sorted(pid for pid in found if os.path.isdir(os.path.join(self._proc, str(pid))))

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.pids():
            for family in _process_collector(pid, self._proc).collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                merged.samples.extend(
                    Sample(s.name, {**s.labels, "pid": str(pid)}, s.value) for s in family.samples
                )
        return list(families.values())


def _process_collector(pid: int, proc: str) -> ProcessCollector:
    return ProcessCollector(pid=lambda: pid, proc=proc, registry=None)


class MetricsServer:
    """``/metrics`` on a port of its own (workers; the API serves it on its own port), from a
    daemon thread: a scrape never waits for the event loop. Loopback unless ``host`` (the
    ``METRICS_HOST`` setting) says otherwise."""

    def __init__(self, metrics: Metrics, *, port: int, host: str = "127.0.0.1") -> None:
        self._metrics = metrics
        self._port = port
        self._host = host
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen by the system when asked for 0)."""
        return int(self._server.server_port) if self._server is not None else self._port

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self._port, self._host, registry=self._metrics.registry
        )
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
