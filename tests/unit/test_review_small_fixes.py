"""Small regressions pinned: the store rate limiter asks only ``reserve_rate`` of a store, the
authentication debug lines keep the ``taskplatform.auth`` logger name, and the SQL store's
module does not bind its table to a name a method parameter (``create_many(tasks)``) shadows."""

from __future__ import annotations

import logging

import pytest

from taskplatform.auth import AuthenticationError, TokenVerifier
from taskplatform.ratelimit.limiter import StoreRateLimiter, create_rate_limiter
from taskplatform.settings import PlatformSettings
from taskplatform.store.ratelimits import Reservation
from taskplatform.store.sql import store as sql_store
from tests.api.tokens import OTHER_SECRET, SECRET, claims, hs256


class ReserveOnly:
    """A custom store keeping reservations, without pruning (the reaper prunes its own store)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        self.calls.append(key)
        return Reservation(granted=True, wait=0.0)


async def test_a_store_with_only_reserve_rate_keeps_rate_limits() -> None:
    store = ReserveOnly()
    limiter = create_rate_limiter("store", store)
    assert isinstance(limiter, StoreRateLimiter)
    assert (await limiter.reserve("k", interval=1.0, max_wait=0.0)).granted
    assert store.calls == ["k"]


def test_a_store_without_reserve_rate_is_refused() -> None:
    from taskplatform.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\(it has no reserve_rate\)"):
        create_rate_limiter("store", object())


def test_a_rejected_token_is_logged_under_taskplatform_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="taskplatform.auth")
    verifier = TokenVerifier.from_settings(PlatformSettings(auth="jwt", jwt_secret=SECRET))
    with pytest.raises(AuthenticationError):
        verifier.verify(hs256(claims(), secret=OTHER_SECRET))
    names = [r.name for r in caplog.records if "bearer token rejected" in r.getMessage()]
    assert names == ["taskplatform.auth"]


def test_the_sql_store_module_names_its_table_tasks_table() -> None:
    assert not hasattr(sql_store, "tasks")  # a parameter named tasks would shadow it
    assert sql_store.tasks_table.name == "tasks"
