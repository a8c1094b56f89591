"""The worker registry (``WorkerRegistry``), on every backend: beats, lists, the sweep, the prune.

Times are whole milliseconds (MongoDB keeps no finer), taken from the store's clock.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from taskplatform.errors import StoreError
from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.store import BaseTaskStore, InvalidCursorError
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.types import encode_cursor
from taskplatform.store.workers import WorkerFilter, encode_worker_cursor

ONLINE, STOPPING, STOPPED, OFFLINE = (
    WorkerState.ONLINE,
    WorkerState.STOPPING,
    WorkerState.STOPPED,
    WorkerState.OFFLINE,
)
S = timedelta(seconds=1)


def _ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _now(store: BaseTaskStore) -> datetime:
    return _ms(store.now())


def _worker(
    node_id: str,
    *,
    at: datetime,
    state: WorkerState = ONLINE,
    expires_at: datetime | None = None,
    **fields: Any,
) -> WorkerRecord:
    """A record last seen ``at``, expiring three 5 s beats later unless ``expires_at`` is given."""
    values: dict[str, Any] = {
        "node_id": node_id,
        "host": "host-a",
        "pid": 4242,
        "labels": {"region": "eu"},
        "task_types": ["generate_summary", "resize_image"],
        "queue_groups": ["default", "images"],
        "concurrency": 8,
        "running": 2,
        "version": "1.4.0",
        "started_at": at - 600 * S,
        "last_seen_at": at,
        "heartbeat_seconds": 5.0,
        "expires_at": expires_at if expires_at is not None else at + 15 * S,
        "state": state,
        "state_changed_at": at - 600 * S,
    }
    values.update(fields)
    return WorkerRecord(**values)


async def _ids(store: BaseTaskStore, filters: WorkerFilter | None = None, *, limit: int = 2) -> list[str]:
    """Every matching node id, page by page."""
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = await store.list_workers(filters, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        ids += [r.node_id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("the pages never ended")


# ----------------------------------------------------------------------------- beats


async def test_a_beat_inserts_then_replaces_the_record_and_says_what_was_there(store: BaseTaskStore) -> None:
    now = _now(store)
    first = _worker("w-1", at=now, labels={"region": "eu", "role": "db"})
    assert await store.get_worker("w-1") is None
    assert await store.beat_worker(first) is None  # new
    got = await store.get_worker("w-1")
    assert got == first
    assert got is not None and all(
        getattr(got, name).utcoffset() == timedelta(0)
        for name in ("started_at", "last_seen_at", "expires_at", "state_changed_at")
    )
    second = first.model_copy(
        update={
            "labels": {"role": "cache"},
            "task_types": ["resize_image"],
            "running": 7,
            "last_seen_at": now + 5 * S,
            "expires_at": now + 20 * S,
            "state": STOPPING,
            "state_changed_at": now + 5 * S,
        }
    )
    assert await store.beat_worker(second) is ONLINE
    assert await store.get_worker("w-1") == second  # replaced whole: the old label is gone
    assert await store.beat_worker(second.model_copy(update={"state": STOPPED})) is STOPPING
    assert await store.get_worker("w-2") is None


async def test_a_beat_after_the_sweep_finds_its_record_offline(store: BaseTaskStore) -> None:
    now = _now(store)
    record = _worker("w-back", at=now - 60 * S)  # expired 45 s ago
    await store.beat_worker(record)
    assert [r.node_id for r in await store.sweep_offline_workers(now=now)] == ["w-back"]
    back = record.model_copy(update={"last_seen_at": now, "expires_at": now + 15 * S})
    assert await store.beat_worker(back) is OFFLINE  # it has come back
    assert await store.beat_worker(back) is ONLINE
    got = await store.get_worker("w-back")
    assert got is not None and got.state is ONLINE and got.expires_at == now + 15 * S


# ----------------------------------------------------------------------------- lists


async def test_workers_are_listed_by_node_id_page_by_page(store: BaseTaskStore) -> None:
    now = _now(store)
    names = ["w-5", "w-1", "w-7", "w-3", "w-2", "w-6", "w-4"]
    for name in names:
        await store.beat_worker(_worker(name, at=now))
    assert await _ids(store, limit=3) == sorted(names)
    first = await store.list_workers(limit=3)
    assert [r.node_id for r in first.items] == ["w-1", "w-2", "w-3"]
    assert first.next_cursor == encode_worker_cursor("w-3")
    last = await store.list_workers(limit=4, cursor=first.next_cursor)  # exactly the rest
    assert [r.node_id for r in last.items] == ["w-4", "w-5", "w-6", "w-7"] and last.next_cursor is None
    assert (await store.list_workers(limit=500)).next_cursor is None
    assert (await store.list_workers(cursor=encode_worker_cursor("w-7"))).items == []


async def test_a_worker_list_refuses_a_foreign_cursor_and_a_bad_limit(store: BaseTaskStore) -> None:
    await store.beat_worker(_worker("w-1", at=_now(store)))
    for cursor in ("bad", encode_cursor(_now(store), "w-1")):
        with pytest.raises(InvalidCursorError):
            await store.list_workers(cursor=cursor)
    for limit in (0, 501):
        with pytest.raises(ValueError):
            await store.list_workers(limit=limit)


async def test_workers_are_filtered_by_presence_state_and_host(store: BaseTaskStore) -> None:
    now = _now(store)
    for record in [
        _worker("fresh", at=now),
        _worker("silent", at=now - 60 * S),  # online, but expired: not yet swept
        _worker("draining", at=now, state=STOPPING, host="host-b"),
        _worker("left", at=now, state=STOPPED, host="host-b"),  # not expired, but stopped
        _worker("lost", at=now - 60 * S, state=OFFLINE),
    ]:
        await store.beat_worker(record)
    assert await _ids(store, WorkerFilter(online=True)) == ["draining", "fresh"]
    assert await _ids(store, WorkerFilter(online=False)) == ["left", "lost", "silent"]
    assert await _ids(store, WorkerFilter(state=ONLINE)) == ["fresh", "silent"]
    assert await _ids(store, WorkerFilter(state=OFFLINE)) == ["lost"]
    assert await _ids(store, WorkerFilter(host="host-b")) == ["draining", "left"]
    assert await _ids(store, WorkerFilter(host="host-b", online=True)) == ["draining"]
    assert await _ids(store, WorkerFilter(host="host-c")) == []
    assert await _ids(store, WorkerFilter(state=ONLINE, online=False)) == ["silent"]


async def test_presence_in_a_list_is_judged_on_the_store_clock(store: BaseTaskStore) -> None:
    now = _now(store)
    await store.beat_worker(_worker("w-1", at=now, expires_at=now + 600 * S))
    assert await _ids(store, WorkerFilter(online=True)) == ["w-1"]
    store.clock_offset += timedelta(hours=1)  # the store's clock is an hour past this machine's
    assert await _ids(store, WorkerFilter(online=True)) == []
    assert await _ids(store, WorkerFilter(online=False)) == ["w-1"]


async def test_labels_match_exactly_never_as_a_pattern(store: BaseTaskStore) -> None:
    now = _now(store)
    labelled = {
        "a": {"role": "db_1", "region": "eu"},
        "b": {"role": "dbx1", "region": "eu"},  # db_1 as a LIKE pattern would match it
        "c": {"role": "DB_1"},  # another case
        "d": {"xrole": "db_1"},  # the label's text inside another key
        "e": {"role": "db_10"},  # ... and inside another value
        "f": {"topology.zone/x": "eu-1", "role": "db_1"},  # a key with a dot and a slash
        "g": {"r_le": "x"},
        "h": {"rXle": "x"},
        "i": {},
    }
    for node_id, labels in labelled.items():
        await store.beat_worker(_worker(node_id, at=now, labels=labels))

    async def matching(labels: dict[str, str]) -> list[str]:
        return await _ids(store, WorkerFilter(labels=labels))

    assert await matching({"role": "db_1"}) == ["a", "f"]
    assert await matching({"role": "db_1", "region": "eu"}) == ["a"]
    assert await matching({"region": "eu"}) == ["a", "b"]
    assert await matching({"topology.zone/x": "eu-1"}) == ["f"]
    assert await matching({"r_le": "x"}) == ["g"]
    assert await matching({"role": "db"}) == []
    assert await matching({"role": "db_1", "region": "us"}) == []
    assert await matching({}) == sorted(labelled)
    # The model refuses '%' in a value; a filter built around it still matches nothing.
    for value in ("db%", "%", "db_%", "_b_1"):
        unchecked = WorkerFilter.model_construct(labels={"role": value})
        assert await _ids(store, unchecked) == [], value
    assert await _ids(store, WorkerFilter(labels={"role": "db_1"}, online=True, host="host-a")) == ["a", "f"]


# ----------------------------------------------------------------------------- the sweep


async def test_the_sweep_moves_only_present_records_that_have_expired(store: BaseTaskStore) -> None:
    now = _now(store)
    records = [
        _worker("expired", at=now - 20 * S, expires_at=now - S),
        _worker("draining", at=now - 30 * S, state=STOPPING, expires_at=now - 5 * S),
        _worker("due-now", at=now - 15 * S, expires_at=now),  # at ``now`` counts as expired
        _worker("fresh", at=now, expires_at=now + S),
        _worker("left", at=now - 60 * S, state=STOPPED, expires_at=now - 45 * S),
        _worker("lost", at=now - 60 * S, state=OFFLINE, expires_at=now - 45 * S),
    ]
    for record in records:
        await store.beat_worker(record)
    moved = await store.sweep_offline_workers(now=now)
    assert sorted(r.node_id for r in moved) == ["draining", "due-now", "expired"]
    by_id = {r.node_id: r for r in records}
    for record in moved:  # as moved: offline since ``now``, every other field as it was
        assert record == by_id[record.node_id].model_copy(update={"state": OFFLINE, "state_changed_at": now})
        assert await store.get_worker(record.node_id) == record
    assert await store.sweep_offline_workers(now=now) == []
    states = {r.node_id: r.state for r in (await store.list_workers(limit=10)).items}
    assert states == {
        "draining": OFFLINE,
        "due-now": OFFLINE,
        "expired": OFFLINE,
        "fresh": ONLINE,
        "left": STOPPED,
        "lost": OFFLINE,
    }
    assert await store.get_worker("lost") == by_id["lost"]  # already offline: not moved again
    assert await store.get_worker("left") == by_id["left"]


async def test_the_sweep_takes_at_most_limit_records_a_call(store: BaseTaskStore) -> None:
    now = _now(store)
    for i in range(5):
        await store.beat_worker(_worker(f"w-{i}", at=now - 60 * S))
    batches = [await store.sweep_offline_workers(now=now, limit=2) for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert sorted(r.node_id for b in batches for r in b) == [f"w-{i}" for i in range(5)]
    with pytest.raises(ValueError):
        await store.sweep_offline_workers(now=now, limit=0)


async def test_sweeps_racing_return_each_transition_to_exactly_one(store: BaseTaskStore) -> None:
    now = _now(store)
    expired = {f"gone-{i:02}" for i in range(24)}
    for node_id in sorted(expired):
        await store.beat_worker(_worker(node_id, at=now - 60 * S))
    for i in range(3):
        await store.beat_worker(_worker(f"here-{i}", at=now))
    first, second = await asyncio.gather(
        store.sweep_offline_workers(now=now), store.sweep_offline_workers(now=now)
    )
    one, two = {r.node_id for r in first}, {r.node_id for r in second}
    assert len(one) == len(first) and len(two) == len(second)
    assert one & two == set()
    assert one | two == expired
    assert await _ids(store, WorkerFilter(state=OFFLINE), limit=500) == sorted(expired)


async def test_a_beat_after_expiry_but_before_the_sweep_wins(store: BaseTaskStore) -> None:
    now = _now(store)
    record = _worker("w-late", at=now - 20 * S, expires_at=now - S)
    await store.beat_worker(record)
    late = record.model_copy(update={"last_seen_at": now, "expires_at": now + 15 * S})
    assert await store.beat_worker(late) is ONLINE
    assert await store.sweep_offline_workers(now=now) == []
    assert await store.get_worker("w-late") == late


async def test_a_beat_racing_the_sweep_ends_online_and_each_side_says_what_happened(
    store: BaseTaskStore,
) -> None:
    now = _now(store)
    for i in range(8):
        node_id = f"w-{i}"
        record = _worker(node_id, at=now - 20 * S, expires_at=now - S)
        await store.beat_worker(record)
        late = record.model_copy(update={"last_seen_at": now, "expires_at": now + 15 * S})
        before, moved = await asyncio.gather(store.beat_worker(late), store.sweep_offline_workers(now=now))
        # Either the sweep went first (it moved the record; the beat found it offline) or the
        # beat did (the sweep found nothing expired); never a sweep undoing a beat.
        assert (before, [r.node_id for r in moved]) in [(OFFLINE, [node_id]), (ONLINE, [])]
        got = await store.get_worker(node_id)
        assert got is not None and got.state is ONLINE and got.expires_at == now + 15 * S


# ----------------------------------------------------------------------------- the prune


async def test_the_prune_deletes_only_stopped_and_offline_records_seen_before(store: BaseTaskStore) -> None:
    now = _now(store)
    for record in [
        _worker("left-long-ago", at=now - 7200 * S, state=STOPPED),
        _worker("lost-long-ago", at=now - 3600 * S, state=OFFLINE),
        _worker("lost-at-before", at=now, state=OFFLINE),  # not before ``before``
        _worker("left-lately", at=now + 60 * S, state=STOPPED),
        _worker("silent", at=now - 9000 * S),  # online, expired, not yet swept
        _worker("draining", at=now - 9000 * S, state=STOPPING),
    ]:
        await store.beat_worker(record)
    assert await store.prune_workers(before=now) == 2
    assert await store.prune_workers(before=now) == 0
    assert await _ids(store) == ["draining", "left-lately", "lost-at-before", "silent"]


async def test_the_prune_deletes_at_most_limit_records_a_call(store: BaseTaskStore) -> None:
    now = _now(store)
    for i in range(5):
        await store.beat_worker(_worker(f"w-{i}", at=now - 3600 * S, state=OFFLINE if i % 2 else STOPPED))
    await store.beat_worker(_worker("fresh", at=now))
    assert [await store.prune_workers(before=now, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert await _ids(store) == ["fresh"]
    with pytest.raises(ValueError):
        await store.prune_workers(before=now, limit=0)


# ----------------------------------------------------------------------------- outages


class _Unreachable:
    """A MongoDB database (and collection) whose every call fails as a lost server does."""

    def __getitem__(self, _name: str) -> _Unreachable:
        return self

    def __getattr__(self, _name: str) -> Any:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise ServerSelectionTimeoutError("no servers available")

        return fail


async def test_the_registry_fails_with_a_store_error_when_the_store_is_unreachable(
    store: BaseTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = _now(store)
    record = _worker("w-1", at=now)
    await store.beat_worker(record)
    await store.close()
    if isinstance(store, MongoTaskStore) and store._injected:  # the emulation stays reachable when closed
        monkeypatch.setattr(store, "_db", _Unreachable())
    calls = [
        store.beat_worker(record),
        store.get_worker("w-1"),
        store.list_workers(WorkerFilter(online=True, labels={"region": "eu"})),
        store.sweep_offline_workers(now=now),
        store.prune_workers(before=now),
    ]
    for call in calls:
        with pytest.raises(StoreError):
            await call
