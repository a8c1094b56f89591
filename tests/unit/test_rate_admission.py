"""The worker's side of rate limits: reserve once per attempt, hold within the bound, else come back."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskplatform.errors import StoreError
from taskplatform.models import TaskMessage
from taskplatform.models.message import HEADER_RATE_RESERVED, HEADER_RATE_SLOT
from taskplatform.ratelimit.admission import (
    RateAdmission,
    SlotReservation,
)
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.ratelimit.limiter import MemoryRateLimiter
from taskplatform.store.ratelimits import Reservation
from topology.spec import DELIVER_EARLY_SECONDS


class Counting(MemoryRateLimiter):
    """Counts reservations; fails the first ``failures`` of them like an unreachable store."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.calls: list[tuple[str, float | None]] = []
        self.failures = failures

    async def reserve(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        if self.failures:
            self.failures -= 1
            raise StoreError("store unreachable")
        self.calls.append((key, now))
        return await super().reserve(key, interval=interval, burst=burst, max_wait=max_wait, now=now)


def message(user: str | None = "alice", task_type: str = "paced") -> TaskMessage:
    return TaskMessage(task_id="t", task_type=task_type, user_id=user)


PER_TYPE = (RateLimit("10/s"),)  # one start every 0.1 s


async def test_a_slot_within_the_hold_is_waited_for_here() -> None:
    rates = RateAdmission(MemoryRateLimiter(), {"paced": PER_TYPE}, hold=1.0)
    assert await rates.admit(message(), PER_TYPE, None) is None  # the first slot is free
    started = time.monotonic()
    assert await rates.admit(message(), PER_TYPE, None) is None
    assert await rates.admit(message(), PER_TYPE, None) is None
    took = time.monotonic() - started
    assert 0.19 <= took < 0.35, took  # held until the third slot, 0.2 s after the first
    assert rates.stats.held == 2 and 0.05 < rates.stats.longest_hold <= 0.12


async def test_a_slot_beyond_the_hold_is_returned_without_waiting_and_stays_reserved() -> None:
    limiter = Counting()
    rates = RateAdmission(limiter, {"paced": (RateLimit("1/s"),)}, hold=DELIVER_EARLY_SECONDS)
    limits = rates.limits_of("paced")
    started = time.monotonic()
    answers = [await rates.admit(message(), limits, None) for _ in range(3)]
    assert time.monotonic() - started < 0.2  # nothing was held
    first, second, third = answers
    assert first is None and second is not None and third is not None
    assert (second.reserved, third.reserved) == (1, 1)
    assert second.slot - time.time() == pytest.approx(1.0, abs=0.1)
    assert third.slot - second.slot == pytest.approx(1.0, abs=1e-6)  # one interval apart: both reserved
    assert rates.stats.held == 0
    # the slot a delivery carries is waited for, not reserved again
    calls = len(limiter.calls)
    soon = SlotReservation(slot=time.time() + 0.1, reserved=1)
    assert await rates.admit(message(), limits, soon) is None
    later = SlotReservation(slot=time.time() + 3, reserved=1)
    assert await rates.admit(message(), limits, later) == later
    assert len(limiter.calls) == calls
    assert rates.stats.held == 1


async def test_a_delivery_back_more_than_one_interval_late_reserves_again() -> None:
    limiter = Counting()
    rates = RateAdmission(limiter, {"paced": PER_TYPE}, hold=1.0)
    slightly_late = SlotReservation(slot=time.time() - 0.05, reserved=1)  # within 0.1 s: used
    assert await rates.admit(message(), PER_TYPE, slightly_late) is None
    assert limiter.calls == [] and rates.stats.reserved_again == 0
    late = SlotReservation(slot=time.time() - 0.5, reserved=1)
    assert await rates.admit(message(), PER_TYPE, late) is None  # a fresh slot, free at once
    assert [key for key, _ in limiter.calls] == ["task_type:paced"]
    assert rates.stats.reserved_again == 1
    # fewer limits are declared now than the delivery holds: it starts over as well
    assert await rates.admit(message(), PER_TYPE, SlotReservation(slot=time.time(), reserved=2)) is None
    assert len(limiter.calls) == 2


async def test_unlimited_types_have_no_limits_and_the_hold_is_never_below_early_delivery() -> None:
    rates = RateAdmission(MemoryRateLimiter(), {"paced": PER_TYPE, "free": ()}, hold=0)
    assert rates.limits_of("free") == () and rates.limits_of("other") == ()
    assert rates.hold == DELIVER_EARLY_SECONDS


async def test_several_limits_are_reserved_each_once_the_previous_slot_has_come() -> None:
    per_user, per_type = RateLimit("6/m", per="user"), RateLimit("10/s")  # user: one per 10 s
    limiter = Counting()
    rates = RateAdmission(limiter, {"paced": (per_type, per_user)}, hold=1.0)
    limits = rates.limits_of("paced")
    assert limits == (per_user, per_type)
    assert await rates.admit(message("alice"), limits, None) is None  # both slots free
    # alice's next task must wait for her own limit: it comes back holding that one slot only,
    # and the type's bucket is left to others meanwhile
    alice = await rates.admit(message("alice"), limits, None)
    assert alice is not None and alice.reserved == 1
    assert alice.slot - time.time() == pytest.approx(10, abs=0.05)
    started = time.monotonic()
    assert await rates.admit(message("bob"), limits, None) is None  # the type's next slot, 0.1 s
    assert 0.05 < time.monotonic() - started < 0.2
    keys = [key for key, _ in limiter.calls]
    assert keys == [
        "user:alice:paced",
        "task_type:paced",
        "user:alice:paced",
        "user:bob:paced",
        "task_type:paced",
    ]
    # back at its slot, alice's delivery reserves the type's limit from then on
    back = SlotReservation(slot=time.time() + 0.05, reserved=1)
    assert await rates.admit(message("alice"), limits, back) is None
    assert limiter.calls[-1][0] == "task_type:paced" and limiter.calls[-1][1] >= back.slot


async def test_the_hold_bound_covers_all_of_a_deliverys_waits() -> None:
    per_user, per_type = RateLimit("2/s", per="user"), RateLimit("2/s")  # one each per 0.5 s
    rates = RateAdmission(MemoryRateLimiter(), {"paced": (per_user, per_type)}, hold=0.6)
    limits = rates.limits_of("paced")
    assert await rates.admit(message("alice"), limits, None) is None

    async def timed(user: str) -> tuple[SlotReservation | None, float]:
        started = time.monotonic()
        answer = await rates.admit(message(user), limits, None)
        return answer, time.monotonic() - started

    # bob: free per user, held 0.5 s for the type's next slot (which moves on to 1.0 s).
    # alice: held 0.5 s for her own next slot; then the type's is 0.5 s further: 0.5 + 0.5 is
    # past the hold, so she comes back for it, holding both of her slots
    (bob, bob_held), (alice, alice_held) = await asyncio.gather(timed("bob"), timed("alice"))
    assert bob is None and 0.45 < bob_held < 0.6
    assert alice is not None and alice.reserved == 2
    assert 0.45 < alice_held <= 0.6 + 0.02, alice_held
    assert alice.slot - time.time() == pytest.approx(0.5, abs=0.05)


async def test_an_unreachable_store_is_retried_then_given_up() -> None:
    rates = RateAdmission(Counting(failures=2), {"paced": PER_TYPE}, hold=1.0, store_backoff=0.01)
    assert await rates.admit(message(), PER_TYPE, None) is None  # third try succeeds
    hopeless = RateAdmission(
        Counting(failures=100), {"paced": PER_TYPE}, hold=1.0, store_backoff=0.01, store_hold=0.1
    )
    with pytest.raises(StoreError):
        await asyncio.wait_for(hopeless.admit(message(), PER_TYPE, None), timeout=5)


def test_the_reservation_headers_round_trip_and_never_move_a_slot_earlier() -> None:
    held = SlotReservation(slot=1_800_000_000.1234, reserved=2)
    headers = held.headers()
    assert headers == {HEADER_RATE_SLOT: 1_800_000_000_124, HEADER_RATE_RESERVED: 2}
    parsed = SlotReservation.from_headers(headers)
    assert parsed is not None and parsed.reserved == 2 and parsed.slot >= held.slot
    assert SlotReservation.from_headers(None) is None
    assert SlotReservation.from_headers({HEADER_RATE_SLOT: True, HEADER_RATE_RESERVED: 1}) is None
    assert SlotReservation.from_headers({HEADER_RATE_SLOT: 5}) is None
