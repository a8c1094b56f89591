"""What a delivery goes through before its claim: decoding, a known task type, its not-before
time, and (for rate-limited types) a rate-limit slot. A delivery that may not go on is settled
through the settler here (dead-lettered, or sent round the delay path)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aio_pika.abc import AbstractIncomingMessage

from taskplatform.errors import MessageDecodeError, StoreError
from taskplatform.messaging.codec import decode
from taskplatform.models import RUNNABLE, BackgroundTask, TaskMessage, utcnow
from taskplatform.models.message import HEADER_NOT_BEFORE, AwaitOwner
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.ratelimit.admission import RateAdmission, RateStats
from taskplatform.ratelimit.limiter import MemoryRateLimiter, RateLimiter
from taskplatform.store.ports import TaskReads
from taskplatform.tasks.registry import ExecutableRegistry
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.settlement import Settler
from topology.spec import DELIVER_EARLY_SECONDS

log = logging.getLogger("taskplatform.worker.consumer")

#: The latest ``x-not-before`` taken seriously (a later or unreadable value is ignored: the
#: message is run, not held for ever or crashed on).
_LATEST_NOT_BEFORE_MS = 2**53


class Intake:
    """Checks a delivery before the consumer waits for a slot and claims it.

    Deliveries of task types that declare ``rate_limits`` wait for their slot
    (``RateAdmission``): held here for up to ``rate_limit_hold`` seconds, or sent round the
    delay path. Other types never touch the limiter.
    """

    def __init__(
        self,
        store: TaskReads,
        settler: Settler,
        registry: ExecutableRegistry,
        config: WorkerConfig,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self._store = store
        self._settler = settler
        self._registry = registry
        self._store_backoff = config.store_backoff
        self._rates = RateAdmission(
            MemoryRateLimiter() if rate_limiter is None else rate_limiter,
            {cls.task_type: cls.rate_limits for cls in registry},
            hold=config.rate_limit_hold,
            store_backoff=config.store_backoff,
            store_hold=config.store_hold,
        )

    @property
    def rate_stats(self) -> RateStats:
        return self._rates.stats

    async def check(self, message: AbstractIncomingMessage) -> TaskMessage | None:
        """The delivery's task message, or None once the delivery is settled: it cannot be read
        or names a type no executable here runs (dead-lettered), or it came back before its
        time (sent round the delay path again)."""
        try:
            tm = decode(message)
        except MessageDecodeError as exc:
            await self._settler.reject_malformed(message, exc.reason, exc.detail)
            return None
        if tm.task_type not in self._registry:
            await self._reject_unknown_type(message, tm)
            return None
        not_before = _not_before(message)
        if not_before is not None and (not_before - utcnow()).total_seconds() >= DELIVER_EARLY_SECONDS:
            await self._settler.send_round(
                message,
                tm,
                "back before its time",
                not_before=not_before,
                await_owner=AwaitOwner.from_headers(message.headers),
            )
            return None
        return tm

    async def _reject_unknown_type(self, message: AbstractIncomingMessage, tm: TaskMessage) -> None:
        """No executable for the message's task type here. The task is dead-lettered only when
        the message is its own current one (same type, attempt, priority, generation) and the
        task waits for it; any other message naming a task is a message-level dead letter that
        leaves the task alone."""
        detail = (
            f"no executable for task type {tm.task_type!r} on this worker; "
            f"registered: {', '.join(self._registry.task_types())}"
        )
        try:
            current = await self._store.get(tm.task_id)
        except StoreError:
            current = None  # cannot tell: treat it as a message-level fault, leave the task be
        if current is not None and _waits_for(current, tm) and current.task_type == tm.task_type:
            await self._settler.dead_letter_task(
                message, tm.task_id, tm.task_type, tm.attempt, DeadLetterReason.UNKNOWN_TASK_TYPE, detail
            )
            return
        await self._settler.reject_malformed(message, DeadLetterReason.UNKNOWN_TASK_TYPE, detail)

    async def rate_slot(
        self, message: AbstractIncomingMessage, tm: TaskMessage, received_at: datetime
    ) -> bool:
        """Wait for the attempt's rate-limit slot; True when it may go on (to the claim).

        Only a message of a task that still waits to run at its attempt and priority takes a
        slot; any other goes on to the claim, which skips it. No slot within the hold: the
        message goes round the delay path to try again later, and this delivery is acked (no
        attempt is counted).
        """
        limits = self._rates.limits_of(tm.task_type)  # empty for most types: nothing to pay
        if not limits:
            return True
        try:
            current = await self._store.get(tm.task_id)
        except StoreError:
            current = None  # the claim holds the message through a store outage
        if current is None or not _waits_for(current, tm):
            return True
        try:
            come_back = await self._rates.admit(tm, limits)
        except StoreError as exc:
            # Not a requeue (it would count toward the delivery limit): round the delay path.
            log.warning("no rate-limit slot for task %s (%s); sending it round", tm.task_id, exc)
            retry_at = utcnow() + timedelta(seconds=max(self._store_backoff, DELIVER_EARLY_SECONDS * 2))
            await self._settler.send_round(message, tm, "rate limiter unavailable", not_before=retry_at)
            return False
        if come_back is None:
            return True
        when = datetime.fromtimestamp(come_back, UTC)
        await self._settler.send_round(message, tm, "no rate-limit slot within the hold", not_before=when)
        self._rates.note_delayed((utcnow() - received_at).total_seconds())
        return False


def _not_before(message: AbstractIncomingMessage) -> datetime | None:
    value = (message.headers or {}).get(HEADER_NOT_BEFORE)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < _LATEST_NOT_BEFORE_MS:
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _waits_for(task: BackgroundTask, tm: TaskMessage) -> bool:
    """Whether ``task`` still waits to run the attempt ``tm`` announces (at its priority)."""
    return task.status in RUNNABLE and task.retry_count == tm.attempt and task.priority == tm.priority
