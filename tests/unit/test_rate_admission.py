"""The worker's side of rate limits, on a fake clock: a slot within the hold is waited for;
without one nothing is reserved and the message comes back later, spread out."""

from __future__ import annotations

import pytest

from taskplatform.errors import StoreError
from taskplatform.models import TaskMessage
from taskplatform.ratelimit.admission import RateAdmission
from taskplatform.ratelimit.declarations import RateLimit
from taskplatform.ratelimit.limiter import MemoryRateLimiter
from taskplatform.store.ratelimits import Reservation
from topology.spec import DELIVER_EARLY_SECONDS

T0 = 1_800_000_000.0
PER_TYPE = (RateLimit("10/s"),)  # one start every 0.1 s


class Clock:
    """Time that passes only when something sleeps."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Counting(MemoryRateLimiter):
    """Records reservations; fails the first ``failures`` of them like an unreachable store."""

    def __init__(self, clock: Clock, failures: int = 0) -> None:
        super().__init__(clock)
        self.calls: list[tuple[str, float]] = []
        self.failures = failures

    async def reserve(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        if self.failures:
            self.failures -= 1
            raise StoreError("store unreachable")
        self.calls.append((key, max_wait))
        return await super().reserve(key, interval=interval, burst=burst, max_wait=max_wait, now=now)


def admission(
    limits: dict[str, tuple[RateLimit, ...]], *, hold: float = 1.0, failures: int = 0
) -> tuple[RateAdmission, Clock, Counting]:
    clock = Clock()
    limiter = Counting(clock, failures)
    rates = RateAdmission(limiter, limits, hold=hold, clock=clock, sleep=clock.sleep, store_backoff=0.01)
    return rates, clock, limiter


def message(user: str | None = "alice", task_type: str = "paced") -> TaskMessage:
    return TaskMessage(task_id="t", task_type=task_type, user_id=user)


async def test_a_slot_within_the_hold_is_waited_for_here() -> None:
    rates, clock, _ = admission({"paced": PER_TYPE})
    for _ in range(3):
        assert await rates.admit(message(), PER_TYPE) is None
    assert clock.slept == pytest.approx([0.1, 0.1])  # the first slot was free, the next two 0.1 s on
    assert rates.stats.held == 2 and rates.stats.longest_hold == pytest.approx(0.1)


async def test_without_a_slot_within_the_hold_nothing_is_reserved_and_returns_are_spread() -> None:
    limit = (RateLimit("1/s"),)
    rates, clock, limiter = admission({"paced": limit}, hold=0.5)
    assert await rates.admit(message(), limit) is None  # the first is free
    backs = [await rates.admit(message(), limit) for _ in range(3)]
    assert clock.slept == []  # nothing waited here
    # each comes back when its slot could open, one interval after the one before, aiming half
    # a second early (the delay path delivers up to that early, never late)
    early = DELIVER_EARLY_SECONDS
    assert backs == pytest.approx([T0 + 1.0 - early, T0 + 2.0 - early, T0 + 3.0 - early])
    assert [wait for _, wait in limiter.calls] == [0.5] * 4  # only slots within the hold were asked for
    # the refusals took nothing: the next slot is still the one right after the first
    clock.now = T0 + 1.0
    assert await rates.admit(message(), limit) is None and clock.slept == []


async def test_a_later_return_never_lands_within_the_hold() -> None:
    limit = (RateLimit("20/s"),)  # slots 0.05 s apart: the next free one is well within a 1 s hold
    rates, clock, _ = admission({"paced": limit}, hold=1.0)
    for _ in range(21):  # fill the hold: 21 slots, the last 1.0 s out
        assert await rates.admit(message(), limit) is None
        clock.now = T0
    back = await rates.admit(message(), limit)
    assert back is not None and back >= T0 + DELIVER_EARLY_SECONDS  # sent round, not back at once


async def test_several_limits_are_taken_one_after_the_other_within_one_hold() -> None:
    per_user, per_type = RateLimit("6/m", per="user"), RateLimit("10/s")  # user: one per 10 s
    rates, clock, limiter = admission({"paced": (per_type, per_user)})
    limits = rates.limits_of("paced")
    assert limits == (per_user, per_type)
    assert await rates.admit(message("alice"), limits) is None  # both free
    back = await rates.admit(message("alice"), limits)  # alice must wait 10 s for her own limit
    assert back == pytest.approx(T0 + 10.0 - DELIVER_EARLY_SECONDS)
    assert await rates.admit(message("bob"), limits) is None  # bob takes the type's next slot
    assert clock.slept == pytest.approx([0.1])
    assert [key for key, _ in limiter.calls] == [
        "user:alice:paced",
        "task_type:paced",
        "user:alice:paced",  # refused: the type's limit was not asked for alice
        "user:bob:paced",
        "task_type:paced",
    ]


async def test_the_hold_bound_covers_all_of_a_deliverys_waits() -> None:
    per_user, per_type = RateLimit("2/s", per="user"), RateLimit("2/s")  # one each per 0.5 s
    rates, clock, limiter = admission({"paced": (per_user, per_type)}, hold=0.6)
    limits = rates.limits_of("paced")
    assert await rates.admit(message("alice"), limits) is None
    clock.now = T0 + 0.1
    # alice: 0.4 s for her own next slot; the type's is free then, at 0.5 s: within the hold
    assert await rates.admit(message("alice"), limits) is None
    assert clock.slept == pytest.approx([0.4])
    clock.now = T0 + 0.5
    # bob at 0.5 s: the type's next slot is at 1.0 s; only 0.6 s of hold in all
    assert limiter.calls[-1] == ("task_type:paced", pytest.approx(0.2))
    assert await rates.admit(message("bob"), limits) is None
    assert clock.slept[-1] == pytest.approx(0.5) and clock.now == pytest.approx(T0 + 1.0)


async def test_unlimited_types_have_no_limits_and_the_hold_is_never_below_early_delivery() -> None:
    rates = RateAdmission(MemoryRateLimiter(), {"paced": PER_TYPE, "free": ()}, hold=0)
    assert rates.limits_of("free") == () and rates.limits_of("other") == ()
    assert rates.hold == DELIVER_EARLY_SECONDS


async def test_an_unreachable_store_is_retried_then_given_up() -> None:
    rates, _, _ = admission({"paced": PER_TYPE}, failures=2)
    assert await rates.admit(message(), PER_TYPE) is None  # the third try succeeds
    hopeless, _, _ = admission({"paced": PER_TYPE}, failures=10**6)
    with pytest.raises(StoreError):
        await hopeless.admit(message(), PER_TYPE)  # gives up after store_hold (300 s, on the fake clock)
