"""A typed async client for ``taskplatform.v1.Tasks``, and a small command line over it.

``TasksClient`` hides the wire's shapes: parameters go as JSON text (integers stay exact), a
reply's result comes back as plain JSON values whether it travelled as a ``Struct`` or as text,
statuses are the platform's ``TaskStatus``, and a refusal is a ``GrpcApiError`` with its code, the
fields it names (``google.rpc.BadRequest``) and how long to wait (``google.rpc.RetryInfo``).

    async with TasksClient("127.0.0.1:50051", token=token) as tasks:
        created = await tasks.create("greet", {"name": "Gus"})
        done = await tasks.wait(created.task_id)          # watches the task until it ends
        print(done.status, done.result)

From a shell (``python -m taskplatform.grpc_api.client --help``):

    python -m taskplatform.grpc_api.client create greet '{"name": "Gus"}' --wait
    python -m taskplatform.grpc_api.client status <task id>
    python -m taskplatform.grpc_api.client watch <task id>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import BaseModel

from taskplatform.errors import TaskPlatformError
from taskplatform.grpc_api import convert
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.models import TERMINAL, TaskStatus

DEFAULT_TARGET = "127.0.0.1:50051"


class GrpcApiError(TaskPlatformError):
    """A call the server refused: ``code`` (a ``grpc.StatusCode``), its message, the request
    fields at fault (``violations``: field → why) and, when rate-limited, ``retry_after`` seconds."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.violations = dict(violations or {})
        self.retry_after = retry_after
        super().__init__(f"{code.name}: {message}")

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> GrpcApiError:
        """The error a failed call raised, with the details its status trailer carries."""
        violations: dict[str, str] = {}
        retry_after: float | None = None
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.update({v.field: v.description for v in bad.field_violations})
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        return cls(error.code(), error.details() or "", violations, retry_after)


class WatchEnded(TaskPlatformError):
    """A watch ended before its task did (the server went away mid-stream)."""


class UnknownStatus(TaskPlatformError):
    """The server answered a status this client does not know (a newer server)."""


def status_of(value: int) -> TaskStatus:
    """The platform's status for the wire's enum value (UnknownStatus for one it does not know)."""
    try:
        return convert.PB_TO_STATUS[value]
    except KeyError:
        raise UnknownStatus(
            f"the server answered task status {value}, which this client does not know: update taskplatform"
        ) from None


def body_of(struct: struct_pb2.Struct, text: str, present: bool) -> Any:
    """A reply's JSON body: the text form when the server sent one (too deep for a Struct),
    else the Struct (integral numbers as ints), else None."""
    if text:
        return json.loads(text)
    if present:
        return convert.from_struct(struct, "result")
    return None


@dataclass(frozen=True)
class Created:
    task_id: str
    status: TaskStatus
    created: bool
    """False: an earlier call with the same idempotency key created it."""
    published: bool
    """False: stored while the broker was unreachable; the outbox publishes it later."""


@dataclass(frozen=True)
class TaskState:
    """A task's status as ``GetTaskStatus`` answers it."""

    task_id: str
    status: TaskStatus
    result: Any
    progress: Any
    error_message: str | None
    error: pb.ErrorInfo | None
    updated_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, reply: pb.TaskStatusReply) -> TaskState:
        return cls(
            task_id=reply.task_id,
            status=status_of(reply.status),
            result=body_of(reply.result, reply.result_json, reply.HasField("result")),
            progress=body_of(reply.progress, reply.progress_json, reply.HasField("progress")),
            error_message=reply.error_message if reply.HasField("error_message") else None,
            error=reply.error if reply.HasField("error") else None,
            updated_at=reply.updated_at.ToDatetime() if reply.HasField("updated_at") else None,
        )


def request_for(
    task_type: str,
    parameters: BaseModel | Mapping[str, Any] | None = None,
    *,
    priority: int = 0,
    tags: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    user_id: str | None = None,
    target: pb.TaskTarget | None = None,
) -> pb.CreateTaskRequest:
    """One task's ``CreateTaskRequest``: the parameters as JSON text (integers stay exact)."""
    params = parameters.model_dump(mode="json") if isinstance(parameters, BaseModel) else parameters
    request = pb.CreateTaskRequest(
        task_type=task_type,
        parameters_json=json.dumps(dict(params or {})),
        priority=priority,
        tags=list(tags),
        idempotency_key=idempotency_key or "",
    )
    if metadata:
        request.metadata.update(dict(metadata))
    if user_id is not None:
        request.user_id = user_id
    if target is not None:
        request.target.CopyFrom(target)
    return request


def _created(reply: pb.CreateTaskResponse) -> Created:
    return Created(reply.task_id, status_of(reply.status), reply.created, reply.published)


