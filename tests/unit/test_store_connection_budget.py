"""``STORE_MAX_CONNECTIONS``: one budget of store connections per process, split between a
PostgreSQL store's pools so that together they never open more; a value no store can run within
is a configuration error; a call finding its pool busy waits, and fails only after the pool
timeout. The PostgreSQL cases count the server's own view (``pg_stat_activity``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from taskplatform.cli.commands import main
from taskplatform.errors import ConfigError, StoreError
from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.runtime import build_store
from taskplatform.settings import PlatformSettings
from taskplatform.store import (
    DEFAULT_MAX_CONNECTIONS,
    MIN_MAX_CONNECTIONS,
    BaseTaskStore,
    TaskFilter,
    check_max_connections,
    create_store,
)
from taskplatform.store.mongo import MongoTaskStore
from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.pg_fast import PgFastPath
from taskplatform.store.sql.store import PoolSplit, split_connections
from taskplatform.store.types import ClaimRequest, CompletionRequest
from tests.support.services import POSTGRES_URL

# ------------------------------------------------------------------ the split


@pytest.mark.parametrize("total", range(MIN_MAX_CONNECTIONS, 65))
def test_every_budget_is_split_over_the_pools_exactly_with_each_pool_open(total: int) -> None:
    split = split_connections(total)
    assert split.total == total == split.sqlalchemy + split.fast + split.relaxed
    assert split.sqlalchemy >= 1 and split.fast >= 1
    assert split.relaxed >= (1 if total > MIN_MAX_CONNECTIONS else 0)


@pytest.mark.parametrize(
    ("total", "expected"),
    [(2, PoolSplit(1, 1, 0)), (3, PoolSplit(1, 1, 1)), (6, PoolSplit(3, 2, 1)), (8, PoolSplit(3, 3, 2))],
)
def test_the_split_of_the_usual_budgets(total: int, expected: PoolSplit) -> None:
    assert split_connections(total) == expected


def test_the_default_budget_is_six_in_the_settings_and_every_store() -> None:
    assert DEFAULT_MAX_CONNECTIONS == 6
    assert PlatformSettings().store_max_connections == DEFAULT_MAX_CONNECTIONS
    assert SqlTaskStore("postgresql+asyncpg://u@h/db").pools == PoolSplit(3, 2, 1)
    assert MongoTaskStore("mongodb://h/db").max_connections == DEFAULT_MAX_CONNECTIONS


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("value", [1, 0, -3])
def test_a_budget_too_small_for_a_store_is_a_config_error_naming_the_minimum(value: int) -> None:
    for make in (
        lambda: check_max_connections(value),
        lambda: split_connections(value),
        lambda: create_store("memory://", max_connections=value),
        lambda: create_store("postgresql+asyncpg://u@h/db", max_connections=value),
        lambda: SqlTaskStore("sqlite+aiosqlite:///x.db", max_connections=value),
        lambda: MongoTaskStore("mongodb://h/db", max_connections=value),
    ):
        with pytest.raises(ConfigError, match=f"max_connections must be at least 2 .*got {value}"):
            make()


@pytest.mark.parametrize("value", [True, 2.5, "6"])
def test_a_budget_that_is_not_an_integer_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_connections must be an integer"):
        check_max_connections(value)


@pytest.mark.parametrize("value", ["1", "0", "-5", "many"])
def test_the_setting_refuses_what_no_store_can_run_within(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TASKPLATFORM_STORE_MAX_CONNECTIONS", value)
    with pytest.raises(ValidationError, match="store_max_connections"):
        PlatformSettings()


def test_a_command_given_too_small_a_budget_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_STORE_MAX_CONNECTIONS", "1")
    assert main(["db", "upgrade"]) == 2
    assert "TASKPLATFORM_STORE_MAX_CONNECTIONS: Input should be greater than or equal to 2" in (
        capsys.readouterr().err
    )


def test_the_fast_path_refuses_pool_sizes_it_cannot_open() -> None:
    with pytest.raises(ValueError, match="pool sizes"):
        PgFastPath("postgresql://u@h/db", max_size=0)
    with pytest.raises(ValueError, match="pool sizes"):
        PgFastPath("postgresql://u@h/db", relaxed_size=-1)


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///x.db", "postgresql+asyncpg://u@h/db", "mongodb://h/db"])
def test_the_runtime_builds_its_store_with_the_setting(url: str) -> None:
    store = build_store(PlatformSettings(store_url=url, store_max_connections=9))
    assert isinstance(store, SqlTaskStore | MongoTaskStore) and store.max_connections == 9


async def test_a_mongodb_client_gets_the_budget_as_its_pool_size_over_the_urls() -> None:
    store = MongoTaskStore(
        "mongodb://127.0.0.1:1/db?maxPoolSize=50", max_connections=4, server_selection_timeout_ms=50
    )
    with pytest.raises(StoreError):
        await store.open()  # nothing listens there: the client exists, the ping fails
    try:
        assert store._client is not None
        options = store._client.options.pool_options
        assert (options.max_pool_size, options.wait_queue_timeout) == (4, 30.0)
    finally:
        await store.close()
        # the driver may drop its refused connection attempt after close: collected here, so its
        # ResourceWarning is not raised in whichever test runs next (as test_mongo_documents does)
        await asyncio.sleep(0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


# ------------------------------------------------------------------ SQLite


@contextlib.contextmanager
def counting_connections(store: SqlTaskStore) -> Any:
    """The most connections ``store``'s SQLAlchemy pool held open at once (``peak[0]``)."""
    state = {"open": 0, "peak": 0}

    def opened(*_: Any) -> None:
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])

    def closed(*_: Any) -> None:
        state["open"] -= 1

    engine = store.engine.sync_engine
    event.listen(engine, "connect", opened)
    event.listen(engine, "close", closed)
    event.listen(engine, "close_detached", closed)
    try:
        yield state
    finally:
        event.remove(engine, "connect", opened)
        event.remove(engine, "close", closed)
        event.remove(engine, "close_detached", closed)


