"""The audit trail: an entry the store refuses leaves the action standing, is logged as an
ERROR naming it, and counted (``failed`` and ``taskplatform_history_unstored_total``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

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
