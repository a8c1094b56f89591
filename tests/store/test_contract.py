"""The TaskStore contract: one body, run against every backend (see conftest)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from taskplatform.errors import DuplicateTaskError
from taskplatform.models import ErrorInfo, OutboxStatus, TaskStatus, utcnow
from taskplatform.store import BaseTaskStore, InvalidCursorError, TaskFilter
from taskplatform.store.base import ClaimRequest, CompletionRequest, TaskStore
from tests.store.helpers import NODE, claim, close_in_time, make_task


async def test_created_task_reads_back_with_every_field(store: BaseTaskStore) -> None:
    task = make_task(
        user_id="u1",
        priority=7,
        tags=["a", "b"],
        parent_task_id="p1",
        idempotency_key="k1",
        parameters={"text": "héllo", "nested": {"n": [1, 2.5, None, True]}},
        last_event_id="evt-1",
        awaiting_children=True,
        replays=3,
    )
    await store.create(task)
    got = await store.get(task.id)
    assert got is not None
    assert got.model_dump(exclude={"created_at", "updated_at"}) == task.model_dump(
        exclude={"created_at", "updated_at"}
    )
    assert close_in_time(got.created_at, task.created_at)
    assert got.created_at.tzinfo is not None
    assert got.status is TaskStatus.QUEUED and got.outbox.status is OutboxStatus.PENDING
    assert got.last_event_id == "evt-1" and got.awaiting_children is True and got.replays == 3


async def test_every_backend_implements_the_task_store_port(store: BaseTaskStore) -> None:
    assert isinstance(store, TaskStore)


async def test_creating_an_existing_id_raises_duplicate(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    with pytest.raises(DuplicateTaskError):
        await store.create(task.model_copy())


async def test_get_of_unknown_id_is_none(store: BaseTaskStore) -> None:
    assert await store.get("does-not-exist") is None


async def test_get_visible_reads_only_the_owners_task_and_never_parses_a_foreign_one(
    store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = make_task(user_id="alice")
    theirs = make_task(user_id="bob", parameters={"big": "x" * 10_000})
    unowned = make_task(user_id=None)
    await store.create_many([mine, theirs, unowned])
    parsed: list[str] = []
    to_task = store._to_task  # type: ignore[attr-defined]

    def counting(row: object) -> object:
        task = to_task(row)
        parsed.append(task.id)
        return task

    monkeypatch.setattr(store, "_to_task", counting)
    got = await store.get_visible(mine.id, user_id="alice")
    assert got is not None and got.id == mine.id and got.user_id == "alice"
    assert parsed == [mine.id]
    # Another user's task, a task without an owner and a missing id: None, and nothing parsed.
    assert await store.get_visible(theirs.id, user_id="alice") is None
    assert await store.get_visible(unowned.id, user_id="alice") is None
    assert await store.get_visible("does-not-exist", user_id="alice") is None
    assert parsed == [mine.id]
    assert (await store.get_visible(theirs.id, user_id="bob")) is not None


async def test_list_is_newest_first_and_cursor_pages_cover_everything_once(store: BaseTaskStore) -> None:
    base = utcnow()
    # Pairs share a timestamp, so the id tie-breaker is exercised.
    created = [make_task(created_at=base - timedelta(seconds=i // 2)) for i in range(11)]
    await store.create_many(created)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list(limit=4, cursor=cursor)
        seen.extend(t.id for t in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    expected = sorted(created, key=lambda t: (t.created_at, t.id), reverse=True)
    assert seen == [t.id for t in expected]


async def test_list_filters_by_each_field_and_all_tags(store: BaseTaskStore) -> None:
    a = make_task(user_id="alice", tags=["red", "big"], task_type="generate_scene", priority=7)
    b = make_task(user_id="bob", tags=["red"], parent_task_id="parent-1")
    c = make_task(user_id="alice", tags=[])
    await store.create_many([a, b, c])
    await claim(store, c)

    async def ids(**kw: object) -> set[str]:
        return {t.id for t in (await store.list(TaskFilter.model_validate(kw), limit=50)).items}

    assert await ids(user_id="alice") == {a.id, c.id}
    assert await ids(task_type="generate_scene") == {a.id}
    assert await ids(parent_task_id="parent-1") == {b.id}
    assert await ids(status=TaskStatus.RUNNING) == {c.id}
    assert await ids(tags=("red",)) == {a.id, b.id}
    assert await ids(tags=("red", "big")) == {a.id}
    assert await ids(tags=("red",), user_id="bob") == {b.id}
    assert await ids(tags=("green",)) == set()
    assert await ids(priority=7) == {a.id}
    assert await ids(priority=0) == {b.id, c.id}
    assert await ids(priority=7, tags=("red",), user_id="bob") == set()


async def test_list_rejects_foreign_cursor_and_bad_limit(store: BaseTaskStore) -> None:
    with pytest.raises(InvalidCursorError):
        await store.list(cursor="not-a-cursor")
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_try_set_running_has_one_winner_and_bumps_version(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    won = await claim(store, task)
    assert won is not None
    assert won.status is TaskStatus.RUNNING and won.execution_node_id == NODE
    assert won.version == task.version + 1 and won.started_at is not None
    assert await claim(store, task, node="node-b") is None  # lease still live


async def test_concurrent_claims_have_exactly_one_winner(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    results = await asyncio.gather(*(claim(store, task, node=f"n{i}") for i in range(20)))
    assert sum(r is not None for r in results) == 1


async def test_claim_for_another_attempt_or_finished_task_loses(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    stale = await store.try_set_running(task.id, attempt=3, node_id=NODE, lease_until=utcnow())
    assert stale is None
    assert await claim(store, task) is not None
    assert await store.record_completion(task.id, node_id=NODE, attempt=0, result={"ok": True})
    assert await claim(store, task, node="node-b", lease=60) is None
    got = await store.get(task.id)
    assert got is not None and got.status is TaskStatus.COMPLETED


async def test_expired_lease_lets_another_node_take_over(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    first = await claim(store, task, lease=-1)  # already lapsed: its owner is presumed dead
    assert first is not None
    second = await claim(store, task, node="node-b")
    assert second is not None and second.execution_node_id == "node-b"
    assert second.version == first.version + 1
    # the old owner can no longer complete
    assert await store.record_completion(task.id, node_id=NODE, attempt=0, result={}) is None


async def test_completion_records_result_once(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    await claim(store, task)
    done = await store.record_completion(task.id, node_id=NODE, attempt=0, result={"summary": "s"})
    assert done is not None and done.status is TaskStatus.COMPLETED
    assert done.result == {"summary": "s"} and done.completed_at is not None and done.lease_until is None
    again = await store.record_completion(task.id, node_id=NODE, attempt=0, result={"summary": "other"})
    assert again is None
    got = await store.get(task.id)
    assert got is not None and got.result == {"summary": "s"} and got.version == done.version


async def test_progress_is_kept_only_from_the_owner_of_the_attempt(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    assert await store.record_progress(task.id, node_id=NODE, progress={"percent": 1}) is None  # not running
    await claim(store, task)
    kept = await store.record_progress(task.id, node_id=NODE, progress={"percent": 40.0, "message": "m"})
    assert kept is not None and kept.progress == {"percent": 40.0, "message": "m"}
    assert await store.record_progress(task.id, node_id="intruder", progress={"percent": 99}) is None
    assert await store.record_progress(task.id, node_id=NODE, attempt=1, progress={"percent": 98}) is None
    also = await store.record_progress(task.id, node_id=NODE, attempt=0, progress={"percent": 50.0})
    assert also is not None and also.version == kept.version + 1
    got = await store.get(task.id)
    assert got is not None and got.progress == {"percent": 50.0} and got.version == also.version


async def test_failure_dead_letters_with_error_info(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    await claim(store, task)
    error = ErrorInfo(type="ValueError", message="bad", traceback="tb", attempt=0, node_id=NODE)
    dead = await store.record_failure(
        task.id, node_id=NODE, attempt=0, error=error, status=TaskStatus.DEAD_LETTER
    )
    assert dead is not None and dead.status is TaskStatus.DEAD_LETTER
    assert dead.error_info is not None and dead.error_info.type == "ValueError"
    assert await store.record_completion(task.id, node_id=NODE, attempt=0, result={}) is None


async def test_count_by_status(store: BaseTaskStore) -> None:
    tasks = [make_task() for _ in range(3)]
    await store.create_many(tasks)
    await claim(store, tasks[0])
    assert await store.count_by_status() == {TaskStatus.QUEUED: 2, TaskStatus.RUNNING: 1}


async def test_batch_claim_wins_only_runnable_tasks_at_their_attempt(store: BaseTaskStore) -> None:
    queued = [make_task() for _ in range(4)]
    done = make_task()
    await store.create_many([*queued, done])
    await claim(store, done)
    await store.record_completion(done.id, node_id=NODE, attempt=0, result={})
    claims = [ClaimRequest(t.id, 0, 0) for t in queued[:3]]
    claims += [ClaimRequest(queued[3].id, 2, 0), ClaimRequest(done.id, 0, 0), ClaimRequest("missing", 0, 0)]
    won = await store.try_set_running_many(claims, node_id=NODE, lease_until=utcnow() + timedelta(seconds=30))
    assert set(won) == {t.id for t in queued[:3]}
    assert all(t.status is TaskStatus.RUNNING and t.execution_node_id == NODE for t in won.values())
    again = await store.try_set_running_many(
        claims, node_id="other", lease_until=utcnow() + timedelta(seconds=30)
    )
    assert again == {}


async def test_a_claim_naming_a_priority_wins_only_while_the_task_has_it(store: BaseTaskStore) -> None:
    batched, single = make_task(priority=5), make_task(priority=5)
    await store.create_many([batched, single])
    lease = utcnow() + timedelta(seconds=30)
    # a message published before a priority change names the old priority: it loses
    stale = [ClaimRequest(batched.id, 0, 3)]
    assert await store.try_set_running_many(stale, node_id=NODE, lease_until=lease) == {}
    assert (
        await store.try_set_running(single.id, attempt=0, node_id=NODE, lease_until=lease, priority=3) is None
    )
    still = await store.get(batched.id)
    assert still is not None and still.status is TaskStatus.QUEUED
    current = [ClaimRequest(batched.id, 0, 5)]
    assert set(await store.try_set_running_many(current, node_id=NODE, lease_until=lease)) == {batched.id}
    won = await store.try_set_running(single.id, attempt=0, node_id=NODE, lease_until=lease, priority=5)
    assert won is not None and won.status is TaskStatus.RUNNING


async def test_a_claim_naming_another_type_or_generation_never_wins(store: BaseTaskStore) -> None:
    batched, single, replayed = make_task(), make_task(), make_task()
    await store.create_many([batched, single, replayed])
    lease = utcnow() + timedelta(seconds=30)
    # a message of another type names the task (crafted, or corrupted): it loses, batched or not
    foreign = [
        ClaimRequest(batched.id, 0, 0, "test_noop", 0),
        ClaimRequest(replayed.id, 0, 0, "generate_summary", 1),
    ]
    assert await store.try_set_running_many(foreign, node_id=NODE, lease_until=lease) == {}
    assert (
        await store.try_set_running(single.id, attempt=0, node_id=NODE, lease_until=lease, task_type="x")
        is None
    )
    assert (
        await store.try_set_running(single.id, attempt=0, node_id=NODE, lease_until=lease, generation=2)
        is None
    )
    for task in (batched, single, replayed):
        still = await store.get(task.id)
        assert still is not None and still.status is TaskStatus.QUEUED
    own = [
        ClaimRequest(batched.id, 0, 0, "generate_summary", 0),
        ClaimRequest(replayed.id, 0, 0, "generate_summary", 0),
    ]
    assert set(await store.try_set_running_many(own, node_id=NODE, lease_until=lease)) == {
        batched.id,
        replayed.id,
    }
    won = await store.try_set_running(
        single.id, attempt=0, node_id=NODE, lease_until=lease, task_type="generate_summary", generation=0
    )
    assert won is not None and won.status is TaskStatus.RUNNING


async def test_batch_completion_records_only_the_owners_attempts(store: BaseTaskStore) -> None:
    tasks = [make_task() for _ in range(4)]
    await store.create_many(tasks)
    for t in tasks[:3]:
        await claim(store, t)
    await claim(store, tasks[3], node="other")
    items = [CompletionRequest(t.id, 0, {"n": i, "nested": {"ok": True}}) for i, t in enumerate(tasks)]
    items.append(CompletionRequest(tasks[0].id, 5, {"stale": True}))
    recorded = await store.record_completions(items, node_id=NODE)
    assert set(recorded) == {t.id for t in tasks[:3]}
    for i, t in enumerate(tasks[:3]):
        got = await store.get(t.id)
        assert got is not None and got.status is TaskStatus.COMPLETED
        assert got.result == {"n": i, "nested": {"ok": True}} and got.completed_at is not None
        assert recorded[t.id] == got.version
    other = await store.get(tasks[3].id)
    assert other is not None and other.status is TaskStatus.RUNNING and other.result is None
    assert await store.record_completions(items, node_id=NODE) == {}


async def test_overlapping_batch_claims_and_marks_do_not_deadlock(store: BaseTaskStore) -> None:
    for _ in range(3):
        tasks = [make_task() for _ in range(200)]
        await store.create_many(tasks)
        claims = [ClaimRequest(t.id, 0, 0) for t in tasks]
        lease = utcnow() + timedelta(seconds=30)
        a, b, _ = await asyncio.gather(
            store.try_set_running_many(claims, node_id="a", lease_until=lease),
            store.try_set_running_many(claims[::-1], node_id="b", lease_until=lease),
            store.mark_published([t.id for t in reversed(tasks)]),
        )
        assert not set(a) & set(b)
        assert set(a) | set(b) == {t.id for t in tasks}


async def test_lease_renewal_only_for_the_owner_and_it_blocks_takeover(store: BaseTaskStore) -> None:
    task = make_task()
    await store.create(task)
    await claim(store, task, lease=0.3)
    far = utcnow() + timedelta(seconds=60)
    assert not await store.renew_lease(task.id, node_id="other", attempt=0, lease_until=far)
    assert not await store.renew_lease(task.id, node_id=NODE, attempt=1, lease_until=far)
    assert await store.renew_lease(task.id, node_id=NODE, attempt=0, lease_until=far)
    await asyncio.sleep(0.4)  # the original lease would have lapsed by now
    assert await claim(store, task, node="other") is None


async def test_dead_lettering_for_an_attempt_spares_a_task_running_under_a_live_lease(
    store: BaseTaskStore,
) -> None:
    running, waiting = make_task(), make_task()
    await store.create_many([running, waiting])
    await claim(store, running)
    info = ErrorInfo(type="DeadLetter", message="unknown type", attempt=0)
    assert await store.mark_dead_letter(running.id, error=info, attempt=0) is None
    dead = await store.mark_dead_letter(waiting.id, error=info, attempt=0)
    assert dead is not None and dead.status is TaskStatus.DEAD_LETTER
    assert await store.mark_dead_letter(running.id, error=info) is not None  # no attempt: whoever finds it


async def test_reaping_a_lapsed_attempt_schedules_the_next_or_fails_it(store: BaseTaskStore) -> None:
    lapsed, live, exhausted = make_task(), make_task(), make_task()
    await store.create_many([lapsed, live, exhausted])
    await claim(store, lapsed, lease=-10)
    await claim(store, exhausted, lease=-10)
    await claim(store, live, lease=60)
    before = utcnow() - timedelta(seconds=5)
    found = {t.id for t in await store.list_lapsed(before=before, limit=10)}
    assert found == {lapsed.id, exhausted.id}
    info = ErrorInfo(type="WorkerLost", message="gone", attempt=0)
    later = utcnow() + timedelta(seconds=2)
    again = await store.reap(lapsed.id, attempt=0, before=before, error=info, next_attempt_at=later)
    assert again is not None and again.status is TaskStatus.RETRYING and again.retry_count == 1
    assert again.outbox.status is OutboxStatus.PENDING and close_in_time(again.next_attempt_at, later)
    failed = await store.reap(exhausted.id, attempt=0, before=before, error=info, next_attempt_at=None)
    assert failed is not None and failed.status is TaskStatus.FAILED and failed.completed_at is not None
    assert failed.execution_node_id is None and failed.error_info is not None
    # the caller then dead-letters it for that attempt, keeping the error
    dead = await store.mark_dead_letter(exhausted.id, error=None, attempt=0)
    assert dead is not None and dead.status is TaskStatus.DEAD_LETTER
    assert dead.error_info is not None and dead.error_info.type == "WorkerLost"
    # a live lease, or a stale attempt, is left alone
    assert await store.reap(live.id, attempt=0, before=before, error=info, next_attempt_at=None) is None
    assert await store.reap(lapsed.id, attempt=0, before=before, error=info, next_attempt_at=None) is None


async def test_cancel_request_cancels_waiting_tasks_and_flags_running_ones(store: BaseTaskStore) -> None:
    waiting, running, finished = make_task(), make_task(), make_task()
    await store.create_many([waiting, running, finished])
    await claim(store, running)
    await claim(store, finished)
    await store.record_completion(finished.id, node_id=NODE, attempt=0, result={})
    cancelled = await store.request_cancel(waiting.id)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED and cancelled.cancel_requested
    flagged = await store.request_cancel(running.id)
    assert flagged is not None and flagged.status is TaskStatus.RUNNING and flagged.cancel_requested
    untouched = await store.request_cancel(finished.id)
    assert (
        untouched is not None and untouched.status is TaskStatus.COMPLETED and not untouched.cancel_requested
    )
    assert await store.request_cancel("missing") is None
    assert await claim(store, waiting) is None  # its message is skipped when it arrives
    done = await store.record_cancelled(running.id, node_id=NODE, attempt=0)
    assert done is not None and done.status is TaskStatus.CANCELLED


async def test_dead_lettering_for_an_attempt_takes_a_task_that_failed_at_that_attempt(
    store: BaseTaskStore,
) -> None:
    kept, replaced = make_task(), make_task()
    await store.create_many([kept, replaced])
    error = ErrorInfo(type="ValueError", message="first", attempt=0, node_id=NODE)
    for t in (kept, replaced):
        await claim(store, t)
        failed = await store.record_failure(
            t.id, node_id=NODE, attempt=0, error=error, status=TaskStatus.FAILED
        )
        assert failed is not None and failed.status is TaskStatus.FAILED
    assert await store.mark_dead_letter(kept.id, error=None, attempt=1) is None  # another attempt
    dead = await store.mark_dead_letter(kept.id, error=None, attempt=0)
    assert dead is not None and dead.status is TaskStatus.DEAD_LETTER
    assert dead.error_info is not None and dead.error_info.message == "first"
    other = ErrorInfo(type="DeadLetter", message="second", attempt=0)
    dead = await store.mark_dead_letter(replaced.id, error=other, attempt=0)
    assert dead is not None and dead.error_info is not None and dead.error_info.message == "second"
    assert await store.mark_dead_letter(kept.id, error=None, attempt=0) is None  # already dead
