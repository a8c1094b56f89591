"""The typed placeholders of a command template, and how each checks the value a task gives it.

A checked value always becomes one argv element (or part of one), never more: no shell parses
it and nothing splits it. Each class's docstring says what its type accepts.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

#: Longest value of any placeholder, whatever its type says: argv items are not documents.
MAX_VALUE_LENGTH = 65_536
PATH_MAX_LENGTH = 4096


class PlaceholderValueError(ValueError):
    """A value a task gave for a placeholder is refused; the message says why."""


class _Placeholder(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(default="", max_length=1000, description="What the value is, for operators.")


class StrPlaceholder(_Placeholder):
    """Text. Without ``pattern``: 1 to ``max_length`` characters, no control characters (newline,
    tab, ESC...), no leading ``-`` (it would read as an option), and not ``.`` or ``..`` (a path
    step: use a ``path`` placeholder for paths). With ``pattern``: the value must match it whole
    (``re.fullmatch``), and that is the rule, control characters included. NUL is refused always
    (no argv can carry it)."""

    type: Literal["str"]
    pattern: str | None = Field(default=None, max_length=1000)
    max_length: int = Field(default=256, ge=1, le=MAX_VALUE_LENGTH)
    _compiled: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    def model_post_init(self, context: object, /) -> None:
        if self.pattern is not None:
            self._compiled = re.compile(self.pattern)

    def check(self, value: str | int) -> str:
        if not isinstance(value, str):
            raise PlaceholderValueError(f"must be a string, got {type(value).__name__}")
        if len(value) > self.max_length:
            raise PlaceholderValueError(f"longer than {self.max_length} characters")
        if "\x00" in value:
            raise PlaceholderValueError("contains NUL")
        if self._compiled is not None:
            if self._compiled.fullmatch(value) is None:
                raise PlaceholderValueError(f"does not match the pattern {self.pattern!r}")
        else:
            if value in ("", ".", ".."):
                raise PlaceholderValueError(
                    "must not be empty, '.' or '..' (for a path, the template should use a path placeholder)"
                )
            bad = _first_control(value)
            if bad is not None:
                raise PlaceholderValueError(f"contains the control character {bad!r} (no pattern allows it)")
            if value.startswith("-"):
                raise PlaceholderValueError("starts with '-' (no pattern allows it)")
        _check_encodable(value)
        return value


class IntPlaceholder(_Placeholder):
    """A whole number (a JSON integer or its decimal text) within ``[min, max]``."""

    type: Literal["int"]
    min: int | None = None
    max: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> IntPlaceholder:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def check(self, value: str | int) -> str:
        if isinstance(value, bool):
            raise PlaceholderValueError("must be an integer, got a boolean")
        if isinstance(value, str):
            if not _INTEGER.fullmatch(value):
                raise PlaceholderValueError("must be an integer")
            value = int(value)
        if self.min is None and value < 0:
            # "-1" would read as an option (kill -TERM -1 signals every process): a template that
            # wants negatives says so with its own min.
            raise PlaceholderValueError("must not be negative (the template sets no min)")
        if self.min is not None and value < self.min:
            raise PlaceholderValueError(f"below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise PlaceholderValueError(f"above the maximum {self.max}")
        return str(value)


_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")


class EnumPlaceholder(_Placeholder):
    """One of ``choices``, exactly."""

    type: Literal["enum"]
    choices: list[str] = Field(min_length=1, max_length=1000)

    @field_validator("choices")
    @classmethod
    def _plain_choices(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("choices repeat a value")
        for choice in value:
            if "\x00" in choice:
                raise ValueError(f"choice {choice!r} contains NUL")
        return value

    def check(self, value: str | int) -> str:
        if not isinstance(value, str) or value not in self.choices:
            shown = ", ".join(self.choices[:20]) + (", ..." if len(self.choices) > 20 else "")
            raise PlaceholderValueError(f"must be one of: {shown}")
        return value


class PathPlaceholder(_Placeholder):
    """A path under ``base``: relative to it, or absolute inside it. ``..`` components are
    refused; symbolic links are resolved and the resolved path must still be under ``base``'s
    own resolved path. The program gets the resolved absolute path."""

    type: Literal["path"]
    base: str = Field(min_length=1, max_length=PATH_MAX_LENGTH)

    @field_validator("base")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError(f"must be an absolute path, got {value!r}")
        if "\x00" in value:
            raise ValueError("contains NUL")
        return os.path.normpath(value)

    def check(self, value: str | int) -> str:
        if not isinstance(value, str) or not value:
            raise PlaceholderValueError("must be a non-empty path")
        if len(value) > PATH_MAX_LENGTH:
            raise PlaceholderValueError(f"longer than {PATH_MAX_LENGTH} characters")
        bad = _first_control(value)
        if bad is not None:
            raise PlaceholderValueError(f"contains the control character {bad!r}")
        if ".." in value.split("/"):
            raise PlaceholderValueError("contains a '..' component")
        _check_encodable(value)
        base = os.path.realpath(self.base)
        # An absolute value replaces the base in join(): it must then name a place inside it.
        resolved = os.path.realpath(os.path.join(base, value))
        if os.path.commonpath([base, resolved]) != base:
            raise PlaceholderValueError(f"resolves outside {self.base}")
        return resolved


Placeholder = Annotated[
    StrPlaceholder | IntPlaceholder | EnumPlaceholder | PathPlaceholder, Field(discriminator="type")
]


def _first_control(value: str) -> str | None:
    """The first control character (Unicode category Cc: C0, DEL, C1) in ``value``, if any."""
    for char in value:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def _check_encodable(value: str) -> None:
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise PlaceholderValueError("cannot be encoded for the command line") from None
