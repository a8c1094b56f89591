"""The ``ArtifactStore`` contract, run on every backend (``store`` is parametrized)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from taskplatform.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactTooLarge,
    InvalidArtifactField,
    InvalidArtifactKey,
    InvalidRange,
    validate_key,
)
from tests.artifacts.helpers import failing_stream, payload, read_all, sha256, stream_of

FIVE_MB = 5 * 1024 * 1024
UNKNOWN_KEY = "2024/05/" + "0" * 32

BAD_KEYS = [
    "../etc/passwd",
    "/abs",
    "a/../../b",
    "\x00",
    "..",
    "",
    "x" * 300,
    "a\\b",
    "2024/05/" + "0" * 31 + "g",  # right length, a non-hex character
    "2024/05/" + "0" * 31 + "A",  # upper case
    "2024/05/" + "0" * 31 + "\x00",
    "2024/05/" + "0" * 31 + "/",
    "2024/13/" + "0" * 32,  # no month 13
    "2024/00/" + "0" * 32,
    "2024\\05\\" + "0" * 32,
    "2024/05/../" + "0" * 29,
    "/024/05/" + "0" * 32,
    "２０２４/05/" + "0" * 32,  # full-width digits: \d would take them
    "2024/05/" + "0" * 32 + "\n",
    "2024/05/" + "0" * 32 + "/..",
    "2024-05-" + "0" * 32,
]


async def test_round_trip_of_5_mb_in_odd_chunks_keeps_every_byte_and_its_metadata(
    store: ArtifactStore,
) -> None:
    data = payload(FIVE_MB)
    before = datetime.now(UTC)
    info = await store.put(
        stream_of(data),
        name="scene.bin",
        content_type="application/x-scene",
        owner="user-1",
        task_id="task-1",
        max_bytes=FIVE_MB,
    )
    assert validate_key(info.key) == info.key
    assert (info.size, info.sha256, info.name) == (FIVE_MB, sha256(data), "scene.bin")
    assert (info.content_type, info.owner, info.task_id) == ("application/x-scene", "user-1", "task-1")
    assert info.created_at.tzinfo is UTC and before <= info.created_at <= datetime.now(UTC)
    assert await store.stat(info.key) == info
    assert await store.exists(info.key) is True

    assert sha256(await read_all(store, info.key)) == sha256(data)
    half = FIVE_MB // 2 + 3
    first = await read_all(store, info.key, end=half)
    second = await read_all(store, info.key, start=half)
    assert (len(first), len(second)) == (half, FIVE_MB - half)
    assert sha256(first + second) == sha256(data)


async def test_read_yields_chunks_of_at_most_chunk_size_covering_the_range(store: ArtifactStore) -> None:
    data = payload(10_000, seed=1)
    info = await store.put(stream_of(data), name="a", owner=None, max_bytes=10_000)
    chunks = [chunk async for chunk in store.read(info.key, start=3, end=9_990, chunk_size=1000)]
    assert [len(chunk) for chunk in chunks] == [1000] * 9 + [987]
    assert b"".join(chunks) == data[3:9_990]


@pytest.mark.parametrize(("start", "end"), [(0, 0), (5, 5), (100, None), (0, 1), (99, 100), (40, 60)])
async def test_read_of_a_range_returns_exactly_those_bytes(
    store: ArtifactStore, start: int, end: int | None
) -> None:
    data = payload(100, seed=2)
    info = await store.put(stream_of(data, [3]), name="a", owner=None, max_bytes=100)
    assert await read_all(store, info.key, start=start, end=end, chunk_size=7) == data[start:end]


async def test_an_empty_artifact_is_stored_and_reads_as_nothing(store: ArtifactStore) -> None:
    info = await store.put(stream_of(b""), name="empty", owner=None, max_bytes=0)
    assert (info.size, info.sha256) == (0, hashlib.sha256().hexdigest())
    assert await read_all(store, info.key) == b""
    assert info.content_type == "application/octet-stream"
    assert info.task_id is None


async def test_exactly_max_bytes_is_accepted(store: ArtifactStore) -> None:
    data = payload(4096, seed=3)
    info = await store.put(stream_of(data, [1000]), name="a", owner=None, max_bytes=4096)
    assert info.size == 4096
    assert await read_all(store, info.key) == data


async def test_one_byte_over_max_bytes_is_refused_naming_the_limit(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactTooLarge, match="4096 bytes") as caught:
        await store.put(stream_of(payload(4097), [1000]), name="a", owner=None, max_bytes=4096)
    assert caught.value.max_bytes == 4096


async def test_an_endless_stream_is_refused_without_reading_past_the_limit(store: ArtifactStore) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1000

    with pytest.raises(ArtifactTooLarge):
        await store.put(endless(), name="a", owner=None, max_bytes=10_500)
    assert pulled == 11


async def test_negative_max_bytes_is_a_programming_error(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        await store.put(stream_of(b"x"), name="a", owner=None, max_bytes=-1)


async def test_a_stream_failing_mid_way_propagates_its_error_and_stores_nothing(store: ArtifactStore) -> None:
    with pytest.raises(ConnectionResetError, match="client went away"):
        await store.put(
            failing_stream(payload(3000), ConnectionResetError("client went away")),
            name="a",
            owner=None,
            task_id="t",
            max_bytes=10_000,
        )
    assert await store.delete_for_task("t") == 0


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_every_method_refuses_a_malformed_key(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidArtifactKey):
        await store.stat(key)
    with pytest.raises(InvalidArtifactKey):
        await anext(store.read(key))
    with pytest.raises(InvalidArtifactKey):
        await store.delete(key)
    with pytest.raises(InvalidArtifactKey):
        await store.exists(key)


async def test_an_unknown_key_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound, match=UNKNOWN_KEY):
        await store.stat(UNKNOWN_KEY)
    with pytest.raises(ArtifactNotFound):
        await anext(store.read(UNKNOWN_KEY))
    assert await store.exists(UNKNOWN_KEY) is False
    assert await store.delete(UNKNOWN_KEY) is False


async def test_a_malicious_file_name_is_kept_only_sanitised(store: ArtifactStore) -> None:
    info = await store.put(stream_of(b"data"), name="../../ev\x00il\n", owner=None, max_bytes=10)
    assert info.name == "evil"
    assert (await store.stat(info.key)).name == "evil"


@pytest.mark.parametrize(
    ("field", "value"),
    [("task_id", "a/b"), ("task_id", ".."), ("task_id", ""), ("task_id", "t" * 65), ("task_id", "t\x00")]
    + [("content_type", "text/plain\r\nX-Evil: 1"), ("content_type", "plain"), ("content_type", "")],
)
async def test_put_refuses_a_bad_task_id_or_content_type_before_reading(
    store: ArtifactStore, field: str, value: str
) -> None:
    pulled = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        yield b"x"

    with pytest.raises(InvalidArtifactField, match=field):
        await store.put(counted(), name="a", owner=None, max_bytes=10, **{field: value})  # type: ignore[arg-type]
    assert pulled == 0


async def test_delete_removes_the_artifact_once(store: ArtifactStore) -> None:
    kept = await store.put(stream_of(b"kept"), name="a", owner=None, max_bytes=10)
    gone = await store.put(stream_of(b"gone"), name="b", owner=None, max_bytes=10)
    assert await store.delete(gone.key) is True
    assert await store.exists(gone.key) is False
    with pytest.raises(ArtifactNotFound):
        await store.stat(gone.key)
    assert await store.delete(gone.key) is False
    assert await read_all(store, kept.key) == b"kept"


async def test_delete_for_task_deletes_that_tasks_artifacts_only(store: ArtifactStore) -> None:
    of_a = [
        await store.put(stream_of(b"a%d" % i), name="a", owner=None, task_id="task-a", max_bytes=9)
        for i in range(3)
    ]
    of_b = [
        await store.put(stream_of(b"b%d" % i), name="b", owner=None, task_id="task-b", max_bytes=9)
        for i in range(2)
    ]
    untasked = await store.put(stream_of(b"c"), name="c", owner=None, max_bytes=9)

    assert await store.delete_for_task("task-a") == 3
    assert [await store.exists(info.key) for info in of_a] == [False] * 3
    assert [await read_all(store, info.key) for info in of_b] == [b"b0", b"b1"]
    assert await store.exists(untasked.key) is True
    assert await store.delete_for_task("task-a") == 0
    assert await store.delete_for_task("never-ran") == 0
    assert await store.delete_for_task("task-b") == 2


async def test_delete_for_task_after_a_single_delete_counts_what_was_left(store: ArtifactStore) -> None:
    first = await store.put(stream_of(b"1"), name="a", owner=None, task_id="t", max_bytes=9)
    await store.put(stream_of(b"2"), name="a", owner=None, task_id="t", max_bytes=9)
    assert await store.delete(first.key) is True
    assert await store.delete_for_task("t") == 1


@pytest.mark.parametrize("task_id", ["a/b", "..", ".", "", "x" * 65, "é"])
async def test_delete_for_task_refuses_a_malformed_task_id(store: ArtifactStore, task_id: str) -> None:
    with pytest.raises(InvalidArtifactField, match="task_id"):
        await store.delete_for_task(task_id)


@pytest.mark.parametrize(("start", "end"), [(-1, None), (0, -1), (6, 5), (11, None), (0, 11), (11, 12)])
async def test_an_invalid_range_raises_before_any_bytes(
    store: ArtifactStore, start: int, end: int | None
) -> None:
    info = await store.put(stream_of(b"0123456789"), name="a", owner=None, max_bytes=10)
    reader = store.read(info.key, start=start, end=end)
    with pytest.raises(InvalidRange, match="10 bytes") as caught:
        await anext(reader)
    assert (caught.value.key, caught.value.start, caught.value.end) == (info.key, start, end)


async def test_read_refuses_a_chunk_size_below_one(store: ArtifactStore) -> None:
    info = await store.put(stream_of(b"abc"), name="a", owner=None, max_bytes=10)
    with pytest.raises(ValueError, match="chunk_size"):
        await anext(store.read(info.key, chunk_size=0))


async def test_concurrent_puts_get_distinct_keys_and_keep_their_own_bytes(store: ArtifactStore) -> None:
    datas = [payload(200_000 + i, seed=i) for i in range(6)]
    infos = await asyncio.gather(
        *(
            store.put(stream_of(data), name=f"f{i}", owner=None, max_bytes=300_000)
            for i, data in enumerate(datas)
        )
    )
    assert len({info.key for info in infos}) == 6
    assert [await read_all(store, info.key) for info in infos] == datas


async def test_created_at_is_now_in_utc(store: ArtifactStore) -> None:
    info = await store.put(stream_of(b"x"), name="a", owner=None, max_bytes=1)
    assert abs(datetime.now(UTC) - info.created_at) < timedelta(seconds=30)
    assert info.key.startswith(f"{info.created_at:%Y/%m}/")
