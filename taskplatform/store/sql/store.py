"""SQL task store: PostgreSQL (asyncpg) and SQLite (aiosqlite) through SQLAlchemy Core."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskplatform.errors import ConfigError, DuplicateTaskError, StoreError
from taskplatform.models import BackgroundTask, OutboxStatus, TaskStatus, utcnow
from taskplatform.models.task import idempotency_scope
from taskplatform.store import (
    DEFAULT_MAX_CONNECTIONS,
    MIN_MAX_CONNECTIONS,
    POOL_TIMEOUT_SECONDS,
    check_max_connections,
)
from taskplatform.store.base import (
    BaseTaskStore,
    Guard,
    TaskFilter,
    TaskPage,
    check_page_size,
    decode_cursor,
    encode_cursor,
)
from taskplatform.store.primitives import ClockSample, read_clock, stored_value
from taskplatform.store.sql import migrate, sqlite
from taskplatform.store.sql import rollup as sql_rollup
from taskplatform.store.sql import statements as sql
from taskplatform.store.sql.batches import SqlBatches
from taskplatform.store.sql.deadletters import SqlDeadLetters
from taskplatform.store.sql.deletion import SqlDeletion
from taskplatform.store.sql.history import SqlAttemptHistory
from taskplatform.store.sql.outbox import SqlOutbox
from taskplatform.store.sql.part import column_name, columns_of
from taskplatform.store.sql.pg_fast import PgFastPath, pool_exhausted
from taskplatform.store.sql.ratelimits import SqlRateLimits
from taskplatform.store.sql.schema import tasks as tasks_table
from taskplatform.store.sql.workers import SqlWorkers
from taskplatform.store.types import EQUALITY_FILTERS, Backlog, ParentState
from topology.spec import node_routing_key

#: Rows per multi-row INSERT statement (SQLAlchemy's insertmanyvalues page size).
_INSERT_PAGE = 1000


@dataclass(frozen=True)
class PoolSplit:
    """How a PostgreSQL store's connections divide between its pools: SQLAlchemy's (schema,
    lists, every other write) and the fast path's two asyncpg pools (``pg_fast``); ``relaxed``
    0 runs the relaxed statements on the fast pool, with synchronous commits."""

    sqlalchemy: int
    fast: int
    relaxed: int

    @property
    def total(self) -> int:
        return self.sqlalchemy + self.fast + self.relaxed


def split_connections(total: int) -> PoolSplit:
    """``total`` connections (``STORE_MAX_CONNECTIONS``) over the pools, never more in all.

    A quarter (at least one) to the relaxed pool (claims, outbox marks), half of the rest to the
    fast pool (inserts, reads by id, completions), the remainder to SQLAlchemy: 6 gives 3 + 2 + 1.
    At the minimum, 2, the relaxed statements share the fast pool.
    """
    check_max_connections(total)
    if total == MIN_MAX_CONNECTIONS:
        return PoolSplit(sqlalchemy=1, fast=1, relaxed=0)
    relaxed = max(1, total // 4)
    fast = max(1, (total - relaxed) // 2)
    return PoolSplit(sqlalchemy=total - relaxed - fast, fast=fast, relaxed=relaxed)


def _sqlite_file(url: str) -> bool:
    """A SQLite URL naming a file (SQLAlchemy pools its connections), not an in-memory database
    (one connection, shared)."""
    parsed = make_url(url)
    return bool(parsed.database) and parsed.database != ":memory:" and parsed.query.get("mode") != "memory"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class SqlTaskStore(
    SqlDeadLetters,
    SqlRateLimits,
    SqlWorkers,
    SqlAttemptHistory,
    SqlDeletion,
    SqlBatches,
    SqlOutbox,
    BaseTaskStore,
):
    """Tasks in one SQL table; every status change is a guarded ``UPDATE … RETURNING``.

    Dead letters and the audit log: ``SqlDeadLetters``; rate limits: ``SqlRateLimits``; the
    worker registry: ``SqlWorkers``; the attempt history: ``SqlAttemptHistory``; deleting
    finished tasks: ``SqlDeletion``.
    """

    def __init__(
        self,
        url: str,
        *,
        auto_migrate: bool = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        """``max_connections``: the most this store holds at once, every pool together (PostgreSQL:
        ``split_connections``; a SQLite file: one pool of that size); a call finding none free waits
        up to ``pool_timeout`` seconds, then fails with ``StoreError``."""
        self.url = url
        self.url_scheme = url.split(":", 1)[0]
        self._sqlite = self.url_scheme.lower().startswith("sqlite")
        self._auto_migrate = auto_migrate
        self.max_connections = check_max_connections(max_connections)
        #: The pools' shares on PostgreSQL (``split_connections``).
        self.pools = split_connections(max_connections)
        #: SQLAlchemy's share: the whole budget on SQLite, which has no other pool.
        self._engine_pool_size = max_connections if self._sqlite else self.pools.sqlalchemy
        self._pool_timeout = pool_timeout
        self._engine: AsyncEngine | None = None
        self._auto: AsyncEngine | None = None
        self._fast: PgFastPath | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("store is not open; call open() first")
        return self._engine

    @property
    def autocommit(self) -> AsyncEngine:
        if self._auto is None:
            raise StoreError("store is not open; call open() first")
        return self._auto

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def open(self) -> None:
        if self._engine is not None:
            return
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        # No overflow: the pool never holds more than its share of STORE_MAX_CONNECTIONS.
        bounded = {"max_overflow": 0, "pool_timeout": self._pool_timeout}
        if self._sqlite:
            self._prepare_sqlite_path()
            kwargs.update(sqlite.engine_options())
            if _sqlite_file(self.url):  # an in-memory database has one connection, shared
                kwargs.update(bounded, pool_size=self._engine_pool_size)
        else:
            # No pre-ping: it costs three round trips per checkout. A dropped connection
            # surfaces as StoreError, which every caller already retries.
            kwargs.update(bounded, pool_size=self._engine_pool_size, pool_recycle=1800)
        engine = create_async_engine(self.url, insertmanyvalues_page_size=_INSERT_PAGE, **kwargs)
        self._engine = engine
        # Single statements run in autocommit: each is atomic on its own, and skipping
        # BEGIN/COMMIT saves two round trips per operation.
        if engine.dialect.name == "sqlite":
            sqlite.configure_sqlite(engine)
            self._auto = sqlite.autocommit_engine(engine)
        else:
            self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        try:
            if self._auto_migrate:
                await migrate.upgrade(engine)
            else:
                await self.ping()
            if engine.dialect.name == "postgresql":
                dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._fast = PgFastPath(
                    dsn,
                    max_size=self.pools.fast,
                    relaxed_size=self.pools.relaxed,
                    acquire_timeout=self._pool_timeout,
                )
                await self._fast.open()
            await self.sync_clock()
        except SQLAlchemyError as exc:
            await self.close()
            raise StoreError(f"cannot open store {engine.url!r}: {exc}") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot reach store {engine.url!r}: {exc}") from exc
        except StoreError:
            await self.close()
            raise
        except TypeError as exc:
            await self.close()
            if "unexpected keyword argument" not in str(exc):
                raise
            # SQLAlchemy hands the URL's query to asyncpg.connect as keyword arguments.
            raise ConfigError(
                f"store URL {engine.url!r}: a query parameter the PostgreSQL driver does not take "
                f"({exc}); asyncpg's connect() arguments (e.g. ssl=require, timeout=10) may be given there"
            ) from exc

    def _prepare_sqlite_path(self) -> None:
        database = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        if self._fast is not None:
            fast, self._fast = self._fast, None
            await fast.close()
        if self._engine is not None:
            engine, self._engine, self._auto = self._engine, None, None
            await engine.dispose()

    async def ping(self) -> None:
        async with self._errors():
            async with self.autocommit.connect() as conn:
                await conn.execute(select(literal(1)))

    async def _clock_samples(self) -> builtins.list[ClockSample]:
        if self.dialect == "sqlite":
            return []  # a local file: every process using it reads this machine's clock
        async with self._errors():
            if self._fast is not None:
                return await self._fast.clock_samples()
            async with self.autocommit.connect() as conn:

                async def server_time() -> datetime:
                    value: datetime = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
                    return value

                return await read_clock(server_time)

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (StoreError, ValueError):
            raise
        except PoolTimeoutError as exc:
            raise StoreError(pool_exhausted(self._pool_timeout, self._engine_pool_size)) from exc
        except (IntegrityError, asyncpg.UniqueViolationError) as exc:
            raise DuplicateTaskError(f"task already exists: {getattr(exc, 'orig', exc)}") from exc
        except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"store operation failed: {exc}") from exc

    # ------------------------------------------------------------ primitives
    async def create_many(self, tasks: Sequence[BackgroundTask]) -> None:
        if not tasks:
            return
        rows = [self._to_row(t) for t in tasks]
        if self._fast is not None:
            async with self._errors():
                await self._fast.insert(rows)
            return
        # One row is atomic by itself: autocommit saves BEGIN/COMMIT. Several rows are an
        # executemany, whose rows commit one by one under autocommit (a duplicate would leave
        # the rows before it): a transaction makes the batch all or nothing.
        single = len(rows) == 1
        async with self._errors():
            async with self.autocommit.connect() if single else self.engine.begin() as conn:
                await conn.execute(sql.INSERT, rows)

    async def get(self, task_id: str) -> BackgroundTask | None:
        if self._fast is not None:
            async with self._errors():
                record = await self._fast.get(task_id)
            return self._to_task(record) if record is not None else None
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(sql.GET, {"task_id": task_id})).first()
        return self._to_task(row) if row is not None else None

    async def get_visible(self, task_id: str, *, user_id: str) -> BackgroundTask | None:
        query = select(tasks_table).where(tasks_table.c.id == task_id, tasks_table.c.user_id == user_id)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(query)).first()
        return self._to_task(row) if row is not None else None

    def _tag_clause(self, tag: str) -> ColumnElement[bool]:
        if self.dialect == "postgresql":
            return type_coerce(tasks_table.c.tags, JSONB).contains([tag])
        each = func.json_each(tasks_table.c.tags).table_valued("value")
        return exists(select(literal(1)).select_from(each).where(each.c.value == tag))

    def _filter_clauses(self, filters: TaskFilter) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if filters.status is not None:
            clauses.append(tasks_table.c.status == filters.status.value)
        for name in EQUALITY_FILTERS:
            value = getattr(filters, name)
            if value is not None:
                clauses.append(tasks_table.c[name] == value)
        clauses.extend(self._tag_clause(tag) for tag in filters.tags)
        if filters.node is not None:
            clauses.append(
                or_(
                    tasks_table.c.target_key == node_routing_key(filters.node),
                    tasks_table.c.execution_node_id == filters.node,
                )
            )
        return clauses

    async def list(
        self, filters: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        check_page_size(limit)
        clauses = self._filter_clauses(filters or TaskFilter())
        if cursor:
            at, last_id = decode_cursor(cursor)
            clauses.append(
                or_(
                    tasks_table.c.created_at < at,
                    and_(tasks_table.c.created_at == at, tasks_table.c.id < last_id),
                )
            )
        query = (
            select(tasks_table)
            .where(and_(true(), *clauses))
            .order_by(tasks_table.c.created_at.desc(), tasks_table.c.id.desc())
            .limit(limit + 1)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                rows = (await conn.execute(query)).all()
        items = [self._to_task(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return TaskPage(items=items, next_cursor=next_cursor)

    async def backlog(self) -> Backlog:
        # min() keeps the column's type, so SQLite's naive text comes back as aware UTC too
        pending = select(func.count(), func.min(tasks_table.c.created_at)).where(
            tasks_table.c.outbox_status == OutboxStatus.PENDING.value
        )
        oldest = select(func.min(tasks_table.c.created_at)).where(
            tasks_table.c.status == TaskStatus.QUEUED.value
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                count, first_pending = (await conn.execute(pending)).one()
                first = (await conn.execute(oldest)).scalar_one()
        return Backlog(outbox_pending=int(count), oldest_queued_at=first, oldest_pending_at=first_pending)

    async def count_by_status(self) -> dict[TaskStatus, int]:
        query = select(tasks_table.c.status, func.count()).group_by(tasks_table.c.status)
        async with self._errors():
            async with self.autocommit.connect() as conn:
                rows = (await conn.execute(query)).all()
        return {TaskStatus(status): int(n) for status, n in rows}

    def _guard_clause(self, guard: Guard) -> ColumnElement[bool]:
        equals = [tasks_table.c[column_name(k)] == stored_value(v) for k, v in guard.equals.items()]
        allowed: ColumnElement[bool] = tasks_table.c.status.in_([s.value for s in guard.statuses])
        if guard.takeover_before is not None:
            takeover = and_(
                tasks_table.c.status == TaskStatus.RUNNING.value,
                tasks_table.c.lease_until.is_not(None),
                tasks_table.c.lease_until < guard.takeover_before,
            )
            allowed = or_(allowed, takeover)
        return and_(allowed, *equals)

    async def _guarded_update(
        self, task_id: str, guard: Guard, changes: Mapping[str, Any]
    ) -> BackgroundTask | None:
        columns = columns_of(changes)
        columns["version"] = tasks_table.c.version + 1
        columns.setdefault("updated_at", utcnow())
        stmt = (
            update(tasks_table)
            .where(tasks_table.c.id == task_id, self._guard_clause(guard))
            .values(**columns)
            .returning(*tasks_table.columns)
        )
        async with self._errors():
            async with self.autocommit.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return self._to_task(row) if row is not None else None

    async def apply_rollup(
        self, parent_id: str, child_id: str, status: TaskStatus, child_version: int
    ) -> ParentState | None:
        return await self.apply_rollups(parent_id, [(child_id, status, child_version)])

    async def apply_rollups(
        self, parent_id: str, items: Sequence[tuple[str, TaskStatus, int]]
    ) -> ParentState | None:
        """One transaction for the whole batch (see ``sql.rollup``)."""
        if not items:
            task = await self.get(parent_id)
            return ParentState.of(task) if task is not None else None
        async with self._errors():
            async with self.engine.begin() as conn:
                row = await sql_rollup.apply_rollups(conn, parent_id, items, now=utcnow())
        return ParentState.from_mapping(dict(row._mapping)) if row is not None else None

    async def find_by_idempotency_key(self, user_id: str | None, key: str) -> BackgroundTask | None:
        found = await self._select(
            select(tasks_table).where(tasks_table.c.idempotency_scope == idempotency_scope(user_id, key))
        )
        return found[0] if found else None

    async def _select(self, query: Select[Any]) -> builtins.list[BackgroundTask]:
        """The documents ``query`` selects."""
        async with self._errors():
            async with self.autocommit.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [self._to_task(r) for r in rows]

    async def list_awaiting_parents(
        self, *, updated_before: datetime, limit: int
    ) -> builtins.list[BackgroundTask]:
        query = (
            select(tasks_table)
            .where(
                tasks_table.c.status == TaskStatus.RUNNING.value,
                tasks_table.c.awaiting_children.is_(True),
                tasks_table.c.updated_at < updated_before,
            )
            .order_by(tasks_table.c.updated_at)
            .limit(limit)
        )
        return await self._select(query)

    async def list_aimed_waiting(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> builtins.list[BackgroundTask]:
        query = (
            select(tasks_table)
            .where(
                tasks_table.c.target_key.is_not(None),
                tasks_table.c.status.in_([TaskStatus.QUEUED.value, TaskStatus.RETRYING.value]),
            )
            .order_by(tasks_table.c.created_at, tasks_table.c.id)
            .limit(limit)
        )
        if after is not None:
            at, last_id = after
            query = query.where(
                or_(
                    tasks_table.c.created_at > at,
                    and_(tasks_table.c.created_at == at, tasks_table.c.id > last_id),
                )
            )
        return await self._select(query)

    async def list_lapsed(self, *, before: datetime, limit: int) -> builtins.list[BackgroundTask]:
        query = (
            select(tasks_table)
            .where(
                tasks_table.c.status == TaskStatus.RUNNING.value,
                tasks_table.c.lease_until.is_not(None),
                tasks_table.c.lease_until < before,
            )
            .order_by(tasks_table.c.lease_until)
            .limit(limit)
        )
        return await self._select(query)
