"""``MemoryArtifactStore``: the in-memory fake of ``ArtifactStore``, for unit tests of its users."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime

from taskplatform.artifacts.errors import ArtifactNotFound
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


class MemoryArtifactStore(ArtifactStore):
    """Artifacts in a dict, with the same checks and answers as ``LocalArtifactStore``."""

    def __init__(self) -> None:
        self._artifacts: dict[str, tuple[ArtifactInfo, bytes]] = {}

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
        content = bytearray()
        async with aclosing(limited(stream, max_bytes)) as chunks:
            async for chunk in chunks:
                content += chunk
        created_at = datetime.now(UTC)
        info = ArtifactInfo(
            key=new_key(created_at),
            name=name,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content_type=content_type,
            owner=owner,
            task_id=task_id,
            created_at=created_at,
        )
        self._artifacts[info.key] = (info, bytes(content))
        return info

    async def stat(self, key: str) -> ArtifactInfo:
        """See ``ArtifactStore.stat``."""
        return self._get(key)[0]

    async def read(
        self, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """See ``ArtifactStore.read``."""
        check_chunk_size(chunk_size)
        content = self._get(key)[1]
        position, stop = check_range(key, start, end, len(content))
        for offset in range(position, stop, chunk_size):
            yield content[offset : min(offset + chunk_size, stop)]

    async def delete(self, key: str) -> bool:
        """See ``ArtifactStore.delete``."""
        return self._artifacts.pop(validate_key(key), None) is not None

    async def delete_for_task(self, task_id: str) -> int:
        """See ``ArtifactStore.delete_for_task``."""
        validate_task_id(task_id)
        keys = [key for key, (info, _) in self._artifacts.items() if info.task_id == task_id]
        for key in keys:
            del self._artifacts[key]
        return len(keys)

    async def exists(self, key: str) -> bool:
        """See ``ArtifactStore.exists``."""
        return validate_key(key) in self._artifacts

    def _get(self, key: str) -> tuple[ArtifactInfo, bytes]:
        try:
            return self._artifacts[validate_key(key)]
        except KeyError:
            raise ArtifactNotFound(key) from None
