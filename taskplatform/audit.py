"""Recording who did what to tasks: submissions, cancels, changes and deletions (dead-letter
actions are recorded by ``DeadLetterService``). Read back by ``GET /api/v1/audit``.

An action is recorded after it was done, with how it ended (``ok``, or ``refused: why``). If the
entry cannot be stored the action stands (it cannot be undone): the failure is logged as an
ERROR naming the action, and counted
(``taskplatform_history_unstored_total{kind="audit"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskplatform.batching import Coalescer
from taskplatform.errors import DuplicateEntryError, StoreError
from taskplatform.metrics.registry import Metrics
from taskplatform.models import AuditEntry
from taskplatform.models.dead_letter import AuditAction
from taskplatform.store.ports import AuditLog

log = logging.getLogger(__name__)

#: Task ids one entry names, at the most (a bulk submission of more names its first ones and
#: says how many there were).
MAX_TASK_IDS = 1000


#: Entries one write carries at most (each names up to ``MAX_TASK_IDS`` tasks).
MAX_BATCH = 100
#: How long the entries of a batch the store refused are written again one by one, together.
RETRY_ONE_BY_ONE_SECONDS = 10.0


class AuditTrail:
    """Appends entries to the store's audit log. Concurrent entries (one per API request under
    load) share one write: a transaction per entry cost a submission about a third of its rate.

    A batch the store refuses is written again entry by entry (for ``RETRY_ONE_BY_ONE_SECONDS``
    at most, an outage being the likelier cause), so one bad entry costs only itself. An entry
    is written even if its caller is cancelled meanwhile (a client that went away): the action
    was done."""

    def __init__(self, store: AuditLog, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._batch: Coalescer[AuditEntry, BaseException | None] = Coalescer(self._write, max_batch=MAX_BATCH)
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
        # Shielded: a caller cancelled while its entry waits for a write leaves the write (and
        # the report of its failure) to go on.
        await asyncio.shield(asyncio.ensure_future(self._store_entry(entry)))

    async def _store_entry(self, entry: AuditEntry) -> None:
        try:
            problem = await self._batch.submit(entry)
        except Exception as exc:  # not an outage (those come back as results): a bug, never the action's
            log.exception("audit entry %s: the write failed", entry.id)
            problem = exc
        if problem is None:
            return
        self.failed += 1
        if self._metrics is not None:
            self._metrics.history_unstored.labels("audit").inc()
        log.error(
            "audit entry not stored (%s by %s on %s, %s): %s",
            entry.action,
            entry.actor,
            entry.task_ids[:3],
            entry.outcome,
            problem,
        )

    async def _write(self, entries: Sequence[AuditEntry]) -> list[BaseException | None]:
        """Every entry's outcome: None when it is stored."""
        try:
            await self._store.add_audits(entries)
            return [None] * len(entries)
        except StoreError as exc:
            if len(entries) == 1:
                return [exc]
            refused: StoreError = exc
        results: list[BaseException | None] = [refused] * len(entries)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RETRY_ONE_BY_ONE_SECONDS):
                for i, entry in enumerate(entries):
                    try:
                        await self._store.add_audits([entry])
                        results[i] = None
                    except DuplicateEntryError:
                        results[i] = None  # stored by the batch before it failed (MongoDB keeps those)
                    except StoreError as exc:
                        results[i] = exc
        return results
