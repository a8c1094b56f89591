"""When a delivery of a rate-limited task type may start: the worker's side of rate limits.

A delivery takes a slot of its type's limit only if that slot opens within the hold bound
(``RATE_LIMIT_HOLD_SECONDS``); the worker then holds the message until the slot and lets the
attempt start. If no slot opens that soon, nothing is reserved: the consumer sends the message
round the delay path to come back when a slot may be free, and acks it (the store is untouched
and no attempt is counted); back, it tries again. So the limit's state never runs ahead of the
present by more than the hold: a backlog does not book slots far into the future, cancelling it
frees the schedule at once, and a task arriving later competes on equal terms.

Messages sent round are spread out in this worker one interval apart (a local schedule per
key), so a backlog comes back at about the limit's pace instead of all at once, and aim half a
second early: the delay path delivers up to that early, never later, and an early message just
takes its slot within the hold. A worker only
admits deliveries whose task still waits to run at their attempt and priority (one store read,
for limited types only), so messages of cancelled, finished or re-prioritised tasks go straight
to the claim, which skips them, and never take a slot.

Several limits (per user, then per type) are taken one after the other within one hold; if a
later one has no slot in time the earlier ones stay taken and unused (the limit is under-used,
never exceeded). While the store is unreachable a reservation is retried with backoff for up to
``store_hold`` seconds, as a claim is, then StoreError is raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from taskplatform.errors import StoreError
from taskplatform.models import TaskMessage
from taskplatform.ratelimit.declarations import RateLimit, ordered
from taskplatform.ratelimit.limiter import UNBOUNDED_WAIT, MemoryRateLimiter, RateLimiter
from taskplatform.store.ratelimits import Reservation
from topology.spec import DELIVER_EARLY_SECONDS

log = logging.getLogger(__name__)


@dataclass
class RateStats:
    """What rate limiting did in this worker, for tests, benchmarks and logs."""

    #: Deliveries held until their slot (the slot had not opened when they arrived).
    held: int = 0
    #: Deliveries sent round the delay path (no slot within the hold).
    delayed: int = 0
    #: Longest a delivery was held waiting for its slots, seconds.
    longest_hold: float = 0.0
    #: Longest a delivery sent round the delay path was held (receipt to ack), seconds.
    longest_delay_hold: float = 0.0


class RateAdmission:
    """Takes slots for deliveries of limited task types and holds them until their slot.

    ``limits`` maps each limited task type to its declared limits; other types are never looked
    at (``limits_of`` answers an empty tuple). ``hold`` is the longest a delivery is held; never
    below ``DELIVER_EARLY_SECONDS``, the delay path's precision (a shorter wait could not be sent
    round: it would come straight back).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        limits: Mapping[str, tuple[RateLimit, ...]],
        *,
        hold: float,
        store_backoff: float = 1.0,
        store_hold: float = 300.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limiter = limiter
        self._limits = {task_type: ordered(declared) for task_type, declared in limits.items() if declared}
        self.hold = max(hold, DELIVER_EARLY_SECONDS)
        self._store_backoff = store_backoff
        self._store_hold = store_hold
        self._clock = clock
        self._sleep = sleep
        # When this worker sends the next message of a key round (one interval after the last).
        self._returns = MemoryRateLimiter(clock)
        self.stats = RateStats()

    def limits_of(self, task_type: str) -> tuple[RateLimit, ...]:
        """The limits of ``task_type``, per-user ones first (empty: not limited)."""
        return self._limits.get(task_type, ())

    async def admit(self, tm: TaskMessage, limits: tuple[RateLimit, ...]) -> float | None:
        """Wait for the attempt's slots if they open within the hold.

        Returns None once the attempt may start (the delivery held for at most the hold in all),
        or when to come back (epoch seconds) when a slot does not open in time; nothing is kept
        reserved for the limit that had none.
        """
        entered = self._clock()
        for limit in limits:
            key = limit.key(tm.task_type, tm.user_id)
            left = max(0.0, self.hold - (self._clock() - entered))
            reservation = await self._reserve(key, limit, max_wait=left)
            if not reservation.granted:
                return self._come_back_at(key, limit, reservation.wait)
            if reservation.wait > 0:
                await self._sleep(reservation.wait)
        held = self._clock() - entered
        if held > 0.001:
            self.stats.held += 1
            self.stats.longest_hold = max(self.stats.longest_hold, held)
        return None

    def _come_back_at(self, key: str, limit: RateLimit, wait: float) -> float:
        """When to come back: when a slot may open (spread one interval after this worker's last
        message of ``key`` sent round), less the delay path's precision, so the message is back
        in time rather than up to half a second late; and never sooner than that precision (it
        would come straight back)."""
        now = self._clock()
        earliest = now + wait
        spread = self._returns.reserve_now(
            key, interval=limit.rate.interval, max_wait=UNBOUNDED_WAIT, now=earliest
        )
        return max(earliest + spread.wait - DELIVER_EARLY_SECONDS, now + DELIVER_EARLY_SECONDS)

    async def _reserve(self, key: str, limit: RateLimit, *, max_wait: float) -> Reservation:
        deadline = self._clock() + self._store_hold
        delay = self._store_backoff
        while True:
            try:
                return await self._limiter.reserve(
                    key, interval=limit.rate.interval, burst=limit.burst, max_wait=max_wait
                )
            except StoreError as exc:
                if self._clock() + delay > deadline:
                    raise
                log.warning(
                    "store unavailable reserving rate-limit slot %s (%s); holding the delivery, "
                    "retrying in %.1fs",
                    key,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, 30.0)

    def note_delayed(self, held_for: float) -> None:
        """Count a delivery sent round the delay path, held ``held_for`` seconds before its ack."""
        self.stats.delayed += 1
        self.stats.longest_delay_hold = max(self.stats.longest_delay_hold, held_for)
