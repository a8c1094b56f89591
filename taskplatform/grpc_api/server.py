"""The gRPC server: the ``Tasks`` service, standard health checking (``grpc.health.v1``) and
server reflection, on ``GRPC_HOST:GRPC_PORT``, over a runtime owned by its caller.

Plain TCP: put a TLS-terminating proxy in front (or bind loopback) as for the HTTP API.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taskplatform.api.auth import Authenticator
from taskplatform.grpc_api import metrics as grpc_metrics
from taskplatform.grpc_api.service import TasksService, lenient
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.metrics.registry import Metrics
from taskplatform.runtime import Runtime

log = logging.getLogger(__name__)

#: The full name of the tasks service (health checks and reflection name it).
TASKS_SERVICE = pb.DESCRIPTOR.services_by_name["Tasks"].full_name


def method_handlers(servicer: TasksService, metrics: Metrics | None = None) -> dict[str, Any]:
    """The service's handlers, as the generated ``add_TasksServicer_to_server`` makes them but
    with a request parser that never raises: a request protobuf cannot parse (nested past its
    100 levels, or not this message at all) reaches the method as ``Malformed``, which answers
    INVALID_ARGUMENT, instead of failing inside gRPC."""
    handlers: dict[str, Any] = {}
    methods = pb.DESCRIPTOR.services_by_name["Tasks"].methods
    if metrics is not None:
        grpc_metrics.prepare(metrics, TASKS_SERVICE, {m.name: m.server_streaming for m in methods})
    for method in methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name)
        if metrics is not None:
            labels = (grpc_metrics.kind(method.server_streaming), TASKS_SERVICE, method.name)
            measure = grpc_metrics.measured_stream if method.server_streaming else grpc_metrics.measured_unary
            behavior = measure(behavior, metrics, labels)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behavior,
            request_deserializer=lenient(request),
            response_serializer=response.SerializeToString,
        )
    return handlers


class GrpcServer:
    """One process's gRPC front door: ``start`` binds and serves, ``stop`` drains."""

    def __init__(self, runtime: Runtime, authenticator: Authenticator | None = None) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.authenticator = authenticator or Authenticator.from_settings(settings)
        self.host = settings.grpc_host
        self.port = settings.grpc_port
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a shared one
            ],
            maximum_concurrent_rpcs=settings.api_max_connections,  # beyond: RESOURCE_EXHAUSTED
        )
        self.service = TasksService(runtime, self.authenticator)
        handlers = method_handlers(self.service, runtime.metrics)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(TASKS_SERVICE, handlers),)
        )
        self._server.add_registered_method_handlers(TASKS_SERVICE, handlers)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = (
            TASKS_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self._server)

    async def start(self) -> int:
        """Bind and serve; the port bound (the one asked for, or the one found for port 0).
        RuntimeError when it cannot bind."""
        address = f"{self.host}:{self.port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"the gRPC server cannot listen on {address}: {exc}") from exc
        await self._server.start()
        for service in ("", TASKS_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC serving on %s:%d (%s, health, reflection)", self.host, self.port, TASKS_SERVICE)
        return self.port

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING, refuse new calls, let calls in progress finish for up to ``grace``
        seconds, then cancel the rest."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        await self.service.tap.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()
