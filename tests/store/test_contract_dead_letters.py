"""Dead-letter records: upserts, marks and their guards, on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from taskplatform.models import DeadLetter, DeadLetterStatus, ErrorInfo, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.deadletters import RECORD_TIMES, UpsertOutcome
from tests.store.helpers import close_in_time, make_dead_letter


def assert_same_record(got: DeadLetter | None, expected: DeadLetter) -> None:
    """Equal, with the record's times within a millisecond (MongoDB keeps milliseconds)."""
    assert got is not None
    assert got.model_dump(exclude=set(RECORD_TIMES)) == expected.model_dump(exclude=set(RECORD_TIMES))
    for name in RECORD_TIMES:
        assert close_in_time(getattr(got, name), getattr(expected, name)), name


async def test_upserting_a_new_id_creates_the_record_with_every_field(store: BaseTaskStore) -> None:
    record = make_dead_letter(body="gA==", body_encoding="base64", generation=2)
    stored, outcome = await store.upsert_dead_letter(record)
    assert outcome is UpsertOutcome.CREATED
    assert_same_record(stored, record)
    got = await store.get_dead_letter(record.id)
    assert_same_record(got, record)
    assert got is not None and got.status is DeadLetterStatus.PENDING
    assert got.times_seen == 1 and got.deaths == 1 and got.version == 1
    for name in RECORD_TIMES:
        value = getattr(got, name)
        assert value is None or value.utcoffset() == timedelta(0), name
    assert got.x_death[0].time is not None and got.x_death[0].time.utcoffset() == timedelta(0)


async def test_get_of_an_unknown_dead_letter_is_none(store: BaseTaskStore) -> None:
    assert await store.get_dead_letter("no-such-record") is None


async def test_the_same_generation_again_is_a_duplicate_counted_in_times_seen(store: BaseTaskStore) -> None:
    first = make_dead_letter(last_seen_at=utcnow() - timedelta(minutes=5))
    await store.upsert_dead_letter(first)
    stored_first = await store.get_dead_letter(first.id)  # as stored: BSON keeps milliseconds
    assert stored_first is not None
    later = first.model_copy(
        update={"last_seen_at": utcnow(), "reason": "delivery_limit", "body": "other", "attempt": 9}
    )
    after, outcome = await store.upsert_dead_letter(later)
    assert outcome is UpsertOutcome.DUPLICATE
    assert after.times_seen == 2 and after.deaths == 1 and after.version == 2
    assert close_in_time(after.last_seen_at, later.last_seen_at)
    # the content is the first death's
    assert after.reason == first.reason and after.body == first.body and after.attempt == first.attempt
    assert close_in_time(after.first_seen_at, first.first_seen_at)
    assert after.updated_at >= stored_first.updated_at  # the version bump above is the change
    # an older copy of the same death does not move last_seen_at back
    earlier = first.model_copy(update={"last_seen_at": utcnow() - timedelta(hours=1)})
    again, outcome = await store.upsert_dead_letter(earlier)
    assert outcome is UpsertOutcome.DUPLICATE
    assert again.times_seen == 3 and again.version == 3
    assert close_in_time(again.last_seen_at, later.last_seen_at)
    assert_same_record(await store.get_dead_letter(first.id), again)


async def test_a_newer_generation_reopens_the_record_with_the_new_death(store: BaseTaskStore) -> None:
    first = make_dead_letter(
        first_seen_at=utcnow() - timedelta(hours=2), last_seen_at=utcnow() - timedelta(hours=2)
    )
    await store.upsert_dead_letter(first)
    replayed_at = utcnow() - timedelta(hours=1)
    assert await store.mark_dead_letter_replayed(first.id, generation=0, at=replayed_at) is not None
    death = make_dead_letter(
        task_id=first.id,
        generation=1,
        task_type="generate_scene",
        user_id="bob",
        reason="non_retryable",
        error_type="KeyError",
        error_info=ErrorInfo(type="KeyError", message="gone", attempt=0),
        attempt=0,
        exchange="tasks.delay",
        routing_key="generate_scene",
        body="AAE=",
        body_encoding="base64",
        properties={"message_id": "m2"},
        headers={"x-dead-reason": "non_retryable"},
        x_death=[],
        first_seen_at=utcnow(),
        last_seen_at=utcnow(),
        # a new record's bookkeeping must not leak into the reopened one
        replay_count=0,
        status=DeadLetterStatus.PENDING,
    )
    after, outcome = await store.upsert_dead_letter(death)
    assert outcome is UpsertOutcome.REOPENED
    assert after.status is DeadLetterStatus.PENDING
    assert after.deaths == 2 and after.times_seen == 2 and after.version == 3
    for name in (
        "task_type", "user_id", "reason", "error_type", "error_info", "attempt", "generation",
        "exchange", "routing_key", "body", "body_encoding", "properties", "headers", "x_death",
    ):  # fmt: skip
        assert getattr(after, name) == getattr(death, name), name
    assert close_in_time(after.last_seen_at, death.last_seen_at)
    # kept: identity, when it was first seen, and its replay history
    assert after.id == first.id and after.task_id == first.task_id
    assert close_in_time(after.first_seen_at, first.first_seen_at)
    assert after.replay_count == 1 and close_in_time(after.replayed_at, replayed_at)
    assert after.discarded_at is None
    assert_same_record(await store.get_dead_letter(first.id), after)


