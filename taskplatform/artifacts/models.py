"""What the store knows about one artifact (kept as its metadata, returned by ``stat``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from taskplatform.artifacts.validation import validate_key, validate_task_id


class ArtifactInfo(BaseModel):
    """One stored artifact.

    Attributes:
        key: the key the store generated (``yyyy/mm/<32 hex>``).
        name: the uploader's file name, sanitised (``sanitise_name``); metadata only.
        size: length in bytes.
        sha256: hex digest of the content.
        content_type: media type given at upload.
        owner: user id of the uploader, None when auth is off.
        task_id: the task that produced it (result artifacts), else None.
        created_at: when its upload began (UTC, aware); the key's ``yyyy/mm`` is its month.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: Annotated[str, AfterValidator(validate_key)]
    name: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str
    owner: str | None
    task_id: Annotated[str, AfterValidator(validate_task_id)] | None = None
    created_at: AwareDatetime

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)
