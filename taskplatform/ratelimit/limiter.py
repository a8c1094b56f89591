"""The ``RateLimiter`` extension point and its implementations: in this process, or in the store.

Both meter with the generic cell rate algorithm (see ``taskplatform.store.ratelimits``): a key
holds a *theoretical arrival time*; a reservation takes the next slot, one ``interval`` after
the last, with up to ``burst`` slots at once, if that slot opens within ``max_wait`` seconds.
A refused reservation consumes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from taskplatform.errors import ConfigError
from taskplatform.store.ratelimits import Reservation, check_rate, reservation_of

#: ``max_wait`` that grants every reservation (about 31 years; finite, so every backend binds it).
UNBOUNDED_WAIT = 1e9

#: Fewest keys before the memory limiter looks for expired ones.
_PRUNE_AT_LEAST = 1024


class RateLimiter(Protocol):
    """Reserves slots of named limits (one per ``interval`` seconds, bursts of ``burst``)."""

    async def reserve(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """Reserve ``key``'s next slot if it opens within ``max_wait`` seconds of ``now`` (epoch
        seconds, default the current time); the reservation says whether, and how long until."""
        ...


@runtime_checkable
class RateStore(Protocol):
    """What the store limiter needs of a store: ``reserve_rate`` only (as ``ports.RateLimits``
    declares it). Pruning spent keys is the reaper's job, on the store the reaper is given."""

    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation: ...


class MemoryRateLimiter:
    """Reservations kept in this process: every process counts on its own, so N processes
    together allow N times a rate.

    A reservation never awaits, so it is atomic under asyncio. Keys whose slots have all
    opened are dropped from time to time (such a key behaves exactly like a new one), so
    per-user keys do not accumulate.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._prune_at = _PRUNE_AT_LEAST

    async def reserve(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """See :meth:`RateLimiter.reserve`."""
        return self.reserve_now(key, interval=interval, burst=burst, max_wait=max_wait, now=now)

    def reserve_now(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """The reservation, synchronously (the same GCRA step as the store's upsert)."""
        check_rate(interval, burst, max_wait)
        at = self._clock() if now is None else now
        base = max(self._tat.get(key, at), at)
        raw_wait = base + interval - burst * interval - at
        reservation = reservation_of(raw_wait, max_wait)
        if reservation.granted:
            self._tat[key] = base + interval
            if len(self._tat) >= self._prune_at:
                self._prune(at)
        return reservation

    def _prune(self, now: float) -> None:
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}
        self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._tat))

    def __len__(self) -> int:
        """Keys currently kept."""
        return len(self._tat)


class StoreRateLimiter:
    """Reservations kept in the store: one atomic upsert each, shared by every process using
    the store, so a limit holds across all workers together. Raises StoreError when the store
    cannot be reached."""

    def __init__(self, store: RateStore) -> None:
        self._store = store

    async def reserve(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """See :meth:`RateLimiter.reserve`."""
        return await self._store.reserve_rate(key, interval=interval, burst=burst, max_wait=max_wait, now=now)


async def reserve_many(
    limiter: RateLimiter,
    key: str,
    count: int,
    *,
    interval: float,
    burst: int = 1,
    max_wait: float,
    now: float | None = None,
) -> Reservation:
    """Reserve ``count`` consecutive slots of ``key`` at once, all or none, on any limiter.

    Exactly the GCRA step with a cost of ``count``: it is one single-slot reservation of a
    ``count`` times longer interval and a burst of one, allowed to wait the ``burst - count``
    slots the limit had to spare longer (so no backend needs a cost parameter). The wait is
    until the last of the slots opens. ValueError when ``count`` is below 1 or above ``burst``
    (such a reservation could never be granted).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count > burst:
        raise ValueError(f"count ({count}) exceeds the burst ({burst}): it could never be reserved")
    check_rate(interval, burst, max_wait)
    spare = (burst - count) * interval
    reservation = await limiter.reserve(
        key, interval=count * interval, burst=1, max_wait=max_wait + spare, now=now
    )
    return Reservation(granted=reservation.granted, wait=max(0.0, reservation.wait - spare))


def create_rate_limiter(backend: Literal["store", "memory"], store: object) -> RateLimiter:
    """The limiter a ``*rate_limit_backend`` setting names; ConfigError when ``store`` is asked
    for and cannot keep reservations."""
    if backend == "memory":
        return MemoryRateLimiter()
    if backend == "store":
        if not isinstance(store, RateStore):
            raise ConfigError(
                f"the store ({type(store).__name__}) cannot keep rate limits (it has no reserve_rate); "
                "use a store of taskplatform.store or set the rate-limit backend to 'memory'"
            )
        return StoreRateLimiter(store)
    raise ConfigError(f"unknown rate-limit backend {backend!r}; use 'store' or 'memory'")
