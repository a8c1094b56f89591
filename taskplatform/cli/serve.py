"""``taskplatform api``, ``worker`` and ``dev``: the long-running servers, and the event loop
they run on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from taskplatform.cli.output import ExitCode
from taskplatform.errors import ConfigError
from taskplatform.heap import settle_startup_heap
from taskplatform.settings import PlatformSettings

if TYPE_CHECKING:
    from taskplatform.runtime import Runtime

log = logging.getLogger("taskplatform")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or "", every address): it may resolve to anything


def exposure_refused(args: argparse.Namespace, settings: PlatformSettings) -> str | None:
    """Why ``api`` / ``dev`` / ``grpc`` must not start: an API without authentication acts as an
    admin for every caller, so it stays on loopback unless the operator says otherwise in so many
    words (``dev`` serves both doors: both hosts count)."""
    hosts = {"api": [settings.api_host], "grpc": [settings.grpc_host]}.get(args.command)
    if hosts is None:  # dev
        hosts = [settings.api_host, *([settings.grpc_host] if settings.grpc_enabled else [])]
    exposed = [h for h in hosts if not is_loopback(h)]
    if settings.auth != "disabled" or not exposed:
        return None
    if getattr(args, "insecure_expose_without_auth", False):
        log.warning(
            "authentication is disabled and the API listens on %s: anyone who reaches it is an admin",
            exposed[0],
        )
        return None
    return (
        f"refusing to serve the API on {exposed[0]!r} with authentication disabled: anyone who "
        "reaches it would act as an admin. Set TASKPLATFORM_AUTH=jwt (with TASKPLATFORM_JWT_SECRET), "
        "bind a loopback address (--host 127.0.0.1), or pass --insecure-expose-without-auth"
    )


# ---------------------------------------------------------------- servers
def cmd_api(settings: PlatformSettings, *, with_worker: bool = False) -> int:
    import uvicorn

    from taskplatform.api.app import create_app
    from taskplatform.api.server import uvicorn_options

    loop = "asyncio" if loop_factory(settings) is None else "uvloop"
    options: dict[str, Any] = {
        "loop": loop,
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        **uvicorn_options(settings),  # time-outs and bounds against slow or many clients
    }
    if settings.api_processes > 1:
        if with_worker:
            raise ConfigError("API_PROCESSES above 1 is for 'taskplatform api'; run workers on their own")
        prepare_multiprocess_metrics()
        # Each process builds its own app from the environment (uvicorn needs an import string).
        with _startup_failure_reported(settings):
            uvicorn.run(
                "taskplatform.api.app:create_app_in_process",
                factory=True,
                workers=settings.api_processes,
                **options,
            )
            return 0
        return int(ExitCode.FAILED)
    server: uvicorn.Server | None = None

    def stop_serving() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(
        settings,
        with_worker=with_worker,
        on_setup_failure=stop_serving,
        settle_heap=True,
        serve_grpc=with_worker and settings.grpc_enabled,
    )
    server = uvicorn.Server(uvicorn.Config(app, **options))
    with _startup_failure_reported(settings):
        server.run()
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    failed = runtime is not None and runtime.setup_error is not None
    return 1 if failed or not server.started else 0  # never started: the port, the lifespan


@contextlib.contextmanager
def _startup_failure_reported(settings: PlatformSettings) -> Iterator[None]:
    """uvicorn exits (SystemExit 3) when it cannot start, the port taken, say: report it in one
    line (the log above says why) and let the command exit 1."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        yield
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        print(
            f"error: the API did not start on {settings.api_host}:{settings.api_port}; "
            "the log above says why",
            file=sys.stderr,
        )


def prepare_multiprocess_metrics() -> None:
    """Give the API processes a directory to share their metrics in (prometheus-client's
    multiprocess mode): ``PROMETHEUS_MULTIPROC_DIR`` if set, else a fresh one, emptied first (its
    files are the previous run's counts)."""
    from taskplatform.metrics.exposition import MULTIPROC_ENV

    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="taskplatform-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))
    os.environ[MULTIPROC_ENV] = directory
    log.info("API metrics of every process are shared in %s", directory)


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(runtime: Runtime, stop: asyncio.Event, failed: str) -> bool:
    """Wait for ``stop`` or the runtime's broker setup to fail; False (logged at CRITICAL with
    ``failed``, which has a ``%s`` for the error) when the setup failed."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(runtime.setup_failed.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    if runtime.setup_error is not None:
        log.critical(failed, runtime.setup_error)
        return False
    return True


async def run_worker(settings: PlatformSettings) -> int:
    """Run a worker until SIGTERM/SIGINT, then shut down gracefully (0); or until its broker
    setup fails (1)."""
    from taskplatform.runtime import Runtime

    runtime = Runtime(settings, role="worker", consume=True)
    stop = _stop_on_signals()
    await runtime.start(wait_for_broker=False)
    settle_startup_heap()
    try:
        failed = "cannot consume: setup failed (%s); exiting so the supervisor restarts this worker"
        if not await _until_stopped(runtime, stop, failed):
            return 1
        log.info("shutting down: finishing in-flight tasks (up to %.0fs)", settings.shutdown_grace_seconds)
        return 0
    finally:
        await runtime.stop(grace=settings.shutdown_grace_seconds)


def loop_factory(settings: PlatformSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or when installed and the setting is ``auto``; else asyncio's."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise ConfigError("TASKPLATFORM_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_async(settings: PlatformSettings, coro: Coroutine[Any, Any, int | None]) -> int | None:
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(coro)


async def run_grpc(settings: PlatformSettings) -> int:
    """Serve the gRPC front door (and the outbox relay) until SIGTERM/SIGINT, then drain calls
    in progress for up to ``SHUTDOWN_GRACE_SECONDS`` (0); 1 when it cannot listen or its broker
    setup fails."""
    from taskplatform.grpc_api.server import GrpcServer
    from taskplatform.runtime import Runtime

    runtime = Runtime(settings, role="api")
    server = GrpcServer(runtime)  # ConfigError for bad authentication settings, before any I/O
    stop = _stop_on_signals()
    await runtime.start(wait_for_broker=False)
    serving = False
    try:
        try:
            await server.start()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        serving = True
        settle_startup_heap()
        failed = "broker setup failed (%s); exiting so the supervisor restarts this process"
        if not await _until_stopped(runtime, stop, failed):
            return 1
        log.info("shutting down: draining gRPC calls (up to %.0fs)", settings.shutdown_grace_seconds)
        return 0
    finally:
        if serving:
            await server.stop(grace=settings.shutdown_grace_seconds)
        await runtime.stop(grace=settings.shutdown_grace_seconds)


def cmd_grpc(settings: PlatformSettings) -> int:
    return run_async(settings, run_grpc(settings)) or 0


def cmd_worker(settings: PlatformSettings) -> int:
    return run_async(settings, run_worker(settings)) or 0
