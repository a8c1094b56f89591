"""PostgreSQL hot path on asyncpg directly.

Every task passes through insert, claim, complete and mark-published. Through
SQLAlchemy's async engine each of those costs ~0.5–1 ms of CPU (pool events, greenlet
hand-offs, result wrapping); on the driver it costs ~0.1 ms. So these few statements,
fixed and prepared once per connection, run on a small asyncpg pool of their own, while
SQLAlchemy keeps the schema (Alembic), listing, filtering and every other write. The pools' sizes
are the store's share of ``STORE_MAX_CONNECTIONS`` (``store.split_connections``).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from taskplatform.errors import StoreError
from taskplatform.models.attempt import AttemptRecord
from taskplatform.store.history import storable_attempt
from taskplatform.store.primitives import ClockSample, read_clock
from taskplatform.store.sql.schema import tasks

_COLUMNS = [c.name for c in tasks.columns]
_COLUMN_LIST = ", ".join(_COLUMNS)
_RETURNING = ", ".join(f"tasks.{c}" for c in _COLUMNS)

INSERT = (
    f"INSERT INTO tasks ({_COLUMN_LIST}) "  # noqa: S608  (fixed column names; values are bound)
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)
GET = f"SELECT {_COLUMN_LIST} FROM tasks WHERE id = $1"  # noqa: S608
# $7: the store's clock, which leases are written in (``BaseTaskStore.now``); $5 stamps the row.
_CLAIMABLE = """(tasks.status IN ('QUEUED', 'RETRYING')
     OR (tasks.status = 'RUNNING' AND tasks.lease_until IS NOT NULL AND tasks.lease_until < $7))"""
# Rows are locked in id order first, so two overlapping batch claims (duplicate
# deliveries to two workers) queue behind each other instead of deadlocking. A claim
# also marks the outbox published: the message was evidently delivered.
CLAIM_MANY = f"""
    WITH locked AS (
        SELECT tasks.id FROM tasks
        JOIN unnest($1::text[], $2::integer[], $6::integer[], $8::text[], $9::integer[])
             AS c(id, attempt, priority, task_type, generation)
          ON tasks.id = c.id AND tasks.retry_count = c.attempt
         AND tasks.priority = c.priority
         AND (c.task_type IS NULL OR tasks.task_type = c.task_type)
         AND (c.generation IS NULL OR tasks.replays = c.generation)
        WHERE {_CLAIMABLE}
        ORDER BY tasks.id
        FOR UPDATE OF tasks
    )
    UPDATE tasks SET status = 'RUNNING', execution_node_id = $3, lease_until = $4,
           last_attempt_at = $5, started_at = $5, next_attempt_at = NULL, updated_at = $5,
           outbox_status = 'published', outbox_published_at = COALESCE(tasks.outbox_published_at, $5),
           outbox_lease_until = NULL, outbox_lease_owner = NULL, version = tasks.version + 1
    FROM locked
    WHERE tasks.id = locked.id AND {_CLAIMABLE}
    RETURNING {_RETURNING}
"""  # noqa: S608
# Only the owner of the attempt completes it, and not once the task waits for its children;
# a NULL event id keeps the last one.
COMPLETE_MANY = """
    UPDATE tasks SET status = 'COMPLETED', result = c.result, completed_at = $5, lease_until = NULL,
           updated_at = $5, last_event_id = COALESCE(c.event_id, tasks.last_event_id),
           progress = COALESCE(c.progress, tasks.progress), version = tasks.version + 1
    FROM unnest($1::text[], $2::integer[], $3::jsonb[], $6::text[], $7::jsonb[])
         AS c(id, attempt, result, event_id, progress)
    WHERE tasks.id = c.id AND tasks.retry_count = c.attempt AND tasks.status = 'RUNNING'
      AND tasks.execution_node_id = $4 AND NOT tasks.awaiting_children
    RETURNING tasks.id, tasks.version
