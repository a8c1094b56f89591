"""Rate-limit reservations (``reserve_rate``), on every backend: the GCRA, atomic per key."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.store import BaseTaskStore

NOW = 1_800_000_000.0
T = 0.05  # 20 per second
#: Epoch seconds in a double are exact to about 0.2 µs: compare to the microsecond.


async def test_reservations_at_one_instant_are_spaced_one_interval_apart(store: BaseTaskStore) -> None:
    waits = [(await store.reserve_rate("type:a", interval=T, max_wait=10, now=NOW)).wait for _ in range(4)]
    assert waits == pytest.approx([0, T, 2 * T, 3 * T], abs=1e-6)
    later = await store.reserve_rate("type:a", interval=T, max_wait=10, now=NOW + 1)
    assert later.granted and later.wait == 0  # the backlog drained: a slot is free at once


async def test_a_burst_goes_at_once_then_the_rate_applies(store: BaseTaskStore) -> None:
    waits = [
        (await store.reserve_rate("type:b", interval=T, burst=3, max_wait=10, now=NOW)).wait for _ in range(5)
    ]
    assert waits == pytest.approx([0, 0, 0, T, 2 * T], abs=1e-6)


async def test_a_refused_reservation_consumes_nothing(store: BaseTaskStore) -> None:
    first = await store.reserve_rate("user:u", interval=1.0, max_wait=0, now=NOW)
    assert first.granted and first.wait == 0
    for _ in range(3):  # refused again and again, never pushing the next slot further out
        refused = await store.reserve_rate("user:u", interval=1.0, max_wait=0.5, now=NOW + 0.25)
        assert not refused.granted and refused.wait == pytest.approx(0.75, abs=1e-6)
    granted = await store.reserve_rate("user:u", interval=1.0, max_wait=0.5, now=NOW + 0.6)
    assert granted.granted and granted.wait == pytest.approx(0.4, abs=1e-6)


async def test_keys_are_independent_and_long_keys_work(store: BaseTaskStore) -> None:
    long_key = "user:" + "x" * 500
    assert (await store.reserve_rate(long_key, interval=1.0, max_wait=0, now=NOW)).granted
    assert not (await store.reserve_rate(long_key, interval=1.0, max_wait=0, now=NOW)).granted
    assert (await store.reserve_rate("user:" + "x" * 499, interval=1.0, max_wait=0, now=NOW)).granted


async def test_concurrent_reservations_each_get_their_own_slot(store: BaseTaskStore) -> None:
    results = await asyncio.gather(
        *(store.reserve_rate("type:c", interval=T, max_wait=100, now=NOW) for _ in range(40))
    )
    slots = sorted(round(r.wait / T) for r in results)
    assert all(r.granted for r in results)
    assert slots == list(range(40))  # no slot given twice, none skipped


async def test_keys_whose_slots_have_all_passed_are_pruned_and_act_like_new_ones(
    store: BaseTaskStore,
) -> None:
    await store.reserve_rate("old", interval=1.0, max_wait=10, now=NOW)  # its slot: NOW
    await store.reserve_rate("busy", interval=1.0, max_wait=10, now=NOW + 5)
    await store.reserve_rate("busy", interval=1.0, max_wait=10, now=NOW + 5)  # the next one: NOW + 6
    assert await store.prune_rate_limits(now=NOW + 5.5) == 1
    assert await store.prune_rate_limits(now=NOW + 5.5) == 0
    again = await store.reserve_rate("old", interval=1.0, max_wait=0, now=NOW + 5.5)
    assert again.granted and again.wait == 0
    busy = await store.reserve_rate("busy", interval=1.0, max_wait=0, now=NOW + 5.5)
    assert not busy.granted and busy.wait == pytest.approx(1.5, abs=1e-6)  # busy's state was kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0.0}, "interval"),
        ({"interval": 1.0, "burst": 0}, "burst"),
        ({"interval": 1.0, "max_wait": -1}, "max_wait"),
    ],
)
async def test_impossible_limits_are_refused(
    store: BaseTaskStore, kwargs: dict[str, float], message: str
) -> None:
    params = {"max_wait": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        await store.reserve_rate("k", **params)  # type: ignore[arg-type]
