"""Recording who did what to tasks: submissions, cancels, changes and deletions (dead-letter
actions are recorded by ``DeadLetterService``). Read back by ``GET /api/v1/audit``.

An action is recorded after it was done, with how it ended (``ok``, or ``refused: why``). If the
entry cannot be stored the action stands (it cannot be undone): the failure is logged as an
ERROR naming the action, and counted
(``taskplatform_history_unstored_total{kind="audit"}``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskplatform.batching import Coalescer
from taskplatform.errors import StoreError
from taskplatform.metrics.registry import Metrics
from taskplatform.models import AuditEntry
from taskplatform.models.dead_letter import AuditAction
from taskplatform.store.ports import AuditLog

log = logging.getLogger(__name__)

#: Task ids one entry names, at the most (a bulk submission of more names its first ones and
#: says how many there were).
MAX_TASK_IDS = 1000


class AuditTrail:
    """Appends entries to the store's audit log. Concurrent entries (one per API request under
    load) share one write: a transaction per entry cost a submission about a third of its rate."""

    def __init__(self, store: AuditLog, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._batch: Coalescer[AuditEntry, None] = Coalescer(self._write)
        #: Entries that could not be stored.
        self.failed = 0

    async def record(
        self,
        actor: str,
        action: AuditAction,
        task_ids: Iterable[str],
        *,
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        ids = list(dict.fromkeys(task_ids))
        extra = dict(details or {})
        if len(ids) > MAX_TASK_IDS:
            extra["tasks"] = len(ids)
            ids = ids[:MAX_TASK_IDS]
        entry = AuditEntry(actor=actor, action=action, task_ids=ids, outcome=outcome, details=extra)
        try:
            await self._batch.submit(entry)
        except StoreError as exc:
            self.failed += 1
            if self._metrics is not None:
                self._metrics.history_unstored.labels("audit").inc()
            log.error("audit entry not stored (%s by %s on %s, %s): %s", action, actor, ids[:3], outcome, exc)

    async def _write(self, entries: Sequence[AuditEntry]) -> list[None]:
        await self._store.add_audits(entries)
        return [None] * len(entries)
