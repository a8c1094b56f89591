"""The artifact store's port: files kept under keys the store generates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator

from taskplatform.artifacts.errors import ArtifactTooLarge
from taskplatform.artifacts.models import ArtifactInfo
from taskplatform.artifacts.validation import sanitise_name, validate_content_type, validate_task_id

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_CHUNK_SIZE = 1 << 16


class ArtifactStore(ABC):
    """Files by key: task inputs referenced from parameters, and results a task writes.

    Every method validates its key with ``validate_key`` first (``InvalidArtifactKey``). An
    artifact is visible only once complete: a ``put`` in progress, or one that failed, cannot be
    seen by ``stat``, ``read`` or ``exists``.
    """

    @abstractmethod
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
        """Store ``stream`` as a new artifact under a new key, and describe it.

        Args:
            stream: the content; read to its end, not closed (the caller owns it).
            name: the uploader's file name; kept sanitised as metadata, never used in a path.
            content_type: ``type/subtype[; params]`` (``InvalidArtifactField`` otherwise).
            owner: user id of the uploader, None when auth is off.
            task_id: the task producing it; ``delete_for_task`` deletes it with the task.
            max_bytes: the most accepted: ``ArtifactTooLarge`` as soon as more arrive, and
                nothing is kept. A failure or cancellation mid-way keeps nothing either.
        """

    @abstractmethod
    async def stat(self, key: str) -> ArtifactInfo:
        """The artifact's metadata; ``ArtifactNotFound`` when there is none."""

    @abstractmethod
    def read(
        self, key: str, *, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the artifact (``end`` None: to its end), in chunks of at
        most ``chunk_size``. Implemented as an async generator: ``ArtifactNotFound`` or
        ``InvalidRange`` (unless ``0 <= start <= end <= size``) come from the first step, before
        any bytes; an HTTP layer that must choose its status first calls ``stat``."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete the artifact; False when there was none."""

    @abstractmethod
    async def delete_for_task(self, task_id: str) -> int:
        """Delete every artifact ``put`` with this ``task_id``; how many there were."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a complete artifact has this key."""


def checked_put_fields(
    *, name: str, content_type: str, task_id: str | None, max_bytes: int
) -> tuple[str, str, str | None]:
    """``put``'s arguments checked before any byte is read: ``(sanitised name, content type,
    task id)``. ``max_bytes`` below 0 is a programming error (``ValueError``)."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be 0 or more, not {max_bytes}")
    valid_task_id = None if task_id is None else validate_task_id(task_id)
    return sanitise_name(name), validate_content_type(content_type), valid_task_id


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` if positive (a read of 0-byte chunks would never end), else ``ValueError``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be 1 or more, not {chunk_size}")
    return chunk_size


async def limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncGenerator[bytes, None]:
    """``stream``'s chunks; ``ArtifactTooLarge`` as soon as more than ``max_bytes`` arrived, before
    the chunk that passed the limit is handed on."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise ArtifactTooLarge(max_bytes)
        yield chunk
