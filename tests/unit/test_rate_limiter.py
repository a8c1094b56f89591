"""The rate limiters: the in-process GCRA and the store-backed one agree, slot for slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskplatform.errors import ConfigError
from taskplatform.ratelimit.limiter import (
    UNBOUNDED_WAIT,
    MemoryRateLimiter,
    RateLimiter,
    StoreRateLimiter,
    create_rate_limiter,
)
from taskplatform.store import create_store
from taskplatform.store.ratelimits import Reservation

NOW = 1_800_000_000.0
T = 0.05  # 20 per second


async def test_reservations_at_one_instant_are_spaced_one_interval_apart() -> None:
    limiter = MemoryRateLimiter()
    waits = [(await limiter.reserve("k", interval=T, max_wait=10, now=NOW)).wait for _ in range(4)]
    assert waits == pytest.approx([0, T, 2 * T, 3 * T], abs=1e-6)
    later = await limiter.reserve("k", interval=T, max_wait=10, now=NOW + 1)
    assert later == Reservation(granted=True, wait=0.0)  # the backlog drained


async def test_a_burst_goes_at_once_then_the_rate_applies() -> None:
    limiter = MemoryRateLimiter()
    waits = [(await limiter.reserve("k", interval=T, burst=3, max_wait=10, now=NOW)).wait for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0, T, 2 * T], abs=1e-6)
    # after a pause the bucket refills, but never beyond the burst
    waits = [
        (await limiter.reserve("k", interval=T, burst=3, max_wait=10, now=NOW + 60)).wait for _ in range(4)
    ]
    assert waits == pytest.approx([0, 0, 0, T], abs=1e-6)


async def test_a_refused_reservation_consumes_nothing() -> None:
    limiter = MemoryRateLimiter()
    assert (await limiter.reserve("u", interval=1.0, max_wait=0, now=NOW)).granted
    for _ in range(3):
        refused = await limiter.reserve("u", interval=1.0, max_wait=0.5, now=NOW + 0.25)
        assert not refused.granted and refused.wait == pytest.approx(0.75, abs=1e-6)
    granted = await limiter.reserve("u", interval=1.0, max_wait=0.5, now=NOW + 0.6)
    assert granted.granted and granted.wait == pytest.approx(0.4, abs=1e-6)


async def test_keys_are_independent() -> None:
    limiter = MemoryRateLimiter()
    assert (await limiter.reserve("a", interval=1.0, max_wait=0, now=NOW)).granted
    assert (await limiter.reserve("b", interval=1.0, max_wait=0, now=NOW)).granted
    assert not (await limiter.reserve("a", interval=1.0, max_wait=0, now=NOW)).granted


async def test_concurrent_reservations_each_get_their_own_slot() -> None:
    limiter = MemoryRateLimiter(clock=lambda: NOW)
    results = await asyncio.gather(
        *(limiter.reserve("c", interval=T, max_wait=UNBOUNDED_WAIT) for _ in range(40))
    )
    assert sorted(round(r.wait / T) for r in results) == list(range(40))


async def test_keys_whose_slots_have_opened_are_dropped_without_changing_any_answer() -> None:
    limiter = MemoryRateLimiter()
    for i in range(3000):
        await limiter.reserve(f"user:{i}", interval=1.0, max_wait=0, now=NOW)
    assert len(limiter) == 3000  # every key's next slot is still ahead: all kept
    await limiter.reserve("user:busy", interval=100.0, max_wait=0, now=NOW + 10)
    for i in range(3000):  # the first 3000 keys have all opened by now
        await limiter.reserve(f"later:{i}", interval=1.0, max_wait=0, now=NOW + 10)
    assert len(limiter) <= 3001  # the opened ones were dropped on the way
    refused = await limiter.reserve("user:busy", interval=100.0, max_wait=0, now=NOW + 20)
    assert not refused.granted and refused.wait == pytest.approx(90, abs=1e-6)  # a live key is kept
    assert (await limiter.reserve("user:7", interval=1.0, max_wait=0, now=NOW + 20)).granted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"interval": 0.0}, "interval"), ({"burst": 0}, "burst"), ({"max_wait": -1.0}, "max_wait")],
)
async def test_impossible_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    params = {"interval": 1.0, "max_wait": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        await MemoryRateLimiter().reserve("k", **params)  # type: ignore[arg-type]


async def test_the_store_limiter_gives_the_same_slots_as_the_memory_one(tmp_path: Path) -> None:
    store = create_store(f"sqlite+aiosqlite:///{tmp_path}/rates.db")
    await store.open()
    try:
        limiters: list[RateLimiter] = [MemoryRateLimiter(), create_rate_limiter("store", store)]
        assert isinstance(limiters[1], StoreRateLimiter)
        answers = []
        for limiter in limiters:
            calls = [
                limiter.reserve("k", interval=T, burst=2, max_wait=0.1, now=NOW + dt)
                for dt in (0, 0, 0, 0, 0.01, 0.3, 0.3, 5)
            ]
            answers.append([await call for call in calls])
        assert [r.granted for r in answers[0]] == [True, True, True, True, False, True, True, True]
        assert answers[1] == [
            Reservation(granted=r.granted, wait=pytest.approx(r.wait, abs=1e-6))  # type: ignore[arg-type]
            for r in answers[0]
        ]
    finally:
        await store.close()


def test_the_backend_setting_chooses_the_limiter() -> None:
    assert isinstance(create_rate_limiter("memory", object()), MemoryRateLimiter)
    with pytest.raises(ConfigError, match="cannot keep rate limits.*'memory'"):
        create_rate_limiter("store", object())
    with pytest.raises(ConfigError, match="unknown rate-limit backend 'redis'"):
        create_rate_limiter("redis", object())  # type: ignore[arg-type]
