"""``taskplatform.v1.Tasks``: the gRPC methods over the task commands HTTP uses.

Each call authenticates from its ``authorization`` metadata (the HTTP header's rules), needs the
submitter role, and runs within the caller's deadline (what is left of it bounds the store and
broker calls it makes). Refusals answer as ``grpc_api/errors.py`` lists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from pydantic import ValidationError

from taskplatform.api.auth import Authenticator, role_refusal
from taskplatform.api.schemas import bounded_items
from taskplatform.auth import Principal, Role
from taskplatform.commands import CommandForbidden, shown, visible_filter
from taskplatform.commands_bulk import BulkEntry
from taskplatform.errors import InvalidInputError
from taskplatform.grpc_api import convert
from taskplatform.grpc_api.errors import Refusal, invalid, refusal_of
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.grpc_api.v1 import tasks_pb2_grpc as pb_grpc
from taskplatform.grpc_api.watch import EventTap, WatchSlots, watch
from taskplatform.models import BackgroundTask
from taskplatform.ratelimit.submissions import caller_key, charge_key, check_weight, submission_weight
from taskplatform.runtime import Runtime
from taskplatform.store.base import encode_cursor
from taskplatform.submission import MAX_BULK_TASKS, BulkProblem, Submitted
from taskplatform.submission_bulk import item_problems, schema_problems

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A page's bytes at most: under a client's default 4 MiB receive limit, with room to spare.
MAX_PAGE_BYTES = 3 * 1_048_576


class RequestInvalid(Exception):
    """The request itself is invalid (as HTTP's 422 before the route runs)."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal.message)


class Malformed:
    """A request protobuf could not parse; the method answers INVALID_ARGUMENT."""

    def __init__(self, message: str, why: str) -> None:
        self.message = message
        self.why = why


def lenient(message: Any) -> Callable[[bytes], Any]:
    """A request parser for ``message`` that returns ``Malformed`` instead of raising."""
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, RecursionError) as exc:
            return Malformed(name, str(exc) or type(exc).__name__)

    return parse


def parsed(request: Any) -> None:
    """RequestInvalid when ``request`` is ``Malformed``."""
    if isinstance(request, Malformed):
        why = (
            f"the request cannot be parsed as {request.message} ({request.why}): nested over 100 "
            "levels, or not this message"
        )
        raise RequestInvalid(Refusal(grpc.StatusCode.INVALID_ARGUMENT, why))


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of metadata ``key`` the caller sent, if any."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def peer_host(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's address without its port (``ipv4:127.0.0.1:5000`` → ``127.0.0.1``)."""
    peer = context.peer() or ""
    _, _, address = peer.partition(":")
    host, _, _ = address.rpartition(":")
    return host or None


