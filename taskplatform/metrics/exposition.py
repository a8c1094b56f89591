"""Serving metrics: the text a scrape gets, and the worker's own small HTTP server.

When the API runs several processes (``API_PROCESSES`` > 1) each writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and a scrape of any of them
adds all of them up.
"""

from __future__ import annotations

import logging
import os
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from taskplatform.metrics.registry import Metrics

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def render(metrics: Metrics) -> tuple[bytes, str]:
    """The scrape body and its content type: this process's metrics, or every process's in
    multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


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