async def test_a_discarded_record_reopens_when_its_task_dies_again(store: BaseTaskStore) -> None:
    first = make_dead_letter()
    await store.upsert_dead_letter(first)
    discarded_at = utcnow()
    assert await store.mark_dead_letter_discarded(first.id, at=discarded_at) is not None
    after, outcome = await store.upsert_dead_letter(make_dead_letter(task_id=first.id, generation=1))
    assert outcome is UpsertOutcome.REOPENED and after.status is DeadLetterStatus.PENDING
    assert close_in_time(after.discarded_at, discarded_at)


async def test_an_older_generation_is_stale_and_only_counted(store: BaseTaskStore) -> None:
    current = make_dead_letter(generation=2, last_seen_at=utcnow() - timedelta(minutes=1))
    await store.upsert_dead_letter(current)
    stored_current = await store.get_dead_letter(current.id)  # as stored: BSON keeps milliseconds
    assert stored_current is not None
    late = make_dead_letter(task_id=current.id, generation=1, reason="expired", last_seen_at=utcnow())
    after, outcome = await store.upsert_dead_letter(late)
    assert outcome is UpsertOutcome.STALE
    assert after.times_seen == 2 and after.deaths == 1 and after.version == 2
    assert after.generation == 2 and after.reason == current.reason
    assert close_in_time(after.last_seen_at, current.last_seen_at)
    assert after.updated_at >= stored_current.updated_at  # the version bump above is the change
    assert_same_record(await store.get_dead_letter(current.id), after)


async def test_concurrent_upserts_of_one_id_leave_one_record_counting_every_one(store: BaseTaskStore) -> None:
    record = make_dead_letter()
    results = await asyncio.gather(*(store.upsert_dead_letter(record.model_copy()) for _ in range(20)))
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(UpsertOutcome.CREATED) == 1
    assert outcomes.count(UpsertOutcome.DUPLICATE) == 19
    got = await store.get_dead_letter(record.id)
    assert got is not None and got.times_seen == 20 and got.version == 20 and got.deaths == 1
    page = await store.list_dead_letters(limit=50)
    assert [r.id for r in page.items] == [record.id]


async def test_a_naive_time_is_refused(store: BaseTaskStore) -> None:
    with pytest.raises(ValueError):
        await store.upsert_dead_letter(make_dead_letter(last_seen_at=utcnow().replace(tzinfo=None)))


async def test_marking_replayed_needs_a_pending_record_of_that_generation(store: BaseTaskStore) -> None:
    record = make_dead_letter(generation=1)
    await store.upsert_dead_letter(record)
    at = utcnow()
    assert await store.mark_dead_letter_replayed(record.id, generation=0, at=at) is None
    unchanged = await store.get_dead_letter(record.id)
    assert unchanged is not None and unchanged.status is DeadLetterStatus.PENDING and unchanged.version == 1
    done = await store.mark_dead_letter_replayed(record.id, generation=1, at=at)
    assert done is not None
    assert done.status is DeadLetterStatus.REPLAYED and done.replay_count == 1 and done.version == 2
    assert close_in_time(done.replayed_at, at) and done.updated_at >= unchanged.updated_at
    assert_same_record(await store.get_dead_letter(record.id), done)
    # only from PENDING: neither a second replay nor a discard of a replayed record
    assert await store.mark_dead_letter_replayed(record.id, generation=1, at=utcnow()) is None
    assert await store.mark_dead_letter_discarded(record.id, at=utcnow()) is None
    assert await store.mark_dead_letter_replayed("no-such-record", generation=0, at=at) is None


async def test_concurrent_replay_marks_have_one_winner(store: BaseTaskStore) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    marks = [store.mark_dead_letter_replayed(record.id, generation=0, at=utcnow()) for _ in range(10)]
    results = await asyncio.gather(*marks)
    assert sum(r is not None for r in results) == 1
    got = await store.get_dead_letter(record.id)
    assert got is not None and got.replay_count == 1 and got.version == 2


async def test_marking_discarded_needs_a_pending_record(store: BaseTaskStore) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    at = utcnow()
    done = await store.mark_dead_letter_discarded(record.id, at=at)
    assert done is not None and done.status is DeadLetterStatus.DISCARDED and done.version == 2
    assert close_in_time(done.discarded_at, at) and done.replay_count == 0 and done.replayed_at is None
    assert_same_record(await store.get_dead_letter(record.id), done)
    assert await store.mark_dead_letter_discarded(record.id, at=utcnow()) is None
    assert await store.mark_dead_letter_replayed(record.id, generation=0, at=utcnow()) is None
    assert await store.mark_dead_letter_discarded("no-such-record", at=at) is None


async def test_a_duplicate_of_a_replayed_death_keeps_it_replayed(store: BaseTaskStore) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    assert await store.mark_dead_letter_replayed(record.id, generation=0, at=utcnow()) is not None
    after, outcome = await store.upsert_dead_letter(record.model_copy(update={"last_seen_at": utcnow()}))
    assert outcome is UpsertOutcome.DUPLICATE and after.status is DeadLetterStatus.REPLAYED


async def test_an_upsert_that_misses_the_record_it_collided_with_reads_again(
    store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    real_get = store.get_dead_letter
    misses = [None]  # the first read after the collision finds nothing (as if deleted meanwhile)

    async def flaky_get(dead_letter_id: str) -> DeadLetter | None:
        return misses.pop() if misses else await real_get(dead_letter_id)

    monkeypatch.setattr(store, "get_dead_letter", flaky_get)
    after, outcome = await store.upsert_dead_letter(record.model_copy())
    assert outcome is UpsertOutcome.DUPLICATE and after.times_seen == 2 and not misses
