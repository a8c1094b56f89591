"""The worker's metrics server binds loopback unless ``METRICS_HOST`` says otherwise."""

from __future__ import annotations

import urllib.request

from taskplatform.metrics.exposition import MetricsServer
from taskplatform.metrics.registry import Metrics
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings


def test_the_metrics_server_binds_loopback_by_default() -> None:
    assert PlatformSettings().metrics_host == "127.0.0.1"
    server = MetricsServer(Metrics(), port=0)
    server.start()
    try:
        assert server._server is not None and server._server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:  # noqa: S310
            assert r.status == 200
    finally:
        server.stop()


def test_the_runtime_binds_the_configured_metrics_host() -> None:
    runtime = Runtime(PlatformSettings(metrics_port=0, metrics_host="127.0.0.2"), role="worker")
    assert runtime.metrics_server is not None
    runtime.metrics_server.start()
    try:
        assert runtime.metrics_server._server is not None
        assert runtime.metrics_server._server.server_address[0] == "127.0.0.2"
    finally:
        runtime.metrics_server.stop()
