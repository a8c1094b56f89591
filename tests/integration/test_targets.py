"""Aimed tasks against real RabbitMQ and PostgreSQL: a task aimed at a node runs there and nowhere
else, retries come back to it, it waits in the node's queue while the node is away (and runs
when it returns), and fails ``target-offline`` once the node stayed away past ``target_timeout``;
``mode: each`` runs a task once on every online worker carrying the labels, as a parent's
children; a target nothing can serve is refused before anything is stored."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from taskplatform.errors import UnreachableTargetError
from taskplatform.models import TaskStatus
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.models.target import TaskTarget
from taskplatform.runtime import Runtime
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.submission import SubmitRequest
from tests.support.executables import Flaky
from tests.support.runtime import eventually, running
from tests.support.services import fresh_postgres_database
from topology.spec import node_queue_name, selector_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEAT = 0.5


@pytest.fixture
def database() -> Iterator[str]:
    """A database of this test's own: the fleet registry holds only this test's workers."""
    with fresh_postgres_database("tp_targets") as url:
        yield url


@pytest.fixture
def fleet(make_runtime: Callable[..., Runtime], database: str) -> Callable[..., Runtime]:
    """Runtimes on this test's database: an API (``consume=False``) or worker nodes."""

    def make(node: str, *, labels: str = "", consume: bool = True, **settings: Any) -> Runtime:
        return make_runtime(
            role="worker" if consume else "api",
            consume=consume,
            store_url=database,
            node_id=node,
            worker_labels=labels,
            worker_heartbeat_seconds=BEAT,
            reaper_interval_seconds=0.3,
            **settings,
        )

    return make


@contextlib.asynccontextmanager
async def nodes(*runtimes: Runtime) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for runtime in runtimes:
            await stack.enter_async_context(running(runtime))
        yield


async def _delete_node_queues(rabbitmq: Any, runtime: Runtime, *names: str) -> None:
    channel = await rabbitmq.channel()
    for name in names:
        await channel.queue_delete(node_queue_name(name, runtime.settings.topology_prefix))
    await channel.close()


async def _online(api: Runtime, *names: str) -> bool:
    records = [await api.store.get_worker(n) for n in names]
    return all(r is not None and r.online_at(api.store.now()) for r in records)


async def _statuses(api: Runtime, ids: list[str]) -> list[TaskStatus | None]:
    return [t.status if (t := await api.store.get(i)) else None for i in ids]


def _aimed(task_type: str, target: dict[str, Any], **parameters: Any) -> SubmitRequest:
    return SubmitRequest(task_type=task_type, parameters=parameters, target=TaskTarget(**target))


