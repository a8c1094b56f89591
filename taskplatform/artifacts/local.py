"""``LocalArtifactStore``: artifacts as files in a local directory (the default backend).

Layout under ``root`` (directories 0o700, files 0o600)::

    .tmp/<random>.part                  uploads under way, and metadata being written
    data/<yyyy>/<mm>/<hex>.bin          content of the artifact with key <yyyy>/<mm>/<hex>
    data/<yyyy>/<mm>/<hex>.json         its ArtifactInfo; written last, so its presence is the commit
    by-task/<task_id>/<yyyy>-<mm>-<hex> empty marker: the index ``delete_for_task`` reads
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from taskplatform.artifacts.errors import ArtifactError, ArtifactNotFound
from taskplatform.artifacts.local_files import PendingArtifact, RangeReader
from taskplatform.artifacts.models import ArtifactInfo
from taskplatform.artifacts.store import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    ArtifactStore,
    check_chunk_size,
    checked_put_fields,
    limited,
)
from taskplatform.artifacts.validation import check_range, new_key, validate_key, validate_task_id

#: Bytes gathered from the stream before one write in a worker thread.
WRITE_BATCH = 1 << 20
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalArtifactStore(ArtifactStore):
    """Artifacts kept under ``root`` (created on the first ``put``); see the module for the layout.

    Writes are atomic: content goes to a temp file, is fsync'd and renamed into place, then the
    metadata is written the same way; data without metadata counts as absent. A failed or
    cancelled ``put`` removes what it wrote; a killed process leaves files ``sweep_orphans``
    removes. Keys only ever name paths through ``validate_key``, and every path is also resolved
    and checked to lie under ``root``.

    ``delete_for_task`` reads a per-task index (``by-task/<task_id>/``, one empty marker per
    artifact, created before the metadata), so it costs one directory listing, not a scan of
    every artifact. Deleting a task's artifacts while the task is still writing one may miss it.
    All blocking calls run in worker threads.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.realpath(root))
        self._tmp = self._root / ".tmp"
        self._data = self._root / "data"
        self._by_task = self._root / "by-task"

    @property
    def root(self) -> Path:
        """The directory holding everything (resolved)."""
        return self._root

    async def put(
        self,
        stream: AsyncIterator[bytes],
        *,
        name: str,
        content_type: str = DEFAULT_CONTENT_TYPE,
        owner: str | None,
        task_id: str | None = None,
        max_bytes: int,
    ) -> ArtifactInfo:
        """See ``ArtifactStore.put``."""
        name, content_type, task_id = checked_put_fields(
            name=name, content_type=content_type, task_id=task_id, max_bytes=max_bytes
        )
        created_at = datetime.now(UTC)
        key = new_key(created_at)
        pending = PendingArtifact(self._tmp)
        try:
            await asyncio.to_thread(self._open, pending)
            async with aclosing(limited(stream, max_bytes)) as chunks:
                await self._receive(chunks, pending)
            info = ArtifactInfo(
                key=key,
                name=name,
                size=pending.size,
                sha256=pending.sha256,
                content_type=content_type,
                owner=owner,
                task_id=task_id,
                created_at=created_at,
            )
            await asyncio.to_thread(self._commit, pending, info)
        except BaseException:
            # Also on cancellation: the thread finishes the discard even if this await is cancelled.
            await asyncio.to_thread(pending.discard)
            raise
        return info

    async def stat(self, key: str) -> ArtifactInfo:
        """See ``ArtifactStore.stat``."""
        validate_key(key)
        return await asyncio.to_thread(self._load_info, key)

    async def read(
        self, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """See ``ArtifactStore.read``. The file is opened once, so a ``delete`` meanwhile does not
        cut the stream short."""
        validate_key(key)
        check_chunk_size(chunk_size)
        reader, position, stop = await asyncio.to_thread(self._open_range, key, start, end)
        try:
            while position < stop:
                chunk = await asyncio.to_thread(reader.pread, min(chunk_size, stop - position), position)
                if not chunk:
                    raise ArtifactError(f"artifact {key!r} ended at byte {position}, before {stop}")
                position += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(reader.close)

    async def delete(self, key: str) -> bool:
        """See ``ArtifactStore.delete``."""
        validate_key(key)
        return await asyncio.to_thread(self._delete, key)

    async def delete_for_task(self, task_id: str) -> int:
        """See ``ArtifactStore.delete_for_task``: one listing of the task's index directory.
        Markers whose artifact has no metadata (a ``put`` under way, or one killed) stay, for a
        later call or ``sweep_orphans``."""
        validate_task_id(task_id)
        return await asyncio.to_thread(self._delete_for_task, task_id)

    async def exists(self, key: str) -> bool:
        """See ``ArtifactStore.exists``."""
        validate_key(key)
        return await asyncio.to_thread(self._exists, key)

    async def sweep_orphans(self, older_than: float) -> int:
        """Remove what killed processes left, last modified over ``older_than`` seconds ago: temp
        files, content without metadata, and index markers without metadata. Returns how many
        files went. Scans every artifact's directory; run it now and then, with ``older_than``
        well above the longest pause of an upload (a paused upload's temp file ages too)."""
        if older_than < 0:
            raise ValueError(f"older_than must be 0 or more seconds, not {older_than}")
        return await asyncio.to_thread(self._sweep, time.time() - older_than)

    async def _receive(self, chunks: AsyncIterator[bytes], pending: PendingArtifact) -> None:
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH:
                await asyncio.to_thread(pending.write, b"".join(batch))
                batch, batched = [], 0
        if batch:
            await asyncio.to_thread(pending.write, b"".join(batch))

    # ------------------------------------------------------------ in worker threads
    def _open(self, pending: PendingArtifact) -> None:
        self._checked(self._tmp)
        pending.open()

    def _commit(self, pending: PendingArtifact, info: ArtifactInfo) -> None:
        data, metadata = self._paths(info.key)
        marker = None if info.task_id is None else self._marker(info.task_id, info.key)
        pending.commit(data, metadata, info.model_dump_json().encode(), marker)

    def _load_info(self, key: str) -> ArtifactInfo:
        data, metadata = self._paths(key)
        try:
            raw = metadata.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None
        if not data.is_file():
            raise ArtifactNotFound(key)
        try:
            info = ArtifactInfo.model_validate_json(raw)
        except ValidationError as error:
            raise ArtifactError(f"metadata of artifact {key!r} is unreadable: {error}") from None
        if info.key != key:
            raise ArtifactError(f"metadata of artifact {key!r} names another key, {info.key!r}")
        return info

    def _exists(self, key: str) -> bool:
        data, metadata = self._paths(key)
        return metadata.is_file() and data.is_file()

    def _open_range(self, key: str, start: int, end: int | None) -> tuple[RangeReader, int, int]:
        info = self._load_info(key)
        data, _ = self._paths(key)
        try:
            fd = os.open(data, _READ)
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None
        reader = RangeReader(fd)
        try:
            size = os.fstat(fd).st_size
            if size != info.size:
                raise ArtifactError(f"artifact {key!r} holds {size} bytes; its metadata says {info.size}")
            position, stop = check_range(key, start, end, size)
        except BaseException:
            reader.close()
            raise
        return reader, position, stop

    def _delete(self, key: str) -> bool:
        data, metadata = self._paths(key)
        try:
            raw = metadata.read_bytes()
            metadata.unlink()  # first: from here on the artifact is absent
        except FileNotFoundError:
            return False  # absent, or deleted meanwhile by another call
        data.unlink(missing_ok=True)
        try:
            task_id = ArtifactInfo.model_validate_json(raw).task_id
        except ValidationError:
            task_id = None  # unreadable: its marker, if any, is left to sweep_orphans
        if task_id is not None:
            self._marker(task_id, key).unlink(missing_ok=True)
        return True

    def _delete_for_task(self, task_id: str) -> int:
        directory = self._checked(self._by_task / task_id)
        try:
            markers = list(directory.iterdir())
        except FileNotFoundError:
            return 0
        deleted = 0
        for marker in markers:
            key = _key_of_marker(marker.name)
            if key is None:
                continue  # not one of ours: left alone
            data, metadata = self._paths(key)
            try:
                metadata.unlink()
            except FileNotFoundError:
                continue  # not complete (or already deleted): see the docstring
            data.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            deleted += 1
        _remove_if_empty(directory)
        return deleted

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        stale = [path for path in self._files(self._tmp, "*") if _older(path, cutoff)]
        for data in self._files(self._data, "[0-9][0-9][0-9][0-9]/[0-9][0-9]/*.bin"):
            if not data.with_suffix(".json").exists() and _older(data, cutoff):
                stale.append(data)
        for marker in self._files(self._by_task, "*/*"):
            key = _key_of_marker(marker.name)
            if key is not None and not self._paths(key)[1].exists() and _older(marker, cutoff):
                stale.append(marker)
        for path in stale:
            if _unlink(path):
                removed += 1
            if path.parent.parent == self._by_task:
                _remove_if_empty(path.parent)
        return removed

    # ---------------------------------------------------------------- paths
    def _paths(self, key: str) -> tuple[Path, Path]:
        """``(content, metadata)`` paths of a validated key."""
        base = self._data / validate_key(key)
        return self._checked(base.with_suffix(".bin")), self._checked(base.with_suffix(".json"))

    def _marker(self, task_id: str, key: str) -> Path:
        return self._checked(self._by_task / validate_task_id(task_id) / key.replace("/", "-"))

    def _files(self, directory: Path, pattern: str) -> list[Path]:
        """Regular files matching ``pattern`` under ``directory`` (none if it is missing), leaving
        out symlinks and whatever a symlinked directory leads to outside the root."""
        return [
            path
            for path in directory.glob(pattern)
            if path.is_file() and not path.is_symlink() and self._inside(path)
        ]

    def _inside(self, path: Path) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(self._root)

    def _checked(self, path: Path) -> Path:
        """``path`` if, symlinks resolved, it lies under the root (beside ``validate_key``)."""
        if not self._inside(path):
            raise ArtifactError(f"path {str(path)!r} resolves outside the artifact root {str(self._root)!r}")
        return path


def _key_of_marker(name: str) -> str | None:
    key = name.replace("-", "/")
    try:
        return validate_key(key)
    except ValueError:
        return None


def _older(path: Path, cutoff: float) -> bool:
    """Whether ``path`` was last modified before ``cutoff``; False if it went meanwhile."""
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> bool:
    """Remove ``path``; False if it went meanwhile (another sweep, a delete)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (an upload for the task arrived meanwhile), or already gone
