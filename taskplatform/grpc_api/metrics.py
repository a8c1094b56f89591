"""Per-method gRPC metrics on the platform's registry: ``grpc_server_started_total``,
``grpc_server_handled_total`` (by status code) and ``grpc_server_handling_seconds``, with the
conventional labels. Every method's series exist at zero from the start (``OK`` and every code a
refusal can end with), so ``rate()`` sees a first call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from taskplatform.metrics.registry import Metrics

#: The codes the service answers with (``grpc_api/errors.py``), created at zero per method.
CODES = (
    "OK",
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "INTERNAL",
)


def kind(streaming: bool) -> str:
    return "server_stream" if streaming else "unary"


def prepare(metrics: Metrics, service: str, methods: dict[str, bool]) -> None:
    """The series of ``methods`` (name: server streaming) at zero."""
    for name, streaming in methods.items():
        labels = (kind(streaming), service, name)
        metrics.grpc_started.labels(*labels)
        metrics.grpc_handling.labels(*labels)
        for code in CODES:
            metrics.grpc_handled.labels(*labels, code)


def _code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> str:
    code = context.code()
    if code is None:
        if failed is None:
            return "OK"
        return (
            "CANCELLED"
            if isinstance(failed, BaseException) and not isinstance(failed, Exception)
            else "UNKNOWN"
        )
    return str(code.name) if isinstance(code, grpc.StatusCode) else str(code)


def measured_unary(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    metrics: Metrics,
    labels: tuple[str, str, str],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """``behavior`` counted: started, then handled by its code, and its duration."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics.grpc_started.labels(*labels).inc()
        start = time.perf_counter()
        failed: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            metrics.grpc_handled.labels(*labels, _code(context, failed)).inc()
            metrics.grpc_handling.labels(*labels).observe(time.perf_counter() - start)

    return call


def measured_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    metrics: Metrics,
    labels: tuple[str, str, str],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """A server stream counted like a unary call, over its whole life."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        metrics.grpc_started.labels(*labels).inc()
        start = time.perf_counter()
        failed: BaseException | None = None
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            failed = exc
            raise
        finally:
            metrics.grpc_handled.labels(*labels, _code(context, failed)).inc()
            metrics.grpc_handling.labels(*labels).observe(time.perf_counter() - start)

    return call
