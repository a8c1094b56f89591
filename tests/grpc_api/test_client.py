"""The typed gRPC client (``taskplatform.grpc_api.client``) and its command line, against the real
front door: results and statuses as the platform's types, refusals as GrpcApiError with their
fields and retry delay, watching to the end, and the shell's exit codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from taskplatform.grpc_api.client import (
    GrpcApiError,
    TasksClient,
    TaskState,
    UnknownStatus,
    WatchEnded,
    main,
    request_for,
    status_of,
)
from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.models import TaskStatus
from tests.grpc_api.front import ADA, ALICE, Front, Serve
from tests.support.executables import NoopParams

pytestmark = pytest.mark.integration


def client(front: Front, token: str | None = ALICE) -> TasksClient:
    return TasksClient(channel=front.channel, token=token, timeout=10)


async def test_create_wait_and_read_give_the_platforms_types(front: Front) -> None:
    tasks = client(front)
    created = await tasks.create("test_noop", NoopParams(value=12345), tags=["typed"], metadata={"k": 1})
    assert created.created and created.published and created.status is TaskStatus.QUEUED
    done = await tasks.wait(created.task_id, timeout=20)
    assert done.status is TaskStatus.COMPLETED and done.finished
    assert done.result == {"value": 12345}  # an int again, not the Struct's double
    assert done.error is None and done.error_message is None and done.updated_at is not None
    whole = await tasks.get(created.task_id)
    assert list(whole.tags) == ["typed"] and whole.id == created.task_id
    page = await tasks.list(pb.ListTasksRequest(tags=["typed"]))
    assert [t.id for t in page.tasks] == [created.task_id] and page.next_cursor == ""
    again = await tasks.create("test_noop", {"value": 1}, idempotency_key="typed-client-k-1")
    same = await tasks.create("test_noop", {"value": 1}, idempotency_key="typed-client-k-1")
    assert same.task_id == again.task_id and again.created and not same.created
    many = await tasks.create_many([request_for("test_noop", {"value": v}, tags=["many"]) for v in (1, 2)])
    assert [m.created for m in many] == [True, True] and len({m.task_id for m in many}) == 2
    with pytest.raises(GrpcApiError) as refused_whole:
        await tasks.create_many([request_for("test_noop"), request_for("test_noop", {"value": "x"})])
    assert set(refused_whole.value.violations) == {"tasks[1].parameters.value"}
    await tasks.aclose()  # the channel is the caller's: left open
    assert (await tasks.status(created.task_id)).status is TaskStatus.COMPLETED


async def test_refusals_are_grpc_api_errors_with_their_fields(front: Front) -> None:
    tasks = client(front)
    with pytest.raises(GrpcApiError) as unknown:
        await tasks.create("no_such_type", {})
    assert unknown.value.code is grpc.StatusCode.INVALID_ARGUMENT and "task_type" in unknown.value.violations
    with pytest.raises(GrpcApiError) as bad:
        await tasks.create("test_noop", {"value": "many"})
    assert "parameters.value" in bad.value.violations
    with pytest.raises(GrpcApiError) as missing:
        await tasks.status("no-such-task")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND and missing.value.retry_after is None
    with pytest.raises(GrpcApiError) as anonymous:
        await client(front, token=None).get("no-such-task")
    assert anonymous.value.code is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(GrpcApiError) as nowhere:
        await tasks.create("test_noop", target=pb.TaskTarget(node="no-such-node"))
    assert "no-such-node" in nowhere.value.violations["target"]
    with pytest.raises(GrpcApiError) as not_admin:
        await tasks.create("test_noop", user_id="bob")
    assert not_admin.value.code is grpc.StatusCode.PERMISSION_DENIED
    for_bob = await client(front, token=ADA).create("test_noop", user_id="bob")
    assert (await client(front, token=ADA).get(for_bob.task_id)).user_id == "bob"
    with pytest.raises(GrpcApiError) as watched:
        [u async for u in tasks.watch("no-such-task")]
    assert watched.value.code is grpc.StatusCode.NOT_FOUND


async def test_a_rate_limited_caller_is_told_how_long_to_wait(serve: Serve) -> None:
    async with serve(api_submit_rate="2/minute", api_submit_burst=2) as front:
        tasks = client(front)
        for _ in range(2):
            await tasks.create("test_noop")
        with pytest.raises(GrpcApiError) as limited:
            await tasks.create("test_noop")
    assert limited.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1


async def test_cancel_answers_the_status_after_it(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    async with serve(consume=False) as front:  # the tasks stay queued
        tasks = client(front)
        created = await tasks.create("test_noop")
        assert await tasks.cancel(created.task_id) is TaskStatus.CANCELLED
        other = await tasks.create("test_noop")
        argv = ["--target", f"127.0.0.1:{front.server.port}", "--token", ALICE, "cancel", other.task_id]
        code = await asyncio.to_thread(main, argv)
    assert code == 0 and json.loads(capsys.readouterr().out) == {
        "task_id": other.task_id,
        "status": "CANCELLED",
    }


class _Stream:
    """A WatchTask call that ends after a RUNNING update, the task still running."""

    def __init__(self) -> None:
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[pb.TaskUpdate]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[pb.TaskUpdate]:
        yield pb.TaskUpdate(event="snapshot", status=pb.TASK_STATUS_RUNNING)

    def cancel(self) -> None:
        self.cancelled = True


async def test_a_watch_that_ends_before_its_task_is_watch_ended(front: Front) -> None:
    tasks = client(front)
    stream = _Stream()

    class Stub:
        def WatchTask(self, *args: Any, **kwargs: Any) -> _Stream:  # noqa: N802
            return stream

    tasks._stub = Stub()  # type: ignore[assignment]
    with pytest.raises(WatchEnded, match="ended before the task did"):
        await tasks.wait("t1")
    assert stream.cancelled


def test_a_status_this_client_does_not_know_is_named() -> None:
    with pytest.raises(UnknownStatus, match="status 0, which this client does not know"):
        status_of(0)  # TASK_STATUS_UNSPECIFIED: never sent by a server of this version
    with pytest.raises(UnknownStatus, match="status 99"):
        TaskState.of(pb.TaskStatusReply(status=99))  # type: ignore[arg-type]  (a newer server's)


async def test_the_command_line_reports_a_watch_cut_short_in_one_line(
    front: Front, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cut(self: TasksClient, task_id: str, **kwargs: Any) -> TaskState:
        raise WatchEnded(f"the watch of task {task_id} ended before the task did")

    monkeypatch.setattr(TasksClient, "wait", cut)
    argv = ["--target", f"127.0.0.1:{front.server.port}", "--token", ALICE, "create", "test_noop", "--wait"]
    code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: the watch of task") and "Traceback" not in err


def test_a_reply_body_comes_from_its_text_form_or_its_struct() -> None:
    deep = TaskState.of(pb.TaskStatusReply(status=pb.TASK_STATUS_COMPLETED, result_json='{"a": [1]}'))
    assert deep.result == {"a": [1]} and deep.progress is None and deep.status is TaskStatus.COMPLETED
    shallow = pb.TaskStatusReply(status=pb.TASK_STATUS_FAILED, error_message="boom")
    shallow.progress.update({"percent": 50.0})
    state = TaskState.of(shallow)
    assert state.progress == {"percent": 50} and state.result is None and state.error_message == "boom"


async def test_the_command_line_creates_waits_watches_and_cancels(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve() as front:
        port = front.server.port
        base = ["--target", f"127.0.0.1:{port}", "--token", ALICE, "--timeout", "20"]

        async def run(*argv: str) -> tuple[int, str, str]:
            code = await asyncio.to_thread(main, [*base, *argv])
            out, err = capsys.readouterr()
            return code, out, err

        code, out, _ = await run("create", "test_noop", '{"value": 7}', "--wait")
        done = json.loads(out)
        assert code == 0 and done["status"] == "COMPLETED" and done["result"] == {"value": 7}
        code, out, _ = await run("status", done["task_id"])
        assert code == 0 and json.loads(out)["status"] == "COMPLETED"
        code, out, _ = await run("watch", done["task_id"])
        assert code == 0 and json.loads(out.splitlines()[-1]) == {"event": "snapshot", "status": "COMPLETED"}
        code, out, _ = await run("create", "test_boom", "{}", "--wait")  # fails: exit 1
        assert code == 1 and json.loads(out)["status"] in ("FAILED", "DEAD_LETTER")
        code, out, _ = await run("create", "test_noop")  # without --wait: the id alone
        assert code == 0 and (await client(front).status(out.strip())).task_id == out.strip()
        code, _, err = await run("cancel", done["task_id"])  # finished already
        assert code == 1 and "FAILED_PRECONDITION" in err
        assert (await run("create", "test_noop", "{nope"))[0] == 2
        assert (await run("create", "test_noop", "[1]"))[0] == 2
        code, _, err = await run("create", "test_noop", '{"value": "x"}')
        assert code == 1 and "INVALID_ARGUMENT" in err and "parameters.value" in err
