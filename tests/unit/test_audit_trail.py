"""The audit trail: an entry the store refuses leaves the action standing, is logged as an
ERROR naming it, and counted (``failed`` and ``taskplatform_history_unstored_total``)."""

from __future__ import annotations

import pytest

from taskplatform.audit import MAX_TASK_IDS, AuditTrail
from taskplatform.errors import StoreError
from taskplatform.metrics.registry import Metrics
from taskplatform.models import AuditEntry
from taskplatform.store.memory import MemoryTaskStore


def _unstored(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("taskplatform_history_unstored_total", {"kind": kind})


class RefusingLog:
    async def add_audit(self, entry: AuditEntry) -> None:
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
