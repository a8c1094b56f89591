"""``LocalArtifactStore`` on disk: atomicity, no orphans, the layout, modes, the sweep."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from taskplatform.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactTooLarge,
    LocalArtifactStore,
    local_files,
)
from taskplatform.artifacts.local import WRITE_BATCH
from tests.artifacts.helpers import HOUR, failing_stream, files_under, make_old, payload, read_all, stream_of


def layout(key: str) -> tuple[str, str]:
    return f"data/{key}.bin", f"data/{key}.json"


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


async def test_the_root_is_created_on_the_first_put_not_by_the_constructor(root: Path) -> None:
    store = LocalArtifactStore(root)
    assert not root.exists()
    info = await store.put(stream_of(b"x"), name="a", owner=None, max_bytes=1)
    assert files_under(root) == sorted(layout(info.key))


async def test_an_artifact_of_a_task_is_its_content_metadata_and_index_marker(
    local: LocalArtifactStore, root: Path
) -> None:
    info = await local.put(stream_of(b"hello"), name="a.txt", owner="u", task_id="task-1", max_bytes=5)
    marker = "by-task/task-1/" + info.key.replace("/", "-")
    assert files_under(root) == sorted([*layout(info.key), marker])
    assert (root / layout(info.key)[0]).read_bytes() == b"hello"
    assert (root / layout(info.key)[1]).read_text() == info.model_dump_json()
    assert (root / marker).stat().st_size == 0


async def test_one_byte_over_the_limit_leaves_no_file_at_all(local: LocalArtifactStore, root: Path) -> None:
    big = payload(3 * WRITE_BATCH + 1)
    with pytest.raises(ArtifactTooLarge):
        await local.put(stream_of(big), name="a", owner=None, task_id="t", max_bytes=len(big) - 1)
    assert files_under(root) == []


async def test_a_stream_failing_after_a_written_batch_leaves_no_file(
    local: LocalArtifactStore, root: Path
) -> None:
    with pytest.raises(OSError, match="disk"):
        await local.put(
            failing_stream(payload(2 * WRITE_BATCH + 5), OSError("disk")),
            name="a",
            owner=None,
            max_bytes=1 << 30,
        )
    assert files_under(root) == []


async def test_a_put_cancelled_mid_way_leaves_no_file(local: LocalArtifactStore, root: Path) -> None:
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield payload(2 * WRITE_BATCH)
        stalled.set()
        await asyncio.Event().wait()
        yield b"never"

    put = asyncio.create_task(local.put(stalls(), name="a", owner=None, max_bytes=1 << 30))
    await asyncio.wait_for(stalled.wait(), 10)
    (temp,) = (root / ".tmp").iterdir()
    assert temp.stat().st_size == 2 * WRITE_BATCH  # the batch was written before the cancel
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert files_under(root) == []


async def test_a_put_cancelled_while_committing_removes_what_the_commit_published(
    local: LocalArtifactStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    original = local_files.replace_atomically

    def slow_metadata(tmp_dir: Path, target: Path, data: bytes) -> None:
        entered.set()
        release.wait(10)
        try:
            original(tmp_dir, target, data)
        finally:
            finished.set()

    monkeypatch.setattr(local_files, "replace_atomically", slow_metadata)
    put = asyncio.create_task(local.put(stream_of(b"abc"), name="a", owner=None, task_id="t", max_bytes=9))
    assert await asyncio.to_thread(entered.wait, 10)
    put.cancel()
    await asyncio.sleep(0.05)  # the discard now waits for the commit's lock
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert await asyncio.to_thread(finished.wait, 10)  # the commit's thread outlives the cancel
    assert files_under(root) == []


async def test_a_failing_metadata_write_removes_the_published_content_and_marker(
    local: LocalArtifactStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(tmp_dir: Path, target: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_files, "replace_atomically", full_disk)
    with pytest.raises(OSError, match="No space"):
        await local.put(stream_of(b"abc"), name="a", owner=None, task_id="t", max_bytes=9)
    assert files_under(root) == []


async def test_a_failing_rename_of_the_metadata_removes_its_temp_file(
    local: LocalArtifactStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def refuse_json(source: str, target: str) -> None:
        if str(target).endswith(".json"):
            raise PermissionError("refused")
        real_replace(source, target)

    monkeypatch.setattr(local_files.os, "replace", refuse_json)
    with pytest.raises(PermissionError):
        await local.put(stream_of(b"abc"), name="a", owner=None, max_bytes=9)
    assert files_under(root) == []


async def test_content_without_metadata_is_absent(local: LocalArtifactStore, root: Path) -> None:
    info = await local.put(stream_of(b"abc"), name="a", owner=None, max_bytes=9)
    (root / layout(info.key)[1]).unlink()
    assert await local.exists(info.key) is False
    with pytest.raises(ArtifactNotFound):
        await local.stat(info.key)
    with pytest.raises(ArtifactNotFound):
        await anext(local.read(info.key))
    assert await local.delete(info.key) is False


async def test_metadata_without_content_is_absent(local: LocalArtifactStore, root: Path) -> None:
    info = await local.put(stream_of(b"abc"), name="a", owner=None, max_bytes=9)
    (root / layout(info.key)[0]).unlink()
    assert await local.exists(info.key) is False
    with pytest.raises(ArtifactNotFound):
        await local.stat(info.key)


async def test_read_of_content_vanished_after_its_metadata_was_read_is_not_found(
    local: LocalArtifactStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = await local.put(stream_of(b"abc"), name="a", owner=None, max_bytes=9)
    loaded = local._load_info(info.key)

    def load_then_lose(key: str) -> object:
        (root / layout(key)[0]).unlink()
        return loaded

    monkeypatch.setattr(local, "_load_info", load_then_lose)
    with pytest.raises(ArtifactNotFound):
        await anext(local.read(info.key))


@pytest.mark.parametrize("metadata", [b"{not json", b'{"key": "2024/05/x"}'])
async def test_unreadable_metadata_is_an_error_naming_the_key(
    local: LocalArtifactStore, root: Path, metadata: bytes
) -> None:
    info = await local.put(stream_of(b"abc"), name="a", owner=None, task_id="t", max_bytes=9)
    (root / layout(info.key)[1]).write_bytes(metadata)
    with pytest.raises(ArtifactError, match=f"metadata of artifact '{info.key}' is unreadable"):
        await local.stat(info.key)
    assert await local.delete(info.key) is True  # still deletable; its marker goes with the task
    assert files_under(root) == ["by-task/t/" + info.key.replace("/", "-")]


async def test_metadata_naming_another_key_is_an_error(local: LocalArtifactStore, root: Path) -> None:
    first = await local.put(stream_of(b"1"), name="a", owner=None, max_bytes=9)
    second = await local.put(stream_of(b"2"), name="b", owner=None, max_bytes=9)
    (root / layout(second.key)[1]).write_bytes((root / layout(first.key)[1]).read_bytes())
    with pytest.raises(ArtifactError, match="names another key"):
        await local.stat(second.key)


async def test_content_whose_size_differs_from_its_metadata_is_an_error(
    local: LocalArtifactStore, root: Path
) -> None:
    info = await local.put(stream_of(b"abcdef"), name="a", owner=None, max_bytes=9)
    (root / layout(info.key)[0]).write_bytes(b"abc")
    with pytest.raises(ArtifactError, match="holds 3 bytes; its metadata says 6"):
        await anext(local.read(info.key))


async def test_content_cut_short_during_a_read_is_an_error(local: LocalArtifactStore, root: Path) -> None:
    info = await local.put(stream_of(b"abcdef"), name="a", owner=None, max_bytes=9)
    reader = local.read(info.key, chunk_size=2)
    assert await anext(reader) == b"ab"
    os.truncate(root / layout(info.key)[0], 3)
    assert await anext(reader) == b"c"
    with pytest.raises(ArtifactError, match="ended at byte 3, before 6"):
        await anext(reader)


async def test_a_read_under_way_finishes_when_the_artifact_is_deleted(local: LocalArtifactStore) -> None:
    data = payload(100_000)
    info = await local.put(stream_of(data), name="a", owner=None, max_bytes=100_000)
    reader = local.read(info.key, chunk_size=10_000)
    first = await anext(reader)
    assert await local.delete(info.key) is True
    assert first + b"".join([chunk async for chunk in reader]) == data


async def test_a_read_abandoned_mid_way_closes_its_file(local: LocalArtifactStore) -> None:
    info = await local.put(stream_of(b"abcdef"), name="a", owner=None, max_bytes=9)
    before = len(os.listdir("/proc/self/fd"))
    reader = local.read(info.key, chunk_size=2)
    await anext(reader)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    await reader.aclose()
    assert len(os.listdir("/proc/self/fd")) == before


async def test_a_malicious_name_creates_no_path_outside_the_root(
    local: LocalArtifactStore, tmp_path: Path
) -> None:
    info = await local.put(stream_of(b"x"), name="../../evil\x00\n", owner=None, max_bytes=1)
    assert info.name == "evil"
    assert all(not name.endswith("evil") for name in files_under(tmp_path))
    assert all(name.startswith("artifacts/") for name in files_under(tmp_path))


async def test_a_symlink_leading_out_of_the_root_is_refused(
    local: LocalArtifactStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "data").symlink_to(outside)
    with pytest.raises(ArtifactError, match="resolves outside the artifact root"):
        await local.put(stream_of(b"x"), name="a", owner=None, max_bytes=1)
    with pytest.raises(ArtifactError, match="resolves outside"):
        await local.stat("2024/05/" + "0" * 32)
    assert files_under(outside) == []
    assert files_under(root / ".tmp") == []


@pytest.mark.parametrize("mask", [0o022, 0o277])
async def test_files_are_0o600_and_directories_0o700_whatever_the_umask(
    root: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    await LocalArtifactStore(root).put(stream_of(b"x"), name="a", owner=None, task_id="t", max_bytes=1)
    os.umask(0o022)
    modes = {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]
    }
    assert {mode for name, mode in modes.items() if (root / name).is_file()} == {0o600}
    assert {mode for name, mode in modes.items() if (root / name).is_dir()} == {0o700}
    assert len(modes) == 10  # root, .tmp, data, yyyy, mm, 2 files, by-task, t, marker


async def test_delete_removes_the_index_marker_too(local: LocalArtifactStore, root: Path) -> None:
    info = await local.put(stream_of(b"x"), name="a", owner=None, task_id="t", max_bytes=1)
    assert await local.delete(info.key) is True
    assert files_under(root) == []


async def test_delete_for_task_leaves_an_incomplete_artifacts_marker_and_other_files(
    local: LocalArtifactStore, root: Path
) -> None:
    done = await local.put(stream_of(b"x"), name="a", owner=None, task_id="t", max_bytes=1)
    incomplete = await local.put(stream_of(b"y"), name="b", owner=None, task_id="t", max_bytes=1)
    (root / layout(incomplete.key)[1]).unlink()
    (root / "by-task/t/notes").write_bytes(b"")
    assert await local.delete_for_task("t") == 1
    assert not (root / layout(done.key)[0]).exists()
    marker = "by-task/t/" + incomplete.key.replace("/", "-")
    assert files_under(root) == sorted([layout(incomplete.key)[0], marker, "by-task/t/notes"])


async def test_delete_for_task_removes_the_emptied_task_directory(
    local: LocalArtifactStore, root: Path
) -> None:
    await local.put(stream_of(b"x"), name="a", owner=None, task_id="t", max_bytes=1)
    assert await local.delete_for_task("t") == 1
    assert sorted(path.name for path in (root / "by-task").iterdir()) == []


async def test_sweep_removes_old_leftovers_only(local: LocalArtifactStore, root: Path) -> None:
    complete = await local.put(stream_of(b"keep"), name="a", owner=None, task_id="t", max_bytes=9)
    for path in root.rglob("*"):
        make_old(path)  # old, but complete: stays
    headless_old = await local.put(stream_of(b"old"), name="b", owner=None, task_id="u", max_bytes=9)
    headless_new = await local.put(stream_of(b"new"), name="c", owner=None, max_bytes=9)
    for info in (headless_old, headless_new):
        (root / layout(info.key)[1]).unlink()
    make_old(root / layout(headless_old.key)[0])
    make_old(root / "by-task/u" / headless_old.key.replace("/", "-"))
    (root / ".tmp/old.part").write_bytes(b"killed")
    make_old(root / ".tmp/old.part")
    (root / ".tmp/new.part").write_bytes(b"in flight")

    assert await local.sweep_orphans(older_than=HOUR) == 3
    assert files_under(root) == sorted(
        [
            *layout(complete.key),
            "by-task/t/" + complete.key.replace("/", "-"),
            layout(headless_new.key)[0],
            ".tmp/new.part",
        ]
    )
    assert not (root / "by-task/u").exists()
    assert await read_all(local, complete.key) == b"keep"
    assert await local.sweep_orphans(older_than=HOUR) == 0


async def test_sweep_of_a_store_never_written_removes_nothing(local: LocalArtifactStore, root: Path) -> None:
    assert await local.sweep_orphans(older_than=0) == 0
    assert not root.exists()


async def test_root_names_the_resolved_directory_and_a_symlinked_root_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = LocalArtifactStore(tmp_path / "link")
    assert store.root == real
    info = await store.put(stream_of(b"x"), name="a", owner=None, max_bytes=1)
    assert files_under(real) == sorted(layout(info.key))


async def test_sweep_refuses_a_negative_age(local: LocalArtifactStore) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await local.sweep_orphans(older_than=-1)


async def test_sweep_never_follows_a_symlinked_directory_out_of_the_root(
    local: LocalArtifactStore, root: Path, tmp_path: Path
) -> None:
    await local.put(stream_of(b"x"), name="a", owner=None, max_bytes=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "05").mkdir()
    victim = outside / "05" / ("0" * 32 + ".bin")
    victim.write_bytes(b"not ours")
    make_old(victim)
    (root / "data" / "1999").symlink_to(outside)
    assert await local.sweep_orphans(older_than=HOUR) == 0
    assert victim.read_bytes() == b"not ours"