class TasksClient:
    """``taskplatform.v1.Tasks`` over one channel; each call bounded by ``timeout`` seconds."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._own_channel = channel is None
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.TasksStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    async def __aenter__(self) -> TasksClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_channel:
            await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise GrpcApiError.of(error) from None

    async def create(
        self,
        task_type: str,
        parameters: BaseModel | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Created:
        """Submit a task (``parameters`` as a model or a JSON object; ``fields``: those of
        ``request_for``)."""
        reply = await self._call(self._stub.CreateTask, request_for(task_type, parameters, **fields))
        return _created(reply)

    async def create_many(self, requests: Sequence[pb.CreateTaskRequest]) -> list[Created]:
        """Submit many tasks (each made by ``request_for``), all or nothing: one refused item
        refuses the call, ``violations`` naming each as ``tasks[INDEX].FIELD``."""
        reply = await self._call(self._stub.CreateTasks, pb.CreateTasksRequest(tasks=list(requests)))
        return [_created(r) for r in reply.results]

    async def get(self, task_id: str) -> pb.Task:
        """The whole task as the wire carries it."""
        task: pb.Task = await self._call(self._stub.GetTask, pb.GetTaskRequest(task_id=task_id))
        return task

    async def status(self, task_id: str) -> TaskState:
        reply = await self._call(self._stub.GetTaskStatus, pb.GetTaskRequest(task_id=task_id))
        return TaskState.of(reply)

    async def list(self, request: pb.ListTasksRequest | None = None) -> pb.ListTasksResponse:
        """One page (``next_cursor`` empty on the last)."""
        page: pb.ListTasksResponse = await self._call(self._stub.ListTasks, request or pb.ListTasksRequest())
        return page

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task; its status after the request (a running one stops at its next check)."""
        reply = await self._call(self._stub.CancelTask, pb.CancelTaskRequest(task_id=task_id))
        return status_of(reply.status)

    async def watch(self, task_id: str, *, timeout: float | None = None) -> AsyncIterator[pb.TaskUpdate]:
        """The task's state, then its updates until it ends (``timeout``: the whole stream's
        deadline, none by default)."""
        call = self._stub.WatchTask(
            pb.WatchTaskRequest(task_id=task_id), metadata=self._metadata, timeout=timeout
        )
        try:
            async for update in call:
                yield update
        except grpc.aio.AioRpcError as error:
            raise GrpcApiError.of(error) from None
        finally:
            call.cancel()

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskState:
        """Watch the task until it ends; its final status (GrpcApiError DEADLINE_EXCEEDED after
        ``timeout`` seconds)."""
        ended = False
        async for update in self.watch(task_id, timeout=timeout):
            ended = status_of(update.status) in TERMINAL
        if not ended:
            raise WatchEnded(f"the watch of task {task_id} ended before the task did")
        return await self.status(task_id)


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m taskplatform.grpc_api.client",
        description="Call the taskplatform gRPC front door. The token comes from --token or "
        "TASKPLATFORM_TOKEN (`taskplatform token` mints one).",
    )
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--token", default=os.environ.get("TASKPLATFORM_TOKEN"))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="submit a task; prints its id")
    create.add_argument("task_type")
    create.add_argument("parameters", nargs="?", default="{}", help="a JSON object (default {})")
    create.add_argument("--idempotency-key")
    create.add_argument("--wait", action="store_true", help="watch it and print its final status")
    for name, what in (
        ("status", "print a task's status"),
        ("watch", "print a task's updates until it ends"),
    ):
        commands.add_parser(name, help=what).add_argument("task_id")
    commands.add_parser("cancel", help="cancel a task").add_argument("task_id")
    return parser


def _print_state(state: TaskState) -> None:
    shown = {"task_id": state.task_id, "status": state.status.value, "result": state.result}
    if state.error_message is not None:
        shown["error"] = state.error_message
    print(json.dumps(shown))


async def _run(args: argparse.Namespace) -> int:
    async with TasksClient(args.target, token=args.token, timeout=args.timeout) as tasks:
        if args.command == "create":
            try:
                parameters = json.loads(args.parameters)
            except json.JSONDecodeError as exc:
                print(f"error: the parameters are not JSON: {exc}", file=sys.stderr)
                return 2
            if not isinstance(parameters, dict):
                print("error: the parameters must be a JSON object", file=sys.stderr)
                return 2
            created = await tasks.create(args.task_type, parameters, idempotency_key=args.idempotency_key)
            if not args.wait:
                print(created.task_id)
                return 0
            state = await tasks.wait(created.task_id)
            _print_state(state)
            return 0 if state.status is TaskStatus.COMPLETED else 1
        if args.command == "status":
            _print_state(await tasks.status(args.task_id))
        elif args.command == "watch":
            async for update in tasks.watch(args.task_id):
                print(json.dumps({"event": update.event, "status": status_of(update.status).value}))
        else:
            print(json.dumps({"task_id": args.task_id, "status": (await tasks.cancel(args.task_id)).value}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except TaskPlatformError as exc:  # a refusal, a watch cut short, a status unknown here
        print(f"error: {exc}", file=sys.stderr)
        for field, why in getattr(exc, "violations", {}).items():
            print(f"  {field}: {why}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
