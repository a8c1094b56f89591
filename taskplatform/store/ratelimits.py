"""Rate-limit reservations kept in the store, shared by every process (the GCRA state).

One row (document) per limit key holds the key's *theoretical arrival time* (``tat``, epoch
seconds) of the generic cell rate algorithm, which meters exactly like a token bucket of
``burst`` tokens refilled every ``interval`` seconds. A reservation is one atomic upsert:

    base = max(tat, now);  wait = base + interval - burst * interval - now
    if wait <= max_wait: tat = base + interval     (reserved: the caller may go in ``wait`` s)
    else:                tat unchanged             (refused: nothing is consumed)

so any number of workers sharing the store never exceed the rate together. Times are epoch
seconds on the store's clock (``BaseTaskStore.now()``, each process corrected by its measured
offset), unless a caller passes its own ``now``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Longest key kept as it is; longer ones are hashed (the SQL column's width).
MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Reservation:
    """The outcome of one reservation: whether a slot was taken, and how long until it opens
    (or, when refused, until one would)."""

    granted: bool
    wait: float


def rate_key(key: str) -> str:
    """``key`` as stored: itself when short enough, else a SHA-256 of it."""
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def check_rate(interval: float, burst: int, max_wait: float) -> None:
    """Refuse parameters no limit has (ValueError)."""
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    if max_wait < 0:
        raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")


def reservation_of(raw_wait: float, max_wait: float) -> Reservation:
    """The reservation a computed ``wait`` (possibly negative: a token was to spare) stands for."""
    return Reservation(granted=raw_wait <= max_wait, wait=max(0.0, raw_wait))
