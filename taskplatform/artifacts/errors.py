"""What the artifact store refuses, each error naming the key or limit at fault.

The errors about a caller's value are ``ValueError`` too, so a pydantic validator raising one
reports a validation error.
"""

from __future__ import annotations

from taskplatform.errors import TaskPlatformError

#: How much of a caller's value an error message repeats (a bad key may be megabytes long).
_SHOWN = 80


def shown(value: object) -> str:
    """``repr`` of a caller's value, cut to a length fit for a message."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}...(+{len(text) - _SHOWN} chars)"


class ArtifactError(TaskPlatformError):
    """Root of the artifact store's errors."""


class ArtifactNotFound(ArtifactError):
    """No complete artifact has this key (never written, deleted, or still being written)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no artifact with key {shown(key)}")


class ArtifactTooLarge(ArtifactError):
    """The upload passed its byte limit; nothing was kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"artifact larger than the limit of {max_bytes} bytes; nothing was stored")


class InvalidArtifactKey(ArtifactError, ValueError):
    """A key that is not exactly the shape the store generates (``yyyy/mm/<32 hex>``)."""

    def __init__(self, key: object) -> None:
        self.key = key
        super().__init__(f"invalid artifact key {shown(key)}; expected 'yyyy/mm/<32 lowercase hex>'")


class InvalidArtifactField(ArtifactError, ValueError):
    """A task id or content type given to ``put`` that cannot be stored."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid {field} {shown(value)}: {why}")


class InvalidRange(ArtifactError, ValueError):
    """A byte range ``[start, end)`` that does not lie within the artifact."""

    def __init__(self, key: str, start: int, end: int | None, size: int) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.size = size
        super().__init__(
            f"invalid range [{start}, {end if end is not None else 'end'}) for artifact {shown(key)} "
            f"of {size} bytes; need 0 <= start <= end <= {size}"
        )
