"""An in-process stand-in for PyMongo's async API, over mongomock. Tests only.

It forwards each call to a mongomock collection and translates mongomock's errors into
PyMongo's, so ``MongoTaskStore`` runs unchanged against it. It emulates the query and
update semantics mongomock implements; it is not a server (no transactions, no
replica-set behaviour), which is why the contract suite also runs against a real server
when ``TASKPLATFORM_TEST_MONGODB_URL`` is set.

Each operation yields to the event loop before it runs, as a round trip to a server
would: concurrent callers interleave between their operations (a read, then a
conditional write, can lose a race), while each operation itself stays atomic.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import mongomock
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, mongomock.BulkWriteError):
        return BulkWriteError(getattr(exc, "details", {"writeErrors": [{"code": 11000}]}))
    if isinstance(exc, mongomock.DuplicateKeyError):
        return DuplicateKeyError(str(exc), 11000)
    if isinstance(exc, mongomock.OperationFailure):
        return OperationFailure(str(exc), getattr(exc, "code", None))
    return exc


class _Cursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def sort(self, *args: Any, **kwargs: Any) -> _Cursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> _Cursor:
        self._cursor = self._cursor.limit(n)
        return self

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        await asyncio.sleep(0)  # the query runs here, after a round trip
        docs = list(self._cursor)
        return docs if length is None else docs[:length]


class _ListCursor:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self._docs = docs

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        return self._docs if length is None else self._docs[:length]


class AsyncEmulatedCollection:
    """The subset of ``AsyncCollection`` the platform uses."""

    def __init__(self, collection: Any) -> None:
        self._c = collection

    def _call(self, _method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._c, _method)(*args, **kwargs)
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def _round_trip(self, _method: str, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)  # other callers run meanwhile, as they would during network I/O
        return self._call(_method, *args, **kwargs)

    async def insert_one(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("insert_one", *a, **k)

    async def insert_many(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("insert_many", *a, **k)

    async def find_one(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("find_one", *a, **k)

    def find(self, *a: Any, **k: Any) -> _Cursor:
        return _Cursor(self._call("find", *a, **k))

    async def find_one_and_update(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("find_one_and_update", *a, **k)

    async def update_one(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("update_one", *a, **k)

    async def update_many(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("update_many", *a, **k)

    async def delete_many(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("delete_many", *a, **k)

    async def count_documents(self, *a: Any, **k: Any) -> int:
        return int(await self._round_trip("count_documents", *a, **k))

    async def create_index(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("create_index", *a, **k)

    async def aggregate(self, *a: Any, **k: Any) -> _ListCursor:
        return _ListCursor(list(await self._round_trip("aggregate", *a, **k)))

    async def index_information(self) -> dict[str, Any]:
        return dict(await self._round_trip("index_information"))

    async def drop_index(self, *a: Any, **k: Any) -> Any:
        return await self._round_trip("drop_index", *a, **k)

    @property
    def name(self) -> str:
        return str(self._c.name)


class AsyncEmulatedDatabase:
    """The subset of ``AsyncDatabase`` the platform uses."""

    def __init__(self, name: str = "taskplatform_test") -> None:
        self._db = mongomock.MongoClient(tz_aware=True)[name]

    def __getitem__(self, name: str) -> AsyncEmulatedCollection:
        return AsyncEmulatedCollection(self._db[name])

    async def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if name == "ping":
            return {"ok": 1.0}
        if name == "hello":
            # mongomock has no server clock. The emulated server lives in this process, on this
            # machine: its clock is the machine's (``datetime.now``, which a test faking the
            # platform's clock through ``taskplatform.models.utcnow`` leaves alone), so the
            # offset measured against it is honestly 0 unless a test skews the platform's clock.
            now = datetime.now(UTC)
            local_time = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON: milliseconds
            return {"isWritablePrimary": True, "localTime": local_time, "ok": 1.0}
        if name == "collMod" and set(kwargs) == {"index"}:
            return self._coll_mod_index(str(args[0]), kwargs["index"])
        raise OperationFailure(
            f"emulation supports only 'ping', 'hello' and collMod of an index, not {name!r}"
        )

    def _coll_mod_index(self, collection: str, change: dict[str, Any]) -> dict[str, Any]:
        """collMod's change of an index option: mongomock has no collMod, so the index is
        dropped and made again with the new option (the server changes it in place)."""
        coll = self._db[collection]
        info = coll.index_information().get(change["name"])
        if info is None:
            raise OperationFailure(f"cannot find index {change['name']!r} for ns {collection}", 27)
        options = {k: v for k, v in info.items() if k not in ("key", "v", "ns")}
        options.update({k: v for k, v in change.items() if k != "name"})
        coll.drop_index(change["name"])
        coll.create_index(info["key"], name=change["name"], **options)
        return {"ok": 1.0}
