"""Blocking file primitives of ``LocalArtifactStore``, run in worker threads (``asyncio.to_thread``).

A thread cannot be stopped, so a cancelled coroutine leaves its thread running: each open file
here is guarded by a lock, and closing or discarding it waits for the call under way, so a
descriptor is never closed (and its number reused for another file) in the middle of a read or
write.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = ".part"


def ensure_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each ``DIR_MODE`` whatever the umask."""
    missing: list[Path] = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by a concurrent put
        directory.chmod(DIR_MODE)  # mkdir's mode passes through the umask


def open_new(path: Path) -> int:
    """A new file (never an existing one, never through a symlink), ``FILE_MODE`` whatever the umask."""
    fd = os.open(path, _NEW_FILE, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_temp_path(tmp_dir: Path) -> Path:
    """A fresh, unguessable name in the temp directory."""
    return tmp_dir / f"{secrets.token_hex(16)}{TEMP_SUFFIX}"


def replace_atomically(tmp_dir: Path, target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it, rename it over ``target``, fsync the directory: a
    reader sees the old file or the whole new one. The temp file goes on any failure."""
    temp = new_temp_path(tmp_dir)
    fd = open_new(temp)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


class PendingArtifact:
    """An upload under way: content streamed to a temp file (size and sha256 counted as it
    goes), then ``commit`` publishes it; ``discard`` undoes whatever was done, commit included.

    Every method holds the lock, and once discarded nothing opens, writes or commits again.
    """

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self._temp: Path | None = None
        self._fd: int | None = None
        self._discarded = False
        self._published: list[Path] = []
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        """Hex digest of what was written so far."""
        return self._hash.hexdigest()

    def open(self) -> None:
        """Create the temp file (and the temp directory)."""
        with self._lock:
            self._check_live()
            ensure_dir(self._tmp_dir)
            self._temp = new_temp_path(self._tmp_dir)
            self._fd = open_new(self._temp)

    def write(self, data: bytes) -> None:
        """Append ``data`` to the temp file."""
        with self._lock:
            self._check_live()
            assert self._fd is not None, "write before open"
            write_all(self._fd, data)
            self._hash.update(data)
            self.size += len(data)

    def commit(self, data_path: Path, metadata_path: Path, metadata: bytes, marker: Path | None) -> None:
        """Publish: fsync and move the content to ``data_path``, create the task's ``marker``,
        then write the metadata, last, which makes the artifact visible."""
        with self._lock:
            self._check_live()
            assert self._fd is not None and self._temp is not None, "commit before open"
            os.fsync(self._fd)
            self._close()
            ensure_dir(data_path.parent)
            self._published.append(data_path)
            os.replace(self._temp, data_path)
            if marker is not None:
                ensure_dir(marker.parent)
                self._published.append(marker)
                os.close(open_new(marker))
                fsync_dir(marker.parent)
            self._published.append(metadata_path)
            replace_atomically(self._tmp_dir, metadata_path, metadata)

    def discard(self) -> None:
        """Remove the temp file and anything already published, metadata first."""
        with self._lock:
            self._discarded = True
            self._close()
            if self._temp is not None:
                self._temp.unlink(missing_ok=True)
            for path in reversed(self._published):
                path.unlink(missing_ok=True)

    def _check_live(self) -> None:
        if self._discarded:
            raise RuntimeError("the upload was discarded")

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class RangeReader:
    """An open artifact read in pieces from worker threads; ``close`` waits for a read under way."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset``."""
        with self._lock:
            if self._fd is None:
                raise ValueError("read from a closed artifact")
            return os.pread(self._fd, length, offset)

    def close(self) -> None:
        """Close the file (again: nothing)."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