"""
#: COMPLETE_MANY (the same update), and the attempt records of the completions it made ($8…$16,
#: one row per record; a task's record is written only if its completion was), in one statement.
COMPLETE_MANY_RECORDED = f"""
    WITH done AS ({COMPLETE_MANY}),
    recorded AS (
        INSERT INTO task_attempts (id, task_id, generation, attempt, node_id, host, started_at, ended_at,
                                   duration_seconds, outcome, error_type, error_message, retried)
        SELECT r.id, r.task_id, r.generation, r.attempt, r.node_id, r.host, r.started_at, r.ended_at,
               r.duration, 'completed', NULL, NULL, false
        FROM unnest($8::text[], $9::text[], $10::integer[], $11::integer[], $12::text[], $13::text[],
                    $14::timestamptz[], $15::timestamptz[], $16::float8[])
             AS r(id, task_id, generation, attempt, node_id, host, started_at, ended_at, duration)
        JOIN done ON done.id = r.task_id
        ON CONFLICT (id) DO NOTHING
    )
    SELECT id, version FROM done
"""  # noqa: S608  (composed of this module's constants only)
# SKIP LOCKED: a row locked by a claim is being marked published by that claim already,
# so waiting for it would only risk a deadlock.
MARK_PUBLISHED = """
    UPDATE tasks SET outbox_status = 'published', outbox_published_at = $2, outbox_lease_until = NULL,
           outbox_lease_owner = NULL, version = tasks.version + 1
    FROM (SELECT id FROM tasks WHERE id = ANY($1::text[]) AND outbox_status = 'pending'
            AND outbox_lease_owner IS NOT DISTINCT FROM $3
          ORDER BY id FOR UPDATE SKIP LOCKED) AS pending
    WHERE tasks.id = pending.id
