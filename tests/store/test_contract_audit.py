"""The operators' audit log of dead-letter actions, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from taskplatform.errors import StoreError
from taskplatform.models import AuditEntry, utcnow
from taskplatform.store import BaseTaskStore, InvalidCursorError
from taskplatform.store.deadletters import AuditFilter
from tests.store.helpers import close_in_time


def _ms(when: datetime) -> datetime:
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _entry(**overrides: object) -> AuditEntry:
    fields: dict[str, object] = {"actor": "ops@example.com", "action": "replay", "outcome": "ok"}
    fields.update(overrides)
    return AuditEntry.model_validate(fields)


async def _all(store: BaseTaskStore, *, limit: int, dead_letter_id: str | None = None) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_audit(limit=limit, cursor=cursor, dead_letter_id=dead_letter_id)
        seen.extend(e.id for e in page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_an_audit_entry_reads_back_with_every_field(store: BaseTaskStore) -> None:
    entry = _entry(
        action="bulk_replay",
        dead_letter_ids=["dl-1", "dl-2"],
        filter={"task_type": "generate_summary", "since": "2026-01-01T00:00:00Z"},
        dry_run=True,
        parameters_overridden=True,
        outcome="partial",
        details={"replayed": 1, "skipped": ["dl-2"], "why": {"dl-2": "not pending"}},
    )
    await store.add_audit(entry)
    page = await store.list_audit()
    assert page.next_cursor is None and len(page.items) == 1
    got = page.items[0]
    assert got.model_dump(exclude={"at"}) == entry.model_dump(exclude={"at"})
    assert close_in_time(got.at, entry.at) and got.at.utcoffset() == timedelta(0)


async def test_the_audit_log_lists_newest_first_and_pages_cover_it_once(store: BaseTaskStore) -> None:
    base = _ms(utcnow())
    entries = [_entry(at=base - timedelta(seconds=i // 2)) for i in range(7)]  # pairs tie on time
    for entry in reversed(entries):
        await store.add_audit(entry)
    expected = sorted(entries, key=lambda e: (e.at, e.id), reverse=True)
    assert await _all(store, limit=3) == [e.id for e in expected]
    first = await store.list_audit(limit=3)
    assert len(first.items) == 3 and first.next_cursor is not None


async def test_the_audit_log_of_one_dead_letter_has_only_the_entries_naming_it(store: BaseTaskStore) -> None:
    base = _ms(utcnow())
    one = _entry(dead_letter_ids=["a"], at=base - timedelta(seconds=3))
    both = _entry(action="bulk_replay", dead_letter_ids=["a", "b"], at=base - timedelta(seconds=2))
    other = _entry(action="discard", dead_letter_ids=["c"], at=base - timedelta(seconds=1))
    twice = _entry(dead_letter_ids=["a", "a"], at=base)  # named twice, listed once
    for entry in (one, both, other, twice):
        await store.add_audit(entry)
    assert await _all(store, limit=1, dead_letter_id="a") == [twice.id, both.id, one.id]
    assert await _all(store, limit=10, dead_letter_id="b") == [both.id]
    assert await _all(store, limit=10, dead_letter_id="c") == [other.id]
    assert await _all(store, limit=10, dead_letter_id="nobody") == []
    assert await _all(store, limit=10) == [twice.id, other.id, both.id, one.id]


async def test_an_audit_entry_id_is_written_once(store: BaseTaskStore) -> None:
    entry = _entry(dead_letter_ids=["a"])
    await store.add_audit(entry)
    with pytest.raises(StoreError):
        await store.add_audit(entry.model_copy(update={"outcome": "again"}))
    page = await store.list_audit()
    assert [e.outcome for e in page.items] == ["ok"]


async def test_the_audit_log_rejects_a_foreign_cursor_and_a_bad_limit(store: BaseTaskStore) -> None:
    with pytest.raises(InvalidCursorError):
        await store.list_audit(cursor="bad")
    with pytest.raises(ValueError):
        await store.list_audit(limit=0)


async def _filtered(store: BaseTaskStore, filters: AuditFilter, *, limit: int = 1) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_audit(filters, limit=limit, cursor=cursor)
        seen.extend(e.id for e in page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_the_audit_log_filters_by_actor_action_task_and_time_page_by_page(store: BaseTaskStore) -> None:
    base = _ms(utcnow())
    submit = _entry(
        actor="alice", action="submit", task_ids=["t1", "t2", "t2"], at=base - timedelta(seconds=4)
    )
    cancel = _entry(actor="alice", action="cancel", task_ids=["t1"], at=base - timedelta(seconds=3))
    patch = _entry(actor="bob", action="patch", task_ids=["t2"], at=base - timedelta(seconds=2))
    replay = _entry(
        actor="ops", action="replay", task_ids=["t1"], dead_letter_ids=["t1"], at=base - timedelta(seconds=1)
    )
    delete = _entry(actor="ops", action="delete", task_ids=["t3"], outcome="refused: it is RUNNING", at=base)
    for entry in (submit, cancel, patch, replay, delete):
        await store.add_audit(entry)
    assert await _filtered(store, AuditFilter(task_id="t1")) == [replay.id, cancel.id, submit.id]
    assert await _filtered(store, AuditFilter(task_id="t2")) == [patch.id, submit.id]  # named twice, once
    assert await _filtered(store, AuditFilter(actor="alice")) == [cancel.id, submit.id]
    assert await _filtered(store, AuditFilter(action="delete")) == [delete.id]
    assert await _filtered(store, AuditFilter(actor="ops", task_id="t1")) == [replay.id]
    assert await _filtered(store, AuditFilter(dead_letter_id="t1", action="replay")) == [replay.id]
    window = AuditFilter(since=base - timedelta(seconds=3), until=base - timedelta(seconds=1))
    assert await _filtered(store, window) == [patch.id, cancel.id]  # since inclusive, until exclusive
    assert await _filtered(store, AuditFilter(actor="nobody")) == []
    [got] = (await store.list_audit(AuditFilter(action="submit"))).items
    assert got.task_ids == ["t1", "t2", "t2"]


async def test_retention_purges_the_oldest_entries_first_within_its_bound(store: BaseTaskStore) -> None:
    base = _ms(utcnow())
    old = [
        _entry(task_ids=[f"t{i}"], dead_letter_ids=[f"d{i}"], at=base - timedelta(days=100 + i))
        for i in range(3)
    ]
    recent = _entry(task_ids=["t0"], at=base - timedelta(days=1))
    for entry in (*old, recent):
        await store.add_audit(entry)
    cutoff = base - timedelta(days=90)
    assert await store.purge_audit(before=cutoff, limit=2) == 2  # the two oldest
    assert await _all(store, limit=10) == [recent.id, old[0].id]
    assert await store.purge_audit(before=cutoff) == 1
    assert await store.purge_audit(before=cutoff) == 0
    assert await _filtered(store, AuditFilter(task_id="t0")) == [recent.id]
    assert await _filtered(store, AuditFilter(dead_letter_id="d0")) == []


async def test_entries_written_together_read_back_each_with_its_targets(store: BaseTaskStore) -> None:
    entries = [
        _entry(action="submit", actor="alice", task_ids=["t-1", "t-2"]),
        _entry(action="cancel", actor="bob", task_ids=["t-2"]),
        _entry(action="discard", dead_letter_ids=["dl-9"]),
    ]
    await store.add_audits(entries)
    await store.add_audits([])  # nothing to write
    assert sorted(await _all(store, limit=2)) == sorted(e.id for e in entries)
    on_t2 = await store.list_audit(AuditFilter(task_id="t-2"))
    assert sorted(e.actor for e in on_t2.items) == ["alice", "bob"]
    assert [e.action for e in (await store.list_audit(dead_letter_id="dl-9")).items] == ["discard"]


async def test_a_batch_naming_an_existing_id_is_refused(store: BaseTaskStore) -> None:
    first = _entry(task_ids=["t-1"])
    await store.add_audit(first)
    with pytest.raises(StoreError, match="already exists"):
        await store.add_audits([first.model_copy(update={"outcome": "again"})])
    fresh = _entry()
    with pytest.raises(StoreError, match="already exists"):
        await store.add_audits([fresh, fresh])  # the same id twice in one batch
    outcomes = [e.outcome for e in (await store.list_audit()).items]
    assert outcomes.count("again") == 0 and outcomes.count("ok") in (1, 2)  # MongoDB may keep the first
