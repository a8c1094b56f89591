"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI

from taskplatform import __version__
from taskplatform.api.accesslog import AccessLog
from taskplatform.api.audit import router as audit_router
from taskplatform.api.auth import Authenticator, install_auth
from taskplatform.api.bulk import router as bulk_router
from taskplatform.api.deadletters import router as dead_letters_router
from taskplatform.api.docs import documented_app
from taskplatform.api.errors import install_error_handlers
from taskplatform.api.guard import RequestGuard
from taskplatform.api.limits import BodyBudget
from taskplatform.api.manage import router as manage_router
from taskplatform.api.metrics import RequestMetrics
from taskplatform.api.routes import health_router, tasks_router
from taskplatform.api.workers import router as workers_router
from taskplatform.heap import settle_startup_heap
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings

if TYPE_CHECKING:
    from taskplatform.grpc_api.server import GrpcServer

log = logging.getLogger(__name__)


def create_app(
    settings: PlatformSettings | None = None,
    *,
    runtime: Runtime | None = None,
    with_worker: bool = False,
    on_setup_failure: Callable[[], None] | None = None,
    settle_heap: bool = False,
    serve_grpc: bool = False,
) -> FastAPI:
    """The API. It owns ``runtime`` (built from ``settings`` when not given) for its lifetime.

    ``with_worker`` also consumes tasks in this process (the ``dev`` command).
    ``on_setup_failure`` (the CLI's servers): called if the broker setup fails once connected, to
    stop the server, so its supervisor restarts it instead of it serving on without its broker
    side. Raises ConfigError, before anything is served, when ``AUTH=jwt`` lacks its
    key material. ``settle_heap`` (the CLI's servers): once started, freeze the start-up heap
    (``heap.settle_startup_heap``: short collector pauses). ``serve_grpc`` (``dev``): also serve
    the gRPC front door on ``GRPC_HOST:GRPC_PORT`` over the same runtime for the app's lifetime.
    """
    settings = settings or (runtime.settings if runtime else PlatformSettings())
    authenticator = Authenticator.from_settings(settings)
    # Built now (no I/O until it starts), so the request metrics know their registry.
    rt = runtime or Runtime(settings, role="dev" if with_worker else "api", consume=with_worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = rt
        if not authenticator.enabled:
            log.warning(
                "authentication is disabled (TASKPLATFORM_AUTH=disabled): every request acts as an "
                "admin; never expose this API beyond your machine"
            )
        await rt.start(wait_for_broker=False)
        grpc_server = await _start_grpc(rt, authenticator) if serve_grpc else None
        if settle_heap:
            settle_startup_heap()
        watcher = asyncio.create_task(_on_failure(rt, on_setup_failure)) if on_setup_failure else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=settings.shutdown_grace_seconds)
            await rt.stop(grace=settings.shutdown_grace_seconds)

    app = documented_app(  # Swagger UI and ReDoc with their assets served here (offline)
        title="taskplatform",
        version=__version__,
        summary="Submit typed background tasks and follow them to completion.",
        lifespan=lifespan,
    )
    _install(app, rt, settings, authenticator)
    return app


def _install(app: FastAPI, rt: Runtime, settings: PlatformSettings, authenticator: Authenticator) -> None:
    """The app's error answers, authentication, routers and middleware (routes reach the task
    commands through the runtime)."""
    install_error_handlers(app)
    install_auth(app, authenticator)
    app.include_router(tasks_router)
    app.include_router(bulk_router)
    app.include_router(manage_router)
    app.include_router(dead_letters_router)
    app.include_router(audit_router)
    app.include_router(workers_router)
    app.include_router(health_router)
    app.add_middleware(
        RequestGuard,
        authenticator=authenticator,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.api_body_timeout_seconds,
        budget=BodyBudget(settings.api_max_buffered_bytes),
    )
    if settings.api_access_log:  # outside the guard: its refusals are logged too
        app.add_middleware(AccessLog)
    app.add_middleware(RequestMetrics, metrics=rt.metrics)  # added last: the outermost


async def _start_grpc(rt: Runtime, authenticator: Authenticator) -> GrpcServer:
    """The gRPC front door over ``rt``; the runtime is stopped again if it cannot listen."""
    from taskplatform.grpc_api.server import GrpcServer  # grpcio loads only where it serves

    server = GrpcServer(rt, authenticator)
    try:
        await server.start()
    except RuntimeError:
        await rt.stop(grace=0)
        raise
    return server


async def _on_failure(rt: Runtime, stop_server: Callable[[], None]) -> None:
    await rt.setup_failed.wait()
    log.critical("broker setup failed (%s); stopping so the supervisor restarts this process", rt.setup_error)
    stop_server()


def _terminate_self() -> None:
    signal.raise_signal(signal.SIGTERM)  # the server's graceful shutdown, then the signal's exit


def create_app_in_process() -> FastAPI:
    """The app of one of several API processes (``API_PROCESSES``): uvicorn starts each fresh,
    so it reads its settings from the environment and sets up logging itself."""
    from taskplatform.logsetup import configure_logging

    settings = PlatformSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings, on_setup_failure=_terminate_self, settle_heap=True)
