"""Rate-limit reservations, deleting finished tasks and the attempt history in memory (a mixin
of ``MemoryTaskStore``).

A reservation is the GCRA step of ``taskplatform.store.ratelimits``, done without awaiting, so it
is atomic; retention deletes finished tasks with their roll-up ledgers and attempt histories, as
the other backends do.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime

from taskplatform.models import TERMINAL
from taskplatform.models.attempt import MAX_ATTEMPTS_KEPT, AttemptRecord
from taskplatform.store.deletion import EXPIRING
from taskplatform.store.history import oldest_first, storable_attempt
from taskplatform.store.memory.part import MemoryPart
from taskplatform.store.ports import StoreClock
from taskplatform.store.ratelimits import Reservation, check_rate, rate_key, reservation_of


class MemoryUpkeep(MemoryPart, StoreClock):
    """``reserve_rate``, ``prune_rate_limits``, the two deletion primitives and the attempt history."""

    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        check_rate(interval, burst, max_wait)
        rates = (await self._reach()).rates
        at = self.now().timestamp() if now is None else now
        stored = rate_key(key)
        tat = rates.get(stored, at)
        base = max(tat, at)
        wait = base + interval - burst * interval - at
        rates[stored] = base + interval if wait <= max_wait else tat
        return reservation_of(wait, max_wait)

    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        rates = (await self._reach()).rates
        at = self.now().timestamp() if now is None else now
        passed = [key for key, tat in rates.items() if tat < at]
        for key in passed:
            del rates[key]
        return len(passed)

    async def _delete_finished(self, task_ids: Sequence[str]) -> builtins.list[str]:
        data = await self._reach()
        deleted = [i for i in task_ids if i in data.tasks and data.tasks[i]["status"] in TERMINAL]
        for task_id in deleted:
            del data.tasks[task_id]
            data.ledgers.pop(task_id, None)
            data.attempts.pop(task_id, None)
        return deleted

    # ------------------------------------------------------------ the attempt history
    async def add_attempts(self, records: Sequence[AttemptRecord]) -> None:
        data = await self._reach()
        for record in records:
            kept = data.attempts.setdefault(record.task_id, {})
            kept.setdefault(record.id, storable_attempt(record))
            if len(kept) > MAX_ATTEMPTS_KEPT:  # the oldest go, as on MongoDB
                for old in oldest_first(list(kept.values()), len(kept))[: len(kept) - MAX_ATTEMPTS_KEPT]:
                    del kept[old.id]

    async def list_attempts(
        self, task_id: str, *, limit: int = MAX_ATTEMPTS_KEPT
    ) -> builtins.list[AttemptRecord]:
        kept = (await self._reach()).attempts.get(task_id, {})
        return [r.model_copy(deep=True) for r in oldest_first(list(kept.values()), limit)]

    async def _finished_before(self, before: datetime, limit: int) -> builtins.list[str]:
        docs = (await self._reach()).tasks.values()
        ended = (d for d in docs if d["status"] in EXPIRING and d["completed_at"] is not None)
        expired = [d for d in ended if d["completed_at"] < before]
        expired.sort(key=lambda d: d["completed_at"])
        return [d["id"] for d in expired[:limit]]
