"""Checks on everything a caller hands the artifact store: keys, task ids, names, ranges.

``validate_key`` is the one gate for keys: every store method passes its key through it, and it
accepts only the exact shape ``new_key`` generates, so no key can name a path of its own.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import datetime

from taskplatform.artifacts.errors import InvalidArtifactField, InvalidArtifactKey, InvalidRange

#: ``yyyy/mm/<32 lowercase hex>``; ASCII classes only (``\d`` would match other scripts' digits).
_KEY = re.compile(r"[0-9]{4}/(?:0[1-9]|1[0-2])/[0-9a-f]{32}")
KEY_LENGTH = 40
MAX_TASK_ID_LENGTH = 64
MAX_NAME_BYTES = 255
MAX_CONTENT_TYPE_LENGTH = 255
#: ``type/subtype`` in RFC 6838 token characters, then optional parameters in printable ASCII:
#: the value goes out as an HTTP header later, so no CR, LF or other control character.
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(?:[ \t]*;[\x20-\x7e]*)?"
)
#: Name given when sanitising leaves nothing usable.
FALLBACK_NAME = "unnamed"
# Control (Cc), format (Cf: bidi overrides that disguise an extension) and lone surrogates (Cs:
# not encodable as UTF-8).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def validate_key(key: object) -> str:
    """Return ``key`` if it is exactly a generated key, else raise ``InvalidArtifactKey``."""
    if not isinstance(key, str) or len(key) != KEY_LENGTH or _KEY.fullmatch(key) is None:
        raise InvalidArtifactKey(key)
    return key


def new_key(created_at: datetime) -> str:
    """A fresh key, ``yyyy/mm/<128 random bits in hex>``, dated by ``created_at`` (UTC)."""
    return f"{created_at.year:04d}/{created_at.month:02d}/{secrets.token_hex(16)}"


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is 1-64 printable ASCII characters without ``/`` (and not ``.``
    or ``..``, which a backend keeping a directory per task could not use), else raise
    ``InvalidArtifactField``."""
    if not isinstance(task_id, str):
        raise InvalidArtifactField("task_id", task_id, "not a string")
    if not 1 <= len(task_id) <= MAX_TASK_ID_LENGTH:
        raise InvalidArtifactField("task_id", task_id, f"needs 1 to {MAX_TASK_ID_LENGTH} characters")
    if not all(" " <= char <= "~" for char in task_id) or "/" in task_id or task_id in {".", ".."}:
        raise InvalidArtifactField("task_id", task_id, "needs printable ASCII without '/', not '.' or '..'")
    return task_id


def validate_content_type(content_type: object) -> str:
    """Return ``content_type`` if it is a plain ``type/subtype[; params]`` media type."""
    if (
        not isinstance(content_type, str)
        or len(content_type) > MAX_CONTENT_TYPE_LENGTH
        or _CONTENT_TYPE.fullmatch(content_type) is None
    ):
        raise InvalidArtifactField(
            "content_type", content_type, "needs 'type/subtype[; params]' in printable ASCII, at most 255"
        )
    return content_type


def sanitise_name(name: str) -> str:
    """The caller's file name made safe to store and show: its last path component (``/`` or
    ``\\``), control and format characters removed, outer whitespace stripped, cut to 255 bytes of
    UTF-8 on a character boundary; ``"unnamed"`` when nothing usable is left. Only ever metadata,
    never part of a path."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(char for char in base if unicodedata.category(char) not in _DROPPED_CATEGORIES).strip()
    kept = kept.encode()[:MAX_NAME_BYTES].decode(errors="ignore").rstrip()
    return kept if kept not in {"", ".", ".."} else FALLBACK_NAME


def check_range(key: str, start: int, end: int | None, size: int) -> tuple[int, int]:
    """``(start, end)`` of a read, ``end`` filled in; ``InvalidRange`` unless
    ``0 <= start <= end <= size`` (an ``end`` past the file is refused, not clamped)."""
    stop = size if end is None else end
    if start < 0 or stop < start or stop > size:
        raise InvalidRange(key, start, end, size)
    return start, stop
