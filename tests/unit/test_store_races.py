"""The backend-neutral store operations when another writer gets in between (played on the
in-memory store, whose primitives every backend shares the logic above): dead-letter
compare-and-set that keeps losing, a record deleted between insert and read, a task replayed
between the delete check and the delete, a parent gone during a recount. Plus the small
validators those operations rely on: filter times, cursors, server clock readings."""

from __future__ import annotations

import base64
import builtins
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskplatform.errors import StoreError
from taskplatform.models import DeadLetter, TaskStatus, utcnow
from taskplatform.store.deadletters import DeadLetterFilter, UpsertOutcome, filter_time
from taskplatform.store.deletion import Deletion
from taskplatform.store.memory import MemoryTaskStore
from taskplatform.store.primitives import read_clock
from taskplatform.store.types import InvalidCursorError, ParentState, decode_cursor, encode_cursor
from tests.store.helpers import make_dead_letter, make_task


class RacingStore(MemoryTaskStore):
    """The in-memory store with a writer that always gets in first where a test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_swaps = False  # every compare-and-set of a dead letter finds another version
        self.vanish_once = False  # the next read of a dead letter finds it deleted meanwhile
        self.keep_on_delete: set[str] = set()  # tasks replayed back between the check and the delete
        self.vanish_parent_during_recount = False

    async def _swap_dead_letter(self, record: DeadLetter, *, expected_version: int) -> DeadLetter | None:
        if self.lose_swaps:
            return None
        return await super()._swap_dead_letter(record, expected_version=expected_version)

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        if self.vanish_once:
            self.vanish_once = False
            (await self._reach()).dead_letters.pop(dead_letter_id, None)
            return None
        return await super().get_dead_letter(dead_letter_id)

    async def _delete_finished(self, task_ids: Sequence[str]) -> builtins.list[str]:
        return await super()._delete_finished([t for t in task_ids if t not in self.keep_on_delete])

    async def apply_rollups(
        self, parent_id: str, items: Sequence[tuple[str, TaskStatus, int]]
    ) -> ParentState | None:
        if self.vanish_parent_during_recount:
            (await self._reach()).tasks.pop(parent_id, None)
        return await super().apply_rollups(parent_id, items)


@pytest.fixture
async def store() -> AsyncIterator[RacingStore]:
    s = RacingStore()
    await s.open()
    yield s
    await s.close()


async def test_a_dead_letter_upsert_that_keeps_losing_races_gives_up_with_a_store_error(
    store: RacingStore,
) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    store.lose_swaps = True
    with pytest.raises(StoreError, match="kept losing races"):
        await store.upsert_dead_letter(record)
    got = await store.get_dead_letter(record.id)
    assert got is not None and got.times_seen == 1


async def test_a_dead_letter_update_that_keeps_losing_races_gives_up_with_a_store_error(
    store: RacingStore,
) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    store.lose_swaps = True
    with pytest.raises(StoreError, match="kept losing races"):
        await store.mark_dead_letter_discarded(record.id, at=utcnow())
    got = await store.get_dead_letter(record.id)
    assert got is not None and got.discarded_at is None


async def test_a_dead_letter_deleted_between_insert_and_read_is_inserted_again(store: RacingStore) -> None:
    record = make_dead_letter()
    await store.upsert_dead_letter(record)
    store.vanish_once = True  # the insert finds it; by the read it is gone

    stored, outcome = await store.upsert_dead_letter(record)

    assert outcome is UpsertOutcome.CREATED and stored.times_seen == 1
    assert await store.get_dead_letter(record.id) is not None


async def test_a_task_replayed_between_the_check_and_the_delete_is_kept_and_reported_active(
    store: RacingStore,
) -> None:
    task = make_task(status=TaskStatus.COMPLETED, completed_at=utcnow())
    await store.create(task)
    store.keep_on_delete = {task.id}

    outcome = await store.delete_task(task.id)

    assert outcome.result is Deletion.ACTIVE and outcome.deleted == ()
    assert outcome.blocking is not None and outcome.blocking.id == task.id


async def test_a_task_gone_between_the_check_and_the_delete_is_reported_not_found(store: RacingStore) -> None:
    task = make_task(status=TaskStatus.COMPLETED, completed_at=utcnow())
    await store.create(task)
    store.keep_on_delete = {task.id}
    original_get = store.get
    reads = 0

    async def get(task_id: str) -> object:
        nonlocal reads
        reads += 1
        return await original_get(task_id) if reads == 1 else None  # another caller deleted it

    store.get = get  # type: ignore[method-assign, assignment]

    outcome = await store.delete_task(task.id)

    assert outcome.result is Deletion.NOT_FOUND and outcome.deleted == ()


async def test_a_recount_of_a_parent_deleted_meanwhile_finds_none(store: RacingStore) -> None:
    parent = make_task(status=TaskStatus.RUNNING, awaiting_children=True)
    child = make_task(parent_task_id=parent.id)
    await store.create_many([parent, child])
    store.vanish_parent_during_recount = True

    assert await store.rollup_children(parent.id) is None


def test_dead_letter_filters_take_times_in_utc_only() -> None:
    plus_two = timezone(timedelta(hours=2))
    bounded = DeadLetterFilter(since=datetime(2026, 1, 1, 2, tzinfo=plus_two), until=None)
    assert bounded.since == datetime(2026, 1, 1, tzinfo=UTC) and bounded.until is None
    assert filter_time(None) is None
    with pytest.raises(ValueError, match="out of range"):
        DeadLetterFilter(since=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))


def test_upsert_outcomes_read_as_their_value() -> None:
    assert str(UpsertOutcome.CREATED) == "created" and f"{UpsertOutcome.STALE}" == "stale"


@pytest.mark.parametrize(
    "raw",
    [b"2026-01-01T00:00:00|", b"2026-01-01T00:00:00|t-1", b"2026-01-01T00:00:00+00:00|t\x00id"],
    ids=["no-id", "naive-time", "nul-in-id"],
)
def test_a_cursor_this_store_could_not_have_made_is_refused(raw: bytes) -> None:
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(InvalidCursorError):
        decode_cursor(cursor)


def test_a_cursor_round_trips() -> None:
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "t-1")) == (when, "t-1")


async def test_a_server_clock_without_a_zone_is_read_as_utc() -> None:
    naive = datetime(2026, 1, 1, 12, 0, 0)

    async def read() -> datetime:
        return naive

    samples = await read_clock(read, samples=2)
    assert [s.server for s in samples] == [naive.replace(tzinfo=UTC)] * 2
    assert all(s.round_trip >= 0 for s in samples)
