"""The gRPC front door when things go wrong beneath it, against real RabbitMQ and PostgreSQL with a
real client: a bug answers INTERNAL without its text, a call past its deadline answers
DEADLINE_EXCEEDED and leaves no store call behind, a watch without a broker answers UNAVAILABLE,
a target nothing serves answers INVALID_ARGUMENT naming it; the server serves on after each."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from taskplatform.grpc_api.v1 import tasks_pb2 as pb
from taskplatform.models import BackgroundTask
from tests.grpc_api.front import ALICE, BOB, Front, Serve, auth, refused, violations
from tests.support.runtime import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


async def test_a_bug_answers_internal_without_its_text_and_is_logged(
    front: Front, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = (await front.create(parameters_json="{}")).task_id

    async def broken(*args: Any, **kwargs: Any) -> BackgroundTask:
        raise RuntimeError("the secret-bearing text of a bug")

    monkeypatch.setattr(front.runtime.store, "get_visible", broken)
    with caplog.at_level(logging.ERROR, logger="taskplatform.grpc_api.service"):
        unary = await refused(front.status(task_id))
        stream = await refused(_drain(front, task_id))
    for error in (unary, stream):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == "internal error; see the server log"
    assert caplog.text.count("a gRPC call failed") == 2  # logged, with the traceback
    assert "RuntimeError: the secret-bearing text of a bug" in caplog.text  # the text in the log only
    monkeypatch.undo()
    assert (await front.status(task_id)).task_id == task_id


async def test_a_call_past_its_deadline_answers_deadline_exceeded_and_its_store_call_is_cancelled(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = (await front.create(parameters_json="{}")).task_id
    cancelled = asyncio.Event()
    get_visible = front.runtime.store.get_visible

    async def slow(*args: Any, **kwargs: Any) -> BackgroundTask | None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await get_visible(*args, **kwargs)  # pragma: no cover  (never reached)

    monkeypatch.setattr(front.runtime.store, "get_visible", slow)
    call = front.stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=auth(ALICE), timeout=0.5)
    late = await refused(call)
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(cancelled.wait(), 5)  # the server gave up its store call too
    monkeypatch.undo()
    assert (await front.status(task_id)).task_id == task_id


async def test_a_watch_without_the_broker_answers_unavailable_and_works_once_it_is_back(
    serve: Serve, make_settings: Any
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.open()
    url = make_settings().amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    try:
        async with serve(amqp_url=url, consume=False) as front:
            task_id = (await front.create(parameters_json="{}")).task_id
            await proxy.close()  # before the first watch: the tap cannot set up
            down = await refused(_drain(front, task_id, timeout=15))
            assert down.code() == grpc.StatusCode.UNAVAILABLE, down
            assert "broker" in down.details()
            await proxy.open()
            seen: list[pb.TaskUpdate] = []

            async def watched() -> bool:  # the tap sets up once the connection is back
                call = front.stub.WatchTask(
                    pb.WatchTaskRequest(task_id=task_id), metadata=auth(ALICE), timeout=30
                )
                try:
                    seen.append(await call.read())
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # until it reconnects
                    return False
                finally:
                    call.cancel()
                return True

            await eventually(watched, timeout=30, every=0.5)
            assert seen[0].event == "snapshot" and seen[0].task.id == task_id
            tap = front.server.service.tap

            async def let_go() -> bool:
                return tap.watching == 0

            await eventually(let_go)  # the caller's cancel ended the server's watch
    finally:
        await proxy.close()


async def test_a_target_nothing_serves_answers_invalid_argument_naming_it(front: Front) -> None:
    nowhere = await refused(front.create(target=pb.TaskTarget(node="no-such-node")))
    assert nowhere.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot run where it is aimed" in nowhere.details()
    assert "no-such-node" in violations(nowhere)["target"]


async def _drain(front: Front, task_id: str, timeout: float = 10, who: str = ALICE) -> list[pb.TaskUpdate]:
    call = front.stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=auth(who), timeout=timeout)
    return [u async for u in call]


async def test_a_caller_past_its_watches_is_refused_and_others_are_not(serve: Serve) -> None:
    async with serve(grpc_max_watches_per_caller=2, consume=False) as front:  # the tasks stay queued
        task_id = (await front.create(parameters_json="{}")).task_id
        bobs = (await front.create(BOB, parameters_json="{}")).task_id
        service = front.server.service

        def watching(task: str, who: str = ALICE) -> Any:
            return front.stub.WatchTask(pb.WatchTaskRequest(task_id=task), metadata=auth(who), timeout=30)

        calls = [watching(task_id) for _ in range(2)]
        for call in calls:
            assert (await call.read()).event == "snapshot"  # both held open
        third = await refused(_drain(front, task_id))
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a caller may hold 2 at once" in third.details()
        bob = watching(bobs, BOB)
        assert (await bob.read()).task.id == bobs  # bob's slots are his own
        bob.cancel()
        calls[0].cancel()

        async def one_left() -> bool:
            return service.watch_slots.of("submit:user:alice") == 1 and service.tap.watching == 1

        await eventually(one_left)
        again = watching(task_id)
        assert (await again.read()).event == "snapshot"  # a slot freed is a slot to use
        for call in (again, calls[1]):
            call.cancel()
