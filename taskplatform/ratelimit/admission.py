"""When a delivery of a rate-limited task type may start: the worker's side of rate limits.

A delivery reserves a slot of its type's limit (always granted: a limit decides *when*,
never *whether*). If the slot opens within the hold bound the worker holds the message until
then; otherwise the consumer sends the message round the delay path to come back at its
slot, carrying the reservation in headers, and acks it: the store is untouched and no
attempt is counted. A delivery carrying a reservation does not reserve again; it may come
back up to ``DELIVER_EARLY_SECONDS`` early and is held for the rest. So every attempt that
runs took exactly one slot and starts in it, and nothing is held unacked for its rate limit
longer than ``max(hold, DELIVER_EARLY_SECONDS)``.

Several limits (one per user, one per type) are reserved one after the other, each once the
previous one's slot has come: reserving them all at once would let the type's slots, taken
now but used when the user's limit allows, pile up and start together. The headers say how
many of the limits the attempt holds (``x-rate-reserved``) and when the last slot opens
(``x-rate-slot``, epoch ms).

Slots are only ever under-used, never exceeded: a duplicate delivery, one whose claim then
loses (cancelled task, another worker ran it) and one handed back by the priority gate or a
shutdown each consume a slot without starting in it (a handed-back copy reserves again). A
delivery back more than one interval after its slot (the delay path's return can lag by a
tenth of a second or so) gives that slot up and reserves again: starting late in an old slot
would crowd the slots after it. An attempt starts no earlier than its slot, and later by the
claim work (milliseconds; more on a loaded machine). In TTL delay mode a wait between the
hold and the shortest tier (1 s), possible when the hold is under 1 s or for a second limit,
comes back up to that late. While the store is unreachable a delivery is held for up to
``store_hold`` seconds retrying its reservation, as a claim is, then returned to its queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from taskplatform.errors import StoreError
from taskplatform.models import TaskMessage
from taskplatform.models.message import HEADER_RATE_RESERVED, HEADER_RATE_SLOT
from taskplatform.ratelimit.declarations import RateLimit, ordered
from taskplatform.ratelimit.limiter import UNBOUNDED_WAIT, RateLimiter
from taskplatform.store.ratelimits import Reservation
from topology.spec import DELIVER_EARLY_SECONDS

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SlotReservation:
    """What an attempt holds: ``reserved`` of its limits, the last one's slot at ``slot``."""

    slot: float
    reserved: int

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> SlotReservation | None:
        """The reservation a delivery carries, or None."""
        values = headers or {}
        slot, reserved = values.get(HEADER_RATE_SLOT), values.get(HEADER_RATE_RESERVED)
        if not (_is_number(slot) and _is_number(reserved)):
            return None
        return cls(slot=float(slot) / 1000, reserved=int(reserved))

    def headers(self) -> dict[str, Any]:
        """The headers carrying it (the slot rounded up: never earlier than reserved)."""
        return {HEADER_RATE_SLOT: math.ceil(self.slot * 1000), HEADER_RATE_RESERVED: self.reserved}


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class RateStats:
    """What rate limiting did in this worker, for tests, benchmarks and logs."""

    #: Deliveries held until their slot (the slot had not opened when they arrived).
    held: int = 0
    #: Deliveries sent round the delay path to come back at their slot.
    delayed: int = 0
    #: Deliveries back later than one interval after their slot, which reserved again.
    reserved_again: int = 0
    #: Longest a delivery was held waiting for its slots, seconds.
    longest_hold: float = 0.0
    #: Longest a delivery sent round the delay path was held (receipt to ack), seconds.
    longest_delay_hold: float = 0.0


class RateAdmission:
    """Reserves slots for deliveries of limited task types and holds them until their slot.

    ``limits`` maps each limited task type to its declared limits; other types are never
    looked at (``limits_of`` answers an empty tuple). ``hold`` is the longest a delivery is
    held; the bound in effect is never below ``DELIVER_EARLY_SECONDS``, as early as the delay
    path delivers. While the limiter's store is unreachable a reservation is retried with
    backoff for up to ``store_hold`` seconds (like a claim), then StoreError is raised.
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
    ) -> None:
        self._limiter = limiter
        self._limits = {task_type: ordered(declared) for task_type, declared in limits.items() if declared}
        self.hold = max(hold, DELIVER_EARLY_SECONDS)
        self._store_backoff = store_backoff
        self._store_hold = store_hold
        self._clock = clock
        self.stats = RateStats()

    def limits_of(self, task_type: str) -> tuple[RateLimit, ...]:
        """The limits of ``task_type``, per-user ones first (empty: not limited)."""
        return self._limits.get(task_type, ())

    async def admit(
        self, tm: TaskMessage, limits: tuple[RateLimit, ...], carried: SlotReservation | None
    ) -> SlotReservation | None:
        """Wait for the attempt's slots, reserving those ``carried`` does not hold yet.

        Returns None once the attempt may start (after holding the delivery for at most the
        hold bound in all), or the reservation to come back with through the delay path.
        """
        entered = self._clock()
        if carried is not None and self._too_late(carried, limits, entered):
            self.stats.reserved_again += 1
            carried = None
        holding = carried or SlotReservation(slot=entered, reserved=0)
        slept = False
        while True:
            wait = holding.slot - self._clock()
            if wait > 0:
                if self._clock() - entered + wait > self.hold:
                    return holding
                slept = True
                await asyncio.sleep(wait)
            if holding.reserved >= len(limits):
                if slept:
                    self.stats.held += 1
                    self.stats.longest_hold = max(self.stats.longest_hold, self._clock() - entered)
                return None
            limit = limits[holding.reserved]
            now = self._clock()
            reservation = await self._reserve(limit.key(tm.task_type, tm.user_id), limit, now)
            holding = SlotReservation(slot=now + reservation.wait, reserved=holding.reserved + 1)

    @staticmethod
    def _too_late(carried: SlotReservation, limits: tuple[RateLimit, ...], now: float) -> bool:
        """Back more than one interval after its slot (the delay path's return can lag): starting
        now would crowd the slots after it, so the reservation is given up and taken anew."""
        if not 0 < carried.reserved <= len(limits):
            return carried.reserved > len(limits)  # declared limits changed meanwhile: start over
        return now - carried.slot > limits[carried.reserved - 1].rate.interval

    async def _reserve(self, key: str, limit: RateLimit, now: float) -> Reservation:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._store_hold
        delay = self._store_backoff
        while True:
            try:
                return await self._limiter.reserve(
                    key, interval=limit.rate.interval, burst=limit.burst, max_wait=UNBOUNDED_WAIT, now=now
                )
            except StoreError as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning(
                    "store unavailable reserving rate-limit slot %s (%s); holding the delivery, "
                    "retrying in %.1fs",
                    key,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                now = self._clock()  # the slot is counted from when it is actually reserved

    def note_delayed(self, held_for: float) -> None:
        """Count a delivery sent round the delay path, held ``held_for`` seconds before its ack."""
        self.stats.delayed += 1
        self.stats.longest_delay_hold = max(self.stats.longest_delay_hold, held_for)
