"""The audit trail: an entry the store refuses leaves the action standing, is logged as an
ERROR naming it, and counted (``failed`` and ``taskplatform_history_unstored_total``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from taskplatform import audit as audit_module
from taskplatform.audit import MAX_TASK_IDS, AuditTrail
from taskplatform.errors import StoreError
from taskplatform.metrics.registry import Metrics
from taskplatform.models import AuditEntry
from taskplatform.store.memory import MemoryTaskStore


def _unstored(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("taskplatform_history_unstored_total", {"kind": kind})


class RefusingLog:
    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        raise StoreError("audit_log: relation does not exist")


async def test_an_entry_the_store_refuses_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    trail = AuditTrail(RefusingLog(), metrics)  # type: ignore[arg-type]
    await trail.record("alice", "cancel", ["t-1"], outcome="ok")
    assert trail.failed == 1
    assert _unstored(metrics, "audit") == 1 and _unstored(metrics, "attempt") == 0
    assert "audit entry not stored (cancel by alice on ['t-1'], ok)" in caplog.text


async def test_a_stored_entry_counts_nothing_and_a_long_id_list_is_cut() -> None:
    metrics = Metrics()
    store = MemoryTaskStore()
    await store.open()
    trail = AuditTrail(store, metrics)
    ids = [f"t-{i}" for i in range(MAX_TASK_IDS + 5)]
    await trail.record("bob", "submit", ids)
    assert trail.failed == 0 and _unstored(metrics, "audit") == 0
    (entry,) = (await store.list_audit()).items
    assert len(entry.task_ids) == MAX_TASK_IDS and entry.details["tasks"] == MAX_TASK_IDS + 5
    await store.close()


class CountingStore(MemoryTaskStore):
    """The memory store, counting its audit writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        self.writes.append(len(entries))
        await asyncio.sleep(0.01)  # a round trip: entries arriving meanwhile wait for the next write
        await super().add_audits(entries)


async def test_concurrent_entries_share_writes_and_each_is_stored() -> None:
    store = CountingStore()
    await store.open()
    trail = AuditTrail(store)
    await asyncio.gather(*(trail.record(f"user-{i}", "submit", [f"t-{i}"]) for i in range(20)))
    assert sum(store.writes) == 20 and len(store.writes) < 20 and max(store.writes) > 1
    page = await store.list_audit(limit=50)
    assert sorted(e.actor for e in page.items) == sorted(f"user-{i}" for i in range(20))
    await store.close()


async def test_a_refused_batch_is_counted_for_every_entry_in_it(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    trail = AuditTrail(RefusingLog(), metrics)  # type: ignore[arg-type]
    await asyncio.gather(*(trail.record("alice", "cancel", [f"t-{i}"]) for i in range(5)))
    assert trail.failed == 5 and _unstored(metrics, "audit") == 5
    assert caplog.text.count("audit entry not stored") == 5


class PickyStore(MemoryTaskStore):
    """Refuses every write holding an entry by ``bad`` (as a server refuses a value it cannot
    store); with ``partial``, a refused batch keeps the entries before the bad one (as MongoDB's
    insert does)."""

    def __init__(self, *, partial: bool = False, hang: float = 0.0) -> None:
        super().__init__()
        self.partial = partial
        self.hang = hang
        self.writes: list[int] = []

    async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
        self.writes.append(len(entries))
        await asyncio.sleep(0.01)
        bad = [i for i, e in enumerate(entries) if e.actor == "bad"]
        if bad:
            if self.partial:
                await super().add_audits(entries[: bad[0]])
            raise StoreError("value too long for type character varying(255) (test)")
        if self.hang and len(entries) == 1:
            await asyncio.sleep(self.hang)  # the store stopped answering
        await super().add_audits(entries)


async def _record_many(trail: AuditTrail, actors: list[str]) -> None:
    await asyncio.gather(*(trail.record(actor, "submit", [f"t-{i}"]) for i, actor in enumerate(actors)))


@pytest.mark.parametrize("partial", [False, True])
async def test_one_bad_entry_costs_only_itself(partial: bool, caplog: pytest.LogCaptureFixture) -> None:
    store = PickyStore(partial=partial)
    await store.open()
    metrics = Metrics()
    trail = AuditTrail(store, metrics)
    await _record_many(trail, ["a", "b", "bad", "c", "d", "e"])
    assert max(store.writes) > 1  # they went together, then one by one
    stored = sorted(e.actor for e in (await store.list_audit(limit=50)).items)
    assert stored == ["a", "b", "c", "d", "e"]
    assert trail.failed == 1 and _unstored(metrics, "audit") == 1
    assert caplog.text.count("audit entry not stored") == 1 and "by bad" in caplog.text
    await store.close()


async def test_writing_a_refused_batch_again_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "RETRY_ONE_BY_ONE_SECONDS", 0.2)
    store = PickyStore(hang=30.0)
    await store.open()
    trail = AuditTrail(store)
    await asyncio.wait_for(_record_many(trail, ["a", "bad", "b"]), 5)
    assert trail.failed == 3  # the store stopped answering: none written, none waiting for ever
    await store.close()


async def test_an_entry_whose_caller_went_away_is_still_written() -> None:
    store = CountingStore()
    await store.open()
    trail = AuditTrail(store)
    first = asyncio.create_task(trail.record("alice", "submit", ["t-1"]))
    await asyncio.sleep(0)  # its write is in flight
    second = asyncio.create_task(trail.record("bob", "cancel", ["t-2"]))
    await asyncio.sleep(0)  # waiting for the next write
    second.cancel()  # its client disconnected
    with pytest.raises(asyncio.CancelledError):
        await second
    await first
    for _ in range(100):
        if len((await store.list_audit()).items) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(e.actor for e in (await store.list_audit()).items) == ["alice", "bob"]
    await store.close()


async def test_a_bug_in_the_write_is_logged_and_counted_and_never_fails_the_action(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryTaskStore):
        async def add_audits(self, entries: Sequence[AuditEntry]) -> None:
            raise TypeError("Object of type set is not JSON serializable (test)")

    store = Broken()
    await store.open()
    metrics = Metrics()
    trail = AuditTrail(store, metrics)
    await trail.record("alice", "patch", ["t-1"])  # does not raise
    assert trail.failed == 1 and _unstored(metrics, "audit") == 1
    assert "the write failed" in caplog.text and "not JSON serializable" in caplog.text
    await store.close()
