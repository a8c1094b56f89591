"""Files by key for tasks: input artifacts a task's parameters refer to, result artifacts a task's
executable writes.

``ArtifactStore`` is the port; ``LocalArtifactStore`` keeps artifacts in a local directory (the
default backend) and ``MemoryArtifactStore`` is the in-memory fake for tests. An S3-compatible
backend would implement ``ArtifactStore`` too; none is built here: no S3 service is reachable from
the machine this was written on, and no S3 client library is a dependency.
"""

from __future__ import annotations

from taskplatform.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactTooLarge,
    InvalidArtifactField,
    InvalidArtifactKey,
    InvalidRange,
)
from taskplatform.artifacts.local import LocalArtifactStore
from taskplatform.artifacts.memory import MemoryArtifactStore
from taskplatform.artifacts.models import ArtifactInfo
from taskplatform.artifacts.store import ArtifactStore
from taskplatform.artifacts.validation import sanitise_name, validate_key, validate_task_id

__all__ = [
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFound",
    "ArtifactStore",
    "ArtifactTooLarge",
    "InvalidArtifactField",
    "InvalidArtifactKey",
    "InvalidRange",
    "LocalArtifactStore",
    "MemoryArtifactStore",
    "sanitise_name",
    "validate_key",
    "validate_task_id",
]