async def test_a_task_aimed_at_a_node_runs_there_only_and_its_retries_come_back_to_it(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api, a, b = fleet("api-1", consume=False), fleet("node-a"), fleet("node-b")
    try:
        async with nodes(api, a, b):
            await eventually(lambda: _online(api, "node-a", "node-b"), timeout=15)
            aimed = await api.submitter.submit_many(
                [_aimed("test_noop", {"node": "node-b"}, value=i) for i in range(12)]
            )
            flaky = await api.submitter.submit(_aimed("test_flaky", {"node": "node-a"}, fail_times=2))
            ids = [s.task.id for s in aimed]
            assert all(s.published for s in aimed) and flaky.published

            async def done() -> bool:
                statuses = await _statuses(api, [*ids, flaky.task.id])
                return all(s is TaskStatus.COMPLETED for s in statuses)

            await eventually(done, timeout=30)
            ran_on = {(await api.store.get(i)).execution_node_id for i in ids}  # type: ignore[union-attr]
            assert ran_on == {"node-b"}
            retried = await api.store.get(flaky.task.id)
            assert retried is not None and retried.retry_count == 2 and retried.execution_node_id == "node-a"
            assert len(Flaky.started[flaky.task.id]) == 3  # every attempt came back to node-a's queue
    finally:
        await _delete_node_queues(rabbitmq, api, "node-a", "node-b")


async def test_an_aimed_task_waits_for_its_node_and_fails_target_offline_once_it_stays_away(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api = fleet("api-2", consume=False)
    try:
        async with running(api):
            away = fleet("node-away")
            async with running(away):
                await eventually(lambda: _online(api, "node-away"), timeout=15)
            # node-away stopped: it stays registered (stopped), its queue keeps what comes for it
            waits = await api.submitter.submit(_aimed("test_noop", {"node": "node-away"}, value=1))
            expires = await api.submitter.submit(
                _aimed("test_noop", {"node": "node-away", "target_timeout": 1.0}, value=2)
            )
            assert waits.published and expires.published

            async def dead() -> bool:
                return (await _statuses(api, [expires.task.id])) == [TaskStatus.DEAD_LETTER]

            await eventually(dead, timeout=15)
            failed = await api.store.get(expires.task.id)
            assert failed is not None and failed.error_info is not None
            assert failed.error_info.type == "TargetOffline"
            assert failed.error_info.reason == DeadLetterReason.TARGET_OFFLINE
            message = failed.error_info.message
            assert "node-away" in message and "target_timeout 1s" in message
            records = await api.store.list_dead_letters(DeadLetterFilter(task_id=expires.task.id))
            assert [r.reason for r in records.items] == [DeadLetterReason.TARGET_OFFLINE.value]
            assert (await _statuses(api, [waits.task.id])) == [TaskStatus.QUEUED]  # 300 s to wait

            # the node comes back: the waiting task runs there, the dead one's message is skipped
            async with running(fleet("node-away")):

                async def ran() -> bool:
                    return (await _statuses(api, [waits.task.id])) == [TaskStatus.COMPLETED]

                await eventually(ran, timeout=20)
            done = await api.store.get(waits.task.id)
            assert done is not None and done.execution_node_id == "node-away"
            assert (await _statuses(api, [expires.task.id])) == [TaskStatus.DEAD_LETTER]
    finally:
        await _delete_node_queues(rabbitmq, api, "node-away")


async def test_mode_each_runs_once_on_every_online_worker_with_the_labels(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api = fleet("api-3", consume=False)
    db1, db2 = fleet("db-1", labels="role=db"), fleet("db-2", labels="role=db,zone=b")
    web = fleet("web-1", labels="role=web")
    names = ["db-1", "db-2", "web-1"]
    try:
        async with nodes(api, db1, db2, web):
            await eventually(lambda: _online(api, *names), timeout=15)
            submitted = await api.submitter.submit(
                _aimed("test_noop", {"labels": {"role": "db"}, "mode": "each"}, value=7)
            )
            parent_id = submitted.task.id
            assert submitted.task.status is TaskStatus.RUNNING and submitted.task.awaiting_children

            async def finished() -> bool:
                return (await _statuses(api, [parent_id])) == [TaskStatus.COMPLETED]

            await eventually(finished, timeout=30)
            children = [t async for page in api.store.child_pages(parent_id) for t in page]
            by_node = {c.execution_node_id: c for c in children}
            assert sorted(by_node) == ["db-1", "db-2"]  # once on each, never on web-1
            assert all(c.status is TaskStatus.COMPLETED and c.result == {"value": 7} for c in children)
            parent = await api.store.get(parent_id)
            assert parent is not None and parent.sub_task_status_summary is not None
            assert parent.sub_task_status_summary.completed == 2 and parent.sub_task_status_summary.total == 2
    finally:
        await _delete_node_queues(rabbitmq, api, *names)


async def test_a_target_nothing_can_serve_is_refused_before_anything_is_stored(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api, web = fleet("api-4", consume=False), fleet("web-9", labels="role=web")
    try:
        async with nodes(api, web):
            await eventually(lambda: _online(api, "web-9"), timeout=15)
            before = await api.store.count_by_status()
            cases = [
                ({"node": "never-registered"}, "no worker node 'never-registered' has registered"),
                ({"labels": {"role": "db"}, "mode": "each"}, "no online worker carries labels role=db"),
            ]
            for target, message in cases:
                with pytest.raises(UnreachableTargetError, match=message):
                    await api.submitter.submit(_aimed("test_noop", target, value=1))
            # one bad target refuses the whole batch
            with pytest.raises(UnreachableTargetError) as refused:
                await api.submitter.submit_many(
                    [
                        _aimed("test_noop", {"node": "web-9"}, value=1),
                        _aimed("test_noop", {"node": "nowhere"}, value=2),
                    ]
                )
            assert [p for p, _ in refused.value.problems] == [1]
            assert await api.store.count_by_status() == before
    finally:
        await _delete_node_queues(rabbitmq, api, "web-9")


async def test_mode_any_runs_on_the_labelled_workers_only_and_a_late_worker_learns_the_selector(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api = fleet("api-5", consume=False)
    db1, db2 = fleet("any-db-1", labels="role=db"), fleet("any-db-2", labels="role=db")
    web = fleet("any-web-1", labels="role=web")
    names = ["any-db-1", "any-db-2", "any-web-1", "any-db-3"]
    any_db = {"labels": {"role": "db"}}
    try:
        async with running(api):
            async with nodes(db1, db2, web):
                await eventually(lambda: _online(api, *names[:3]), timeout=15)
                first = await api.submitter.submit_many(
                    [_aimed("test_noop", any_db, value=i) for i in range(20)]
                )
                assert all(s.published for s in first)
                ids = [s.task.id for s in first]

                async def done() -> bool:
                    return all(s is TaskStatus.COMPLETED for s in await _statuses(api, ids))

                await eventually(done, timeout=30)
                ran_on = [(await api.store.get(i)).execution_node_id for i in ids]  # type: ignore[union-attr]
                # only the labelled workers (which of them takes each is the broker's choice)
                assert set(ran_on) <= {"any-db-1", "any-db-2"} and len(ran_on) == 20
            # the db workers are gone; one that starts now reads the selector from the stream
            waiting = await api.submitter.submit(_aimed("test_noop", any_db, value=99))
            assert waiting.published
            late = fleet("any-db-3", labels="role=db")
            async with running(late):

                async def ran() -> bool:
                    return (await _statuses(api, [waiting.task.id])) == [TaskStatus.COMPLETED]

                await eventually(ran, timeout=20)
            done_late = await api.store.get(waiting.task.id)
            assert done_late is not None and done_late.execution_node_id == "any-db-3"
            # nobody with the labels comes back: the task fails target-offline
            stranded = await api.submitter.submit(
                _aimed("test_noop", {**any_db, "target_timeout": 1.0}, value=7)
            )

            async def dead() -> bool:
                return (await _statuses(api, [stranded.task.id])) == [TaskStatus.DEAD_LETTER]

            await eventually(dead, timeout=15)
            failed = await api.store.get(stranded.task.id)
            assert failed is not None and failed.error_info is not None
            assert "every worker carrying labels role=db and serving 'test_noop'" in failed.error_info.message
    finally:
        await _delete_node_queues(rabbitmq, api, *names)
        channel = await rabbitmq.channel()
        await channel.queue_delete(
            f"{api.settings.topology_prefix}tasks.select.{selector_id('test_noop', {'role': 'db'})}"
        )
        await channel.close()


async def test_a_selector_queue_deleted_under_its_workers_is_made_again_and_consumed_again(
    fleet: Callable[..., Runtime], rabbitmq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator deletes it, or the broker expires it: the publisher's "made already" is stale,
    # and the broker cancels the workers' consumers of it.
    api = fleet("api-6", consume=False)
    db = fleet("sel-db-1", labels="role=db")
    any_db = {"labels": {"role": "db"}}
    queue = f"{api.settings.topology_prefix}tasks.select.{selector_id('test_noop', {'role': 'db'})}"
    try:
        async with nodes(api, db):
            await eventually(lambda: _online(api, "sel-db-1"), timeout=15)
            first = await api.submitter.submit(_aimed("test_noop", any_db, value=1))

            async def completed(task_id: str) -> bool:
                return (await _statuses(api, [task_id])) == [TaskStatus.COMPLETED]

            await eventually(lambda: completed(first.task.id), timeout=20)
            channel = await rabbitmq.channel()
            await channel.queue_delete(queue)
            await channel.close()
            # ten publishes fail together: the first makes the queue again, once
            again = await api.submitter.submit_many([_aimed("test_noop", any_db, value=i) for i in range(10)])
            assert all(s.published for s in again), "the publisher made the queue again"
            for submitted in again:
                await eventually(lambda: completed(submitted.task.id), timeout=30)  # noqa: B023
                done = await api.store.get(submitted.task.id)
                assert done is not None and done.execution_node_id == "sel-db-1"
            assert caplog.text.count("is gone; declaring it again") == 1
    finally:
        await _delete_node_queues(rabbitmq, api, "sel-db-1")
        channel = await rabbitmq.channel()
        await channel.queue_delete(queue)
        await channel.close()


async def test_tasks_that_waited_in_a_node_queue_that_expired_run_when_the_node_comes_back(
    fleet: Callable[..., Runtime], rabbitmq: Any
) -> None:
    api = fleet("api-7", consume=False)
    try:
        async with running(api):
            async with running(fleet("node-lapsed")):
                await eventually(lambda: _online(api, "node-lapsed"), timeout=15)
            waiting = await api.submitter.submit_many(
                [_aimed("test_noop", {"node": "node-lapsed"}, value=i) for i in range(3)]
            )
            assert all(s.published for s in waiting)
            # the broker expires the queue nobody consumed, with the three messages in it
            await _delete_node_queues(rabbitmq, api, "node-lapsed")
            ids = [s.task.id for s in waiting]
            assert await _statuses(api, ids) == [TaskStatus.QUEUED] * 3
            async with running(fleet("node-lapsed")):

                async def ran() -> bool:
                    return await _statuses(api, ids) == [TaskStatus.COMPLETED] * 3

                await eventually(ran, timeout=20)
            done = [await api.store.get(i) for i in ids]
            assert all(t is not None and t.execution_node_id == "node-lapsed" for t in done)
    finally:
        await _delete_node_queues(rabbitmq, api, "node-lapsed")
