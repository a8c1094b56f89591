"""What any store backend keeps faithfully: the checks on caller input (text, numbers, nesting)
that submission, amending and replaying share, and the tag and metadata field types."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field

from taskplatform.errors import InvalidInputError

MAX_TAGS = 20
#: The most metadata a task may carry, as JSON (it is stored and returned with every read).
MAX_METADATA_BYTES = 16_384

#: A task's tags: up to MAX_TAGS short texts.
Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=MAX_TAGS)]


#: The deepest nesting of objects and arrays kept in parameters and metadata. MongoDB nests
#: documents at most 100 deep (a task's fields sit inside its document, its message inside
#: more) and orjson encodes at most 255 levels; this leaves room for both.
MAX_NESTING = 64

_TOO_DEEP = f"objects and arrays nest at most {MAX_NESTING} deep"
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "text must not contain NUL (\\u0000) characters"
    if _LONE_SURROGATE.search(text):
        return "text must not contain lone surrogates (\\ud800-\\udfff): they are not Unicode text"
    return None


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return "integer out of the 64-bit range"
    if isinstance(value, float) and not math.isfinite(value):
        return "number must be finite (no NaN or infinity)"
    return None


def ensure_storable(value: Any, location: tuple[str | int, ...], *, depth: int = 0) -> None:
    """Refuse what no backend stores faithfully: NUL in text (PostgreSQL), lone surrogates
    (not encodable as UTF-8), integers beyond 64 bits (JSON encoders, BSON), NaN and
    infinities (not JSON), nesting deeper than MAX_NESTING (BSON, orjson). Raises
    InvalidInputError naming where."""
    if not isinstance(value, dict | list | tuple):
        problem = _scalar_problem(value)
        if problem is not None:
            raise InvalidInputError(location, problem)
        return
    if depth >= MAX_NESTING:
        raise InvalidInputError(location, _TOO_DEEP)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key) if isinstance(key, str) else None
            if problem is not None:  # the key itself cannot name a location
                raise InvalidInputError(location, f"key {key!r}: {problem}")
            ensure_storable(item, (*location, str(key)), depth=depth + 1)
    else:
        for index, item in enumerate(value):
            ensure_storable(item, (*location, index), depth=depth + 1)


def ensure_shallow(value: Any, location: tuple[str | int, ...], *, depth: int = 0) -> None:
    """Refuse objects and arrays nested deeper than MAX_NESTING (InvalidInputError): only that,
    for input whose other checks come later but that must be serialized first."""
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_NESTING:
            raise InvalidInputError(location, _TOO_DEEP)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            ensure_shallow(item, (*location, key if isinstance(key, int) else str(key)), depth=depth + 1)


def _storable_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        ensure_storable(value, ("metadata",))
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None  # a field error of the model, naming metadata
    size = len(orjson.dumps(value))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are kept")
    return value


#: Free-form caller data kept with a task: storable on every backend (see ``ensure_storable``),
#: at most MAX_METADATA_BYTES as JSON.
Metadata = Annotated[dict[str, Any], AfterValidator(_storable_metadata)]