class TasksService(pb_grpc.TasksServicer):
    """The ``Tasks`` service of one process, over its runtime's task commands."""

    def __init__(self, runtime: Runtime, authenticator: Authenticator) -> None:
        self._runtime = runtime
        self._commands = runtime.commands
        self._authenticator = authenticator
        self.tap = EventTap(runtime.broker, runtime.topology.events_exchange)
        self.watch_slots = WatchSlots(runtime.settings.grpc_max_watches_per_caller)

    def _caller(self, context: grpc.aio.ServicerContext) -> Principal:
        """The authenticated caller, if it holds the submitter role (AuthenticationError,
        CommandForbidden)."""
        principal = self._authenticator.principal_of(metadata_value(context, "authorization"))
        refusal = role_refusal(principal, Role.SUBMITTER)
        if refusal is not None:
            raise CommandForbidden(refusal)
        return principal

    async def _answer(
        self, request: Any, context: grpc.aio.ServicerContext, body: Callable[[Principal], Awaitable[T]]
    ) -> T:
        """Authenticate, check the role and that ``request`` parsed, run ``body`` within the
        deadline; a refusal ends the call with its status (a bug: INTERNAL, logged)."""
        try:
            principal = self._caller(context)
            parsed(request)
            async with asyncio.timeout(context.time_remaining()):
                return await body(principal)
        except TimeoutError:
            answer = Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
        except Exception as exc:  # every known condition has its answer; the rest is a bug
            answer = _answer_to(exc)
        await context.abort_with_status(answer.status())
        raise AssertionError("abort_with_status returned")  # it raises: the call is over

    async def WatchTask(  # noqa: N802
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TaskUpdate]:
        """The task's state, then its events until it ends (``grpc_api/watch.py``). The stream
        runs until then, or until the caller cancels it or its deadline passes."""
        try:
            principal = self._caller(context)
            parsed(request)
            task_id = convert.task_id(request.task_id)

            async def read() -> BackgroundTask:
                return shown(principal, await self._commands.find(task_id, principal))

            with self.watch_slots.held(caller_key(principal.subject, peer_host(context))):
                async for update in watch(self.tap, task_id, read):
                    yield update
            return
        except Exception as exc:
            answer = _answer_to(exc)
        await context.abort_with_status(answer.status())

    # ------------------------------------------------------------------ methods
    async def CreateTask(  # noqa: N802  (the proto's name)
        self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTaskResponse:
        async def create(principal: Principal) -> pb.CreateTaskResponse:
            try:
                submit = convert.submit_request(request)
            except ValidationError as exc:
                raise RequestInvalid(invalid(exc)) from None
            key = convert.idempotency_key(request.idempotency_key)
            await self._charge(
                principal, context, [{"task_type": submit.task_type, "parameters": submit.parameters}]
            )
            # shielded: a deadline or a caller gone mid-way must not cut a stored task from its audit
            submitted = await asyncio.shield(self._commands.submit(submit, principal, idempotency_key=key))
            return _created(submitted)

        return await self._answer(request, context, create)

    async def CreateTasks(  # noqa: N802
        self, request: pb.CreateTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTasksResponse:
        async def create(principal: Principal) -> pb.CreateTasksResponse:
            count = len(request.tasks)
            if not 1 <= count <= MAX_BULK_TASKS:
                why = f"send 1 to {MAX_BULK_TASKS:,} tasks per request, not {count:,}"
                raise RequestInvalid(Refusal(grpc.StatusCode.INVALID_ARGUMENT, why, [("tasks", why)]))
            entries: list[BulkEntry] = []
            problems: list[BulkProblem] = []
            for index, item in enumerate(request.tasks):
                try:
                    entries.append(
                        BulkEntry(
                            index, convert.submit_request(item), convert.idempotency_key(item.idempotency_key)
                        )
                    )
                except ValidationError as exc:
                    problems.extend(schema_problems(index, exc))
                except InvalidInputError as exc:
                    problems.extend(item_problems(index, exc))
            # charged every task the request holds, valid or not (an invalid item as one), as HTTP does
            bodies = [{"task_type": e.request.task_type, "parameters": e.request.parameters} for e in entries]
            bodies += [{"task_type": ""}] * len({p.index for p in problems})
            await self._charge(principal, context, bodies, bulk=True)
            submitted = await asyncio.shield(
                self._commands.submit_bulk(entries, principal, problems=problems)
            )
            return pb.CreateTasksResponse(results=[_created(s) for s in submitted])

        return await self._answer(request, context, create)

    async def _charge(
        self,
        principal: Principal,
        context: grpc.aio.ServicerContext,
        bodies: list[dict[str, Any]],
        *,
        bulk: bool = False,
    ) -> None:
        """The submit rate limit, as HTTP applies it (one bucket per caller for both), charged
        every task ``bodies`` create (an executable's declared children too)."""
        if self._runtime.settings.api_submit_rate is None:
            return
        weight = sum(submission_weight(body, self._runtime.registry) for body in bodies)
        check_weight(self._runtime, weight)
        size = f"; this {'bulk ' if bulk else ''}submission creates {weight} tasks" if weight > 1 else ""
        await charge_key(self._runtime, caller_key(principal.subject, peer_host(context)), weight, size)

    async def GetTask(  # noqa: N802
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.Task:
        async def get(principal: Principal) -> pb.Task:
            task = await self._commands.find(convert.task_id(request.task_id), principal)
            return convert.task_message(shown(principal, task))

        return await self._answer(request, context, get)

    async def GetTaskStatus(  # noqa: N802
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TaskStatusReply:
        async def status(principal: Principal) -> pb.TaskStatusReply:
            task = await self._commands.find(convert.task_id(request.task_id), principal)
            return convert.status_reply(shown(principal, task))

        return await self._answer(request, context, status)

    async def ListTasks(  # noqa: N802
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        async def page(principal: Principal) -> pb.ListTasksResponse:
            try:
                query = convert.list_query(request)
            except ValidationError as exc:
                raise RequestInvalid(invalid(exc)) from None
            limit = convert.page_limit(request)
            filters = visible_filter(principal, convert.list_filter(query))
            return await self._page(principal, filters, limit, query.cursor, request.summary)

        return await self._answer(request, context, page)

    async def _page(
        self, principal: Principal, filters: Any, limit: int, cursor: str | None, summary: bool
    ) -> pb.ListTasksResponse:
        """A page as HTTP's list makes it: at most ``MAX_PAGE_BYTES`` of items (one at least)."""
        messages: list[pb.Task] = []

        async def fetch(count: int, after: str | None) -> tuple[list[BackgroundTask], str | None]:
            got = await self._runtime.store.list(filters, limit=count, cursor=after)
            return got.items, got.next_cursor

        def render(task: BackgroundTask) -> bytes:
            message = convert.task_message(shown(principal, task), summary=summary)
            messages.append(message)
            return bytes(message.SerializeToString())

        max_bytes = min(self._runtime.settings.api_max_page_bytes, MAX_PAGE_BYTES)
        parts, next_cursor = await bounded_items(
            fetch,
            limit=limit,
            cursor=cursor,
            max_bytes=max_bytes,
            render=render,
            cursor_of=lambda t: encode_cursor(t.created_at, t.id),
        )
        return pb.ListTasksResponse(tasks=messages[: len(parts)], next_cursor=next_cursor or "")

    async def CancelTask(  # noqa: N802
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        async def cancel(principal: Principal) -> pb.CancelTaskResponse:
            task = await asyncio.shield(self._commands.cancel(convert.task_id(request.task_id), principal))
            return pb.CancelTaskResponse(
                task_id=task.id,
                status=convert.STATUS_TO_PB[task.status],
                cancel_requested=task.cancel_requested,
            )

        return await self._answer(request, context, cancel)


def _created(submitted: Submitted) -> pb.CreateTaskResponse:
    task = submitted.task
    return pb.CreateTaskResponse(
        task_id=task.id,
        status=convert.STATUS_TO_PB[task.status],
        created=submitted.created,
        published=submitted.published,
    )


def _answer_to(exc: Exception) -> Refusal:
    """The status a failed call ends with: its refusal, or INTERNAL for a bug (logged)."""
    if isinstance(exc, RequestInvalid):
        return exc.refusal
    known = refusal_of(exc)
    if known is None:
        log.exception("a gRPC call failed", exc_info=exc)
        known = Refusal(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    return known
