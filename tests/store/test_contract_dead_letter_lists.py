"""Listing and counting dead letters, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from taskplatform.models import DeadLetterStatus, utcnow
from taskplatform.store import BaseTaskStore, InvalidCursorError
from taskplatform.store.deadletters import DeadLetterCounts, DeadLetterFilter
from tests.store.helpers import make_dead_letter


def _ms(when: datetime) -> datetime:
    """``when`` to the millisecond, as every backend keeps it (so ties stay ties)."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


async def _ids(store: BaseTaskStore, **filters: object) -> set[str]:
    page = await store.list_dead_letters(DeadLetterFilter.model_validate(filters), limit=100)
    assert page.next_cursor is None
    return {r.id for r in page.items}


async def test_dead_letters_list_most_recently_seen_first_and_pages_cover_everything_once(
    store: BaseTaskStore,
) -> None:
    base = _ms(utcnow())
    # Pairs share a time, so the id tie-breaker is exercised.
    records = [make_dead_letter(last_seen_at=base - timedelta(seconds=i // 2)) for i in range(11)]
    for record in records:
        await store.upsert_dead_letter(record)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_dead_letters(limit=4, cursor=cursor)
        seen.extend(r.id for r in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    expected = sorted(records, key=lambda r: (r.last_seen_at, r.id), reverse=True)
    assert seen == [r.id for r in expected]


async def test_a_duplicate_moves_a_record_to_the_top_of_the_list(store: BaseTaskStore) -> None:
    old = make_dead_letter(last_seen_at=utcnow() - timedelta(hours=1))
    new = make_dead_letter(last_seen_at=utcnow() - timedelta(minutes=1))
    await store.upsert_dead_letter(old)
    await store.upsert_dead_letter(new)
    assert [r.id for r in (await store.list_dead_letters()).items] == [new.id, old.id]
    await store.upsert_dead_letter(old.model_copy(update={"last_seen_at": utcnow()}))
    assert [r.id for r in (await store.list_dead_letters()).items] == [old.id, new.id]


async def test_dead_letters_filter_by_each_field(store: BaseTaskStore) -> None:
    now = _ms(utcnow())
    a = make_dead_letter(task_type="generate_scene", user_id="bob", last_seen_at=now - timedelta(hours=3))
    b = make_dead_letter(reason="delivery_limit", error_type=None, last_seen_at=now - timedelta(hours=2))
    c = make_dead_letter(error_type="KeyError", last_seen_at=now - timedelta(hours=1))
    d = make_dead_letter(id="hash-1", task_id=None, task_type=None, user_id=None, last_seen_at=now)
    for record in (a, b, c, d):
        await store.upsert_dead_letter(record)
    assert await store.mark_dead_letter_discarded(c.id, at=now) is not None

    assert await _ids(store) == {a.id, b.id, c.id, d.id}
    assert await _ids(store, status=DeadLetterStatus.DISCARDED) == {c.id}
    assert await _ids(store, status=DeadLetterStatus.PENDING) == {a.id, b.id, d.id}
    assert await _ids(store, status=DeadLetterStatus.REPLAYED) == set()
    assert await _ids(store, task_type="generate_scene") == {a.id}
    assert await _ids(store, task_type="generate_summary") == {b.id, c.id}
    assert await _ids(store, reason="delivery_limit") == {b.id}
    assert await _ids(store, user_id="bob") == {a.id}
    assert await _ids(store, error_type="KeyError") == {c.id}
    assert await _ids(store, task_id=a.task_id) == {a.id}
    assert await _ids(store, task_id="no-such-task") == set()
    assert await _ids(store, reason="max_retries", user_id="alice") == {c.id}
    # since is inclusive, until exclusive
    assert await _ids(store, since=now - timedelta(hours=2)) == {b.id, c.id, d.id}
    assert await _ids(store, until=now - timedelta(hours=1)) == {a.id, b.id}
    assert await _ids(store, since=now - timedelta(hours=2), until=now) == {b.id, c.id}
    assert await _ids(store, since=now + timedelta(seconds=1)) == set()


async def test_filtered_pages_cover_the_matching_records_once(store: BaseTaskStore) -> None:
    base = _ms(utcnow())
    wanted = [make_dead_letter(task_type="t1", last_seen_at=base - timedelta(seconds=i)) for i in range(5)]
    others = [make_dead_letter(task_type="t2", last_seen_at=base - timedelta(seconds=i)) for i in range(5)]
    for record in wanted + others:
        await store.upsert_dead_letter(record)
    filters = DeadLetterFilter(task_type="t1")
    first = await store.list_dead_letters(filters, limit=3)
    assert first.next_cursor is not None
    second = await store.list_dead_letters(filters, limit=3, cursor=first.next_cursor)
    assert second.next_cursor is None
    assert [r.id for r in first.items + second.items] == [r.id for r in wanted]


async def test_dead_letter_list_rejects_a_foreign_cursor_and_a_bad_limit(store: BaseTaskStore) -> None:
    with pytest.raises(InvalidCursorError):
        await store.list_dead_letters(cursor="not-a-cursor")
    for limit in (0, 501):
        with pytest.raises(ValueError):
            await store.list_dead_letters(limit=limit)


async def test_a_filter_with_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        DeadLetterFilter(since=datetime(2026, 1, 1))


async def test_counts_by_task_type_and_reason_follow_the_filters(store: BaseTaskStore) -> None:
    now = _ms(utcnow())
    records = [
        make_dead_letter(task_type="a", reason="max_retries", last_seen_at=now - timedelta(hours=2)),
        make_dead_letter(task_type="a", reason="delivery_limit", last_seen_at=now - timedelta(hours=1)),
        make_dead_letter(task_type="b", reason="max_retries", last_seen_at=now),
        make_dead_letter(id="hash-1", task_id=None, task_type=None, reason="rejected", last_seen_at=now),
    ]
    for record in records:
        await store.upsert_dead_letter(record)
    await store.upsert_dead_letter(records[0])  # a duplicate is still one record
    assert await store.mark_dead_letter_discarded(records[2].id, at=now) is not None

    assert await store.count_dead_letters() == DeadLetterCounts(
        total=4,
        by_task_type={"a": 2, "b": 1, "unknown": 1},
        by_reason={"max_retries": 2, "delivery_limit": 1, "rejected": 1},
    )
    pending = await store.count_dead_letters(DeadLetterFilter(status=DeadLetterStatus.PENDING))
    assert pending == DeadLetterCounts(
        total=3,
        by_task_type={"a": 2, "unknown": 1},
        by_reason={"max_retries": 1, "delivery_limit": 1, "rejected": 1},
    )
    assert await store.count_dead_letters(DeadLetterFilter(reason="max_retries")) == DeadLetterCounts(
        total=2, by_task_type={"a": 1, "b": 1}, by_reason={"max_retries": 2}
    )
    recent = await store.count_dead_letters(DeadLetterFilter(since=now - timedelta(hours=1)))
    assert recent == DeadLetterCounts(
        total=3,
        by_task_type={"a": 1, "b": 1, "unknown": 1},
        by_reason={"delivery_limit": 1, "max_retries": 1, "rejected": 1},
    )
    assert await store.count_dead_letters(DeadLetterFilter(task_type="none")) == DeadLetterCounts()
