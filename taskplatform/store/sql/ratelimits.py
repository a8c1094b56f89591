"""Rate-limit reservations on SQL (a mixin of ``SqlTaskStore``): one upsert per reservation.

``INSERT … ON CONFLICT (key) DO UPDATE`` computes both new columns from the row as it was
(SET expressions see the old values), so the statement is atomic on PostgreSQL and SQLite
alike and needs no transaction; ``RETURNING last_wait`` tells the caller what it got.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Float, bindparam, case, delete
from sqlalchemy.dialects import postgresql, sqlite

from taskplatform.models import utcnow
from taskplatform.store.ratelimits import Reservation, check_rate, rate_key, reservation_of
from taskplatform.store.sql.part import SqlPart
from taskplatform.store.sql.schema import UTCDateTime, rate_limits

_r = rate_limits.c


def _reserve_statement(dialect: str) -> Any:
    now = bindparam("now", type_=Float())
    interval = bindparam("interval", type_=Float())
    span = bindparam("span", type_=Float())  # burst * interval
    max_wait = bindparam("max_wait", type_=Float())
    base = case((_r.tat > now, _r.tat), else_=now)
    raw_wait = base + interval - span - now
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = dialect_insert(rate_limits).values(
        key=bindparam("key"),
        tat=now + interval,  # a new key: base is now, and the first reservation always fits
        last_wait=interval - span,
        updated_at=bindparam("at", type_=UTCDateTime()),
    )
    return stmt.on_conflict_do_update(
        index_elements=[_r.key],
        set_={
            "last_wait": raw_wait,
            "tat": case((raw_wait <= max_wait, base + interval), else_=_r.tat),
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(_r.last_wait)


#: Built once per dialect, like the hot-path statements (``statements``).
_RESERVE = {dialect: _reserve_statement(dialect) for dialect in ("postgresql", "sqlite")}


class SqlRateLimits(SqlPart):
    """``reserve_rate`` over the store's engine."""

    #: The store's clock (``BaseTaskStore.now``): slots taken by processes on different machines
    #: are measured against one clock, so a limit they share holds.
    now: Callable[[], datetime]

    async def reserve_rate(
        self, key: str, *, interval: float, burst: int = 1, max_wait: float, now: float | None = None
    ) -> Reservation:
        """Reserve the next slot of ``key``'s limit (one per ``interval`` seconds, bursts of
        ``burst``) if it opens within ``max_wait`` seconds; see ``taskplatform.store.ratelimits``."""
        check_rate(interval, burst, max_wait)
        stmt = _RESERVE[self.dialect]
        params = {
            "key": rate_key(key),
            "now": self.now().timestamp() if now is None else now,
            "interval": interval,
            "span": burst * interval,
            "max_wait": max_wait,
            "at": utcnow(),
        }
        async with self._errors():
            async with self.autocommit.connect() as conn:
                raw_wait = (await conn.execute(stmt, params)).scalar_one()
        return reservation_of(float(raw_wait), max_wait)

    async def prune_rate_limits(self, *, now: float | None = None) -> int:
        """Delete the keys whose slots have all passed (such a key acts exactly like a new one)."""
        stmt = delete(rate_limits).where(rate_limits.c.tat < (self.now().timestamp() if now is None else now))
        async with self._errors():
            async with self.autocommit.connect() as conn:
                result = await conn.execute(stmt)
        return int(result.rowcount)
