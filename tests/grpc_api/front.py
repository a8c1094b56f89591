"""The gRPC tests' server and client: one process serving HTTP and gRPC over one runtime, tokens,
and the helpers that read a refusal's status and details."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from taskplatform.grpc_api.server import GrpcServer
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.runtime import Runtime
from taskplatform.settings import PlatformSettings
from taskplatform.tasks.registry import ExecutableRegistry
from tests.api.tokens import SECRET, token
from tests.support.api import client_of, served
from tests.support.runtime import eventually

ALICE = token("alice")
BOB = token("bob")
CAROL = token("carol")  # only the crafted-input test submits as carol
ADA = token("ada", "admin")
NOBODY = token("nora", "viewer")  # a role below submitter
WAITING = (pb.TASK_STATUS_QUEUED, pb.TASK_STATUS_RUNNING, pb.TASK_STATUS_RETRYING)


def auth(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


class Front:
    """One process serving HTTP and gRPC over one runtime (a worker consuming in it too)."""

    def __init__(
        self, runtime: Runtime, http: httpx.AsyncClient, channel: grpc.aio.Channel, server: GrpcServer
    ) -> None:
        self.runtime = runtime
        self.server = server
        self.http = http
        self.channel = channel
        self.stub = pb_grpc.TasksStub(channel)

    async def create(self, who: str = ALICE, **fields: Any) -> pb.CreateTaskResponse:
        fields.setdefault("task_type", "test_noop")
        request = pb.CreateTaskRequest(**fields)
        response: pb.CreateTaskResponse = await self.stub.CreateTask(request, metadata=auth(who), timeout=10)
        return response

    async def status(self, task_id: str, who: str = ALICE) -> pb.TaskStatusReply:
        reply: pb.TaskStatusReply = await self.stub.GetTaskStatus(
            pb.GetTaskRequest(task_id=task_id), metadata=auth(who), timeout=10
        )
        return reply

    async def ended(self, task_id: str, who: str = ALICE) -> pb.TaskStatusReply:
        async def done() -> bool:
            reply = await self.status(task_id, who)
            return reply.status not in WAITING

        await eventually(done, timeout=20)
        return await self.status(task_id, who)


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Front]]


@pytest.fixture
def serve(
    make_settings: Callable[..., PlatformSettings],
    registry: ExecutableRegistry,
    rabbitmq: Any,
    postgres_database_url: str,
) -> Serve:
    """``async with serve(**settings) as front``: JWT authentication (HS256, SECRET), PostgreSQL."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Front]:
        values: dict[str, Any] = {
            "auth": "jwt",
            "jwt_secret": SECRET,
            "store_url": postgres_database_url,
            "grpc_port": 0,
        }
        consume = overrides.pop("consume", True)
        values.update(overrides)
        runtime = Runtime(
            make_settings(**values), role="dev", registry=registry, consume=consume, relay=False
        )
        async with served(runtime) as app, client_of(app) as http:
            server = GrpcServer(runtime)
            port = await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    yield Front(runtime, http, channel, server)
            finally:
                await server.stop(grace=1)

    return run


@pytest.fixture
async def front(serve: Serve) -> AsyncIterator[Front]:
    async with serve() as f:
        yield f


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with (it must end with one)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations the error's status details carry."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


def moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


async def updates(front: Front, task_id: str, who: str = ALICE) -> AsyncIterator[pb.TaskUpdate]:
    call = front.stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=auth(who), timeout=60)
    async for update in call:
        yield update