"""


def pool_exhausted(timeout: float, pool_size: int) -> str:
    """The error of a store call that found no connection of its pool (``pool_size``) free within
    ``timeout`` seconds."""
    return (
        f"no store connection free within {timeout:g} s: all {pool_size} of its pool are busy (the "
        "pool's share of TASKPLATFORM_STORE_MAX_CONNECTIONS), or a new one could not be opened in "
        "time; raise it, lower the load, or check that the store answers"
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (``RESET ALL; UNLISTEN *; …``, a round trip
    per release): these connections hold no session state. asyncpg still rolls back an open
    transaction before calling this."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


class PgFastPath:
    """The fixed hot-path statements on dedicated asyncpg pools.

    Claims and outbox marks commit asynchronously (``synchronous_commit = off``): losing one
    in a crash is harmless, because the WAL is sequential — the attempt's completion, a
    synchronous commit, makes its claim durable too — and a lost claim reads as a task still
    waiting at that attempt, which settlement answers by requeueing the message. Inserts
    and completions stay synchronous: they are what a caller or an ack relies on.

    ``max_size`` connections at most for the synchronous pool and ``relaxed_size`` for the other;
    ``relaxed_size=0`` opens no second pool (the smallest connection budget): the relaxed
    statements then share the first and commit synchronously. A call finding no connection
    free waits up to ``acquire_timeout`` seconds, then raises ``StoreError``.
    """

    def __init__(
        self, dsn: str, *, max_size: int = 2, relaxed_size: int = 1, acquire_timeout: float = 30.0
    ) -> None:
        if max_size < 1 or relaxed_size < 0:
            raise ValueError(
                f"pool sizes must be max_size >= 1, relaxed_size >= 0: {max_size}, {relaxed_size}"
            )
        self._dsn = dsn
        self._max_size = max_size
        self._relaxed_size = relaxed_size
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._relaxed: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._max_size, init=_init_connection, reset=_keep_session
        )
        if self._relaxed_size == 0:
            self._relaxed = self._pool
            return
        self._relaxed = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._relaxed_size,
            init=_init_connection,
            reset=_keep_session,
            server_settings={"synchronous_commit": "off"},
        )

    async def close(self) -> None:
        pools = {id(p): p for p in (self._pool, self._relaxed) if p is not None}  # one pool when shared
        self._pool = self._relaxed = None
        for pool in pools.values():
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        """A connection of ``pool``, waited for up to the acquire timeout."""
        try:
            conn = await pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            raise StoreError(pool_exhausted(self._acquire_timeout, pool.get_max_size())) from exc
        try:
            yield conn
        finally:
            await pool.release(conn)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "PgFastPath.open() was not called"
        return self._pool

    @property
    def relaxed(self) -> asyncpg.Pool:
        assert self._relaxed is not None, "PgFastPath.open() was not called"
        return self._relaxed

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        args = [tuple(row[c] for c in _COLUMNS) for row in rows]
        async with self._connection(self.pool) as conn:
            if len(args) == 1:
                await conn.execute(INSERT, *args[0])
            else:
                await conn.executemany(INSERT, args)  # atomic: asyncpg wraps it in a transaction

    async def get(self, task_id: str) -> asyncpg.Record | None:
        async with self._connection(self.pool) as conn:
            return await conn.fetchrow(GET, task_id)

    async def clock_samples(self) -> builtins.list[ClockSample]:
        """Readings of the server's clock (``clock_timestamp()``: the time it answers, not its
        transaction's start), on one connection so no reading includes a connect."""
        async with self._connection(self.pool) as conn:

            async def server_time() -> datetime:
                value: datetime = await conn.fetchval("SELECT clock_timestamp()")
                return value

            return await read_clock(server_time)

    async def claim_many(
        self,
        ids: Sequence[str],
        attempts: Sequence[int],
        priorities: Sequence[int],
        *,
        node_id: str,
        lease_until: datetime,
        now: datetime,
        takeover_before: datetime,
        task_types: Sequence[str | None] | None = None,
        generations: Sequence[int | None] | None = None,
    ) -> builtins.list[asyncpg.Record]:
        """Claim ``ids`` at ``attempts`` and ``priorities`` (and, where given, ``task_types`` and
        replay ``generations``); a RUNNING one only if its lease ended before ``takeover_before``
        (the store's clock). ``now`` stamps the claimed rows."""
        async with self._connection(self.relaxed) as conn:
            rows: builtins.list[asyncpg.Record] = await conn.fetch(
                CLAIM_MANY,
                list(ids),
                list(attempts),
                node_id,
                lease_until,
                now,
                list(priorities),
                takeover_before,
                list(task_types) if task_types is not None else [None] * len(ids),
                list(generations) if generations is not None else [None] * len(ids),
            )
        return rows

    async def complete_many(
        self,
        ids: Sequence[str],
        attempts: Sequence[int],
        results: Sequence[Any],
        event_ids: Sequence[str | None],
        progress: Sequence[Any] | None = None,
        *,
        node_id: str,
        now: datetime,
        records: Sequence[AttemptRecord] = (),
    ) -> dict[str, int]:
        """Complete the owner's attempts; returns each completed id with its new version. The
        ``records`` of the completed ones are written in the same statement."""
        progress = list(progress) if progress is not None else [None] * len(ids)
        args: list[Any] = [list(ids), list(attempts), list(results), node_id, now, list(event_ids), progress]
        statement = COMPLETE_MANY
        if records:
            statement = COMPLETE_MANY_RECORDED
            kept = [storable_attempt(r) for r in records]
            args += [
                [r.id for r in kept],
                [r.task_id for r in kept],
                [r.generation for r in kept],
                [r.attempt for r in kept],
                [r.node_id for r in kept],
                [r.host for r in kept],
                [r.started_at for r in kept],
                [r.ended_at for r in kept],
                [r.duration_seconds for r in kept],
            ]
        async with self._connection(self.pool) as conn:
            rows = await conn.fetch(statement, *args)
        return {r["id"]: r["version"] for r in rows}

    async def mark_published(self, ids: Sequence[str], *, owner: str | None, now: datetime) -> int:
        async with self._connection(self.relaxed) as conn:
            status = await conn.execute(MARK_PUBLISHED, list(ids), now, owner)
        return int(status.rsplit(" ", 1)[-1])