@contextlib.asynccontextmanager
async def opened(store: SqlTaskStore) -> AsyncIterator[SqlTaskStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def busy_mix(store: BaseTaskStore) -> None:
    """Every kind of store call at once, many of each: inserts, reads by id and by owner, lists,
    claims, completions, outbox marks and leases, rate-limit reservations and roll-up
    transactions (SQLAlchemy) beside the fast path. Fails unless each call succeeded and the
    tasks ended as they should."""
    parent = BackgroundTask(task_type="generate_summary", parameters={}, user_id="u")
    children = [
        BackgroundTask(task_type="generate_summary", parameters={}, parent_task_id=parent.id, user_id="u")
        for _ in range(30)
    ]
    singles = [BackgroundTask(task_type="generate_summary", parameters={}, user_id="u") for _ in range(40)]
    await store.create_many([parent, *children])
    lease = utcnow() + timedelta(seconds=60)

    async def claim_and_complete(task: BackgroundTask) -> None:
        claimed = await store.try_set_running_many(
            [ClaimRequest(task.id, attempt=0, priority=task.priority)], node_id="n", lease_until=lease
        )
        assert task.id in claimed
        done = await store.record_completions([CompletionRequest(task.id, 0, {"ok": True})], node_id="n")
        assert task.id in done
        await store.apply_rollups(parent.id, [(task.id, TaskStatus.COMPLETED, done[task.id])])

    calls: list[Awaitable[Any]] = [store.create(t) for t in singles]
    calls += [claim_and_complete(c) for c in children]
    calls += [store.get(t.id) for t in children]
    calls += [store.get_visible(t.id, user_id="u") for t in children]
    calls += [store.list(TaskFilter(user_id="u"), limit=10) for _ in range(10)]
    calls += [store.mark_published([t.id]) for t in children]
    calls += [store.reserve_rate(f"k{i % 3}", interval=0.001, burst=100, max_wait=1.0) for i in range(20)]
    calls += [store.count_by_status() for _ in range(5)]
    calls += [
        store.claim_pending_outbox(owner="relay", limit=5, lease_until=lease, created_before=utcnow())
        for _ in range(5)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    done = await store.get(parent.id)
    assert done is not None and done.sub_task_status_summary is not None
    assert done.sub_task_status_summary.completed == 30
    for task in singles:
        assert await store.get(task.id) is not None


async def test_a_sqlite_store_at_the_smallest_budget_runs_everything_at_once_within_it(
    tmp_path: Path,
) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db", max_connections=2, pool_timeout=20)
    async with opened(store):
        with counting_connections(store) as held:
            await busy_mix(store)
        assert store.engine.pool.size() == 2  # type: ignore[attr-defined]
    assert held["peak"] <= 2


async def test_an_in_memory_sqlite_store_keeps_its_one_shared_connection() -> None:
    async with opened(SqlTaskStore("sqlite+aiosqlite:///:memory:", max_connections=4)) as store:
        assert isinstance(store.engine.pool, StaticPool)
        await store.create(BackgroundTask(task_type="generate_summary", parameters={}))
        assert sum((await store.count_by_status()).values()) == 1


async def test_a_call_finding_every_connection_busy_waits_for_one(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db", max_connections=2)
    async with opened(store):
        async with store.engine.connect(), store.engine.connect():
            waiting = asyncio.create_task(store.count_by_status())
            await asyncio.sleep(0.3)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, timeout=10) == {}


async def test_a_call_finding_every_connection_busy_past_the_pool_timeout_is_a_store_error(
    tmp_path: Path,
) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db", max_connections=2, pool_timeout=0.2)
    async with opened(store):
        async with store.engine.connect(), store.engine.connect():
            with pytest.raises(
                StoreError, match=r"no store connection free within 0\.2 s: all 2 of its pool"
            ):
                await store.count_by_status()
        assert await store.count_by_status() == {}  # free again


# ------------------------------------------------------------------ PostgreSQL


@contextlib.asynccontextmanager
async def server_view(database_url: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """A function counting the client connections the server has open to ``database_url``'s
    database, read over a connection to the administration database (so not counted)."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1))

    async def count() -> int:
        value: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            name,
        )
        return value

    try:
        yield count
    finally:
        await admin.close()


@pytest.mark.integration
@pytest.mark.parametrize("budget", [2, 3, 6])
async def test_a_postgresql_store_never_holds_more_connections_than_its_budget(
    own_postgres_database_url: str, budget: int
) -> None:
    store = SqlTaskStore(own_postgres_database_url, max_connections=budget, pool_timeout=20)
    async with server_view(own_postgres_database_url) as count, opened(store):
        peak = 0
        stop = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, await count())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            await busy_mix(store)
        finally:
            stop.set()
            await watcher
        held_after = await count()
        if budget == MIN_MAX_CONNECTIONS:
            assert store._fast is not None and store._fast.relaxed is store._fast.pool
    print(f"\nbudget {budget}: {store.pools}, peak {peak} connections, {held_after} held after the burst")
    assert peak <= budget
    assert held_after == budget  # the burst filled every pool to its share, and no further


@pytest.mark.integration
async def test_a_postgresql_call_past_the_pool_timeout_is_a_store_error_for_either_pool(
    own_postgres_database_url: str,
) -> None:
    store = SqlTaskStore(own_postgres_database_url, max_connections=2, pool_timeout=0.2)
    async with opened(store):
        task = BackgroundTask(task_type="generate_summary", parameters={})
        await store.create(task)
        assert store._fast is not None
        conn = await store._fast.pool.acquire()  # the fast path's one connection
        try:
            with pytest.raises(
                StoreError, match=r"no store connection free within 0\.2 s: all 1 of its pool"
            ):
                await store.get(task.id)
            assert await store.count_by_status() == {TaskStatus.QUEUED: 1}  # SQLAlchemy's is free
        finally:
            await store._fast.pool.release(conn)
        async with store.engine.connect():  # SQLAlchemy's one connection
            with pytest.raises(
                StoreError, match=r"no store connection free within 0\.2 s: all 1 of its pool"
            ):
                await store.count_by_status()
            assert (await store.get(task.id)) is not None  # the fast path's is free


async def test_a_store_url_query_the_driver_does_not_take_is_a_config_error_naming_it() -> None:
    from taskplatform.errors import ConfigError
    from taskplatform.store.sql import SqlTaskStore
    from tests.support.services import POSTGRES_URL, require_postgres

    require_postgres()
    store = SqlTaskStore(f"{POSTGRES_URL}?bogus_option=1", auto_migrate=False)
    with pytest.raises(ConfigError) as raised:
        await store.open()
    assert "bogus_option" in str(raised.value) and "query parameter" in str(raised.value)


async def test_a_type_error_that_is_not_a_url_keyword_is_not_dressed_as_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the driver's "unexpected keyword argument" is blamed on the URL; any other TypeError
    is a bug and surfaces as itself, after the half-open store is closed."""
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/t.db", auto_migrate=False)

    async def broken_ping() -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(store, "ping", broken_ping)
    with pytest.raises(TypeError, match="unsupported operand") as raised:
        await store.open()
    assert not isinstance(raised.value, ConfigError)
    assert store._engine is None  # closed, not leaked
