"""Streams and listings the artifact tests share."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from taskplatform.artifacts import ArtifactStore

HOUR = 3600.0
#: Odd sizes, so chunk edges fall nowhere near the store's own batch and read sizes.
ODD_SIZES = (1, 7, 4093, 65537, 999_983, 13)


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stream_of(data: bytes, sizes: Sequence[int] = ODD_SIZES) -> AsyncIterator[bytes]:
    """``data`` in chunks of ``sizes``, cycled."""
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        yield data[position : position + size]
        position += size
        index += 1


async def failing_stream(data: bytes, error: Exception) -> AsyncIterator[bytes]:
    """``data``, then ``error`` instead of the end."""
    async for chunk in stream_of(data):
        yield chunk
    raise error


async def read_all(
    store: ArtifactStore, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = 1 << 16
) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start=start, end=end, chunk_size=chunk_size)])


def files_under(root: Path) -> list[str]:
    """Every non-directory entry under ``root`` (symlinks included), relative, sorted."""
    found = []
    for directory, _, names in os.walk(root):
        found += [str((Path(directory) / name).relative_to(root)) for name in names]
    return sorted(found)


def make_old(path: Path) -> None:
    """Date ``path`` two hours back."""
    then = time.time() - 2 * HOUR
    os.utime(path, (then, then))
