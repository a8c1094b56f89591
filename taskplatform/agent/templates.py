"""An agent's allow-list: named command templates, read from a JSON or TOML file and checked
at start-up, and the one way a task's arguments become an argv (``CommandTemplate.render``)."""

from __future__ import annotations

import json
import os
import re
import string
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from taskplatform.agent.placeholders import Placeholder, PlaceholderValueError
from taskplatform.errors import ConfigError

TEMPLATE_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
PLACEHOLDER_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,63}$"
_PLACEHOLDER_NAME = re.compile(PLACEHOLDER_NAME_PATTERN)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: What every command's environment starts from; the worker's own environment is never passed on.
BASE_ENVIRONMENT: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
#: Upper bound of ``max_output_bytes``: each stream's tail is kept in memory and in the result,
#: which must stay well within what a store keeps in one document (MongoDB: 16 MiB).
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_TIMEOUT_SECONDS = 7 * 86400.0
SETTING = "TASKPLATFORM_AGENT_COMMANDS_FILE"

PlaceholderName = Annotated[str, StringConstraints(pattern=PLACEHOLDER_NAME_PATTERN)]


class TemplateArgsError(ValueError):
    """A task's ``template``/``args`` do not fit the allow-list; the message says why."""


@dataclass(frozen=True)
class _Slot:
    """Where a placeholder's value goes inside an argv item."""

    name: str


_Item = tuple[str | _Slot, ...]


class CommandTemplate(BaseModel):
    """One allowed command: a fixed program and argv with typed placeholders, its working
    directory, extra environment, time limit and output bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TEMPLATE_NAME_PATTERN)
    description: str = Field(default="", max_length=1000)
    #: The program and its arguments; ``{name}`` is a placeholder (a whole item or part of one),
    #: ``{{`` and ``}}`` are literal braces. The program (``argv[0]``) takes no placeholder.
    argv: list[str] = Field(min_length=1, max_length=1000)
    placeholders: dict[PlaceholderName, Placeholder] = Field(default_factory=dict)
    cwd: str = "/"
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=60.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    max_output_bytes: int = Field(default=65_536, ge=1, le=MAX_OUTPUT_BYTES)
    #: Seconds between SIGTERM and SIGKILL on time-out or cancel; None: the agent's setting.
    kill_grace_seconds: float | None = Field(default=None, ge=0, le=300)
    #: Exit codes after which the task is retried (its retry policy permitting); others fail it.
    retryable_exit_codes: list[int] = Field(default_factory=list, max_length=255)
    _items: tuple[_Item, ...] = PrivateAttr(default=())

    @field_validator("cwd")
    @classmethod
    def _absolute_cwd(cls, value: str) -> str:
        if not os.path.isabs(value) or "\x00" in value:
            raise ValueError(f"must be an absolute path, got {value!r}")
        return value

    @field_validator("env")
    @classmethod
    def _plain_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a variable name (letters, digits, '_')")
            if "\x00" in item:
                raise ValueError(f"the value of {key} contains NUL")
        return value

    @field_validator("retryable_exit_codes")
    @classmethod
    def _exit_codes(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 1 <= code <= 255:
                raise ValueError(f"{code} is not a failing exit code (1-255)")
        return value

    @model_validator(mode="after")
    def _placeholders_match_argv(self) -> CommandTemplate:
        items = tuple(_parse_item(index, item) for index, item in enumerate(self.argv))
        if any(isinstance(part, _Slot) for part in items[0]):
            raise ValueError("argv[0]: the program cannot be a placeholder (it is fixed by the template)")
        used = {part.name for item in items for part in item if isinstance(part, _Slot)}
        undeclared = sorted(used - set(self.placeholders))
        if undeclared:
            raise ValueError(f"argv: placeholder(s) {undeclared} not declared in placeholders")
        unused = sorted(set(self.placeholders) - used)
        if unused:
            raise ValueError(f"placeholders: {unused} declared but not used in argv")
        self._items = items
        return self

    def render(self, args: Mapping[str, str | int]) -> list[str]:
        """The argv for ``args``: each value checked by its placeholder, then put in place as
        text; TemplateArgsError names the first argument refused."""
        missing = sorted(set(self.placeholders) - set(args))
        if missing:
            raise TemplateArgsError(f"missing argument(s): {', '.join(missing)}")
        extra = sorted(set(args) - set(self.placeholders))
        if extra:
            allowed = ", ".join(sorted(self.placeholders)) or "none"
            raise TemplateArgsError(
                f"unknown argument(s): {', '.join(extra)}; this template takes: {allowed}"
            )
        values: dict[str, str] = {}
        for name, placeholder in self.placeholders.items():
            try:
                values[name] = placeholder.check(args[name])
            except PlaceholderValueError as exc:
                raise TemplateArgsError(f"argument {name!r} ({placeholder.type}): {exc}") from None
        return ["".join(values[p.name] if isinstance(p, _Slot) else p for p in item) for item in self._items]

    def environment(self) -> dict[str, str]:
        """The command's whole environment: ``BASE_ENVIRONMENT`` and the template's ``env``."""
        return {**BASE_ENVIRONMENT, **self.env}


def _parse_item(index: int, item: str) -> _Item:
    """``item`` as literal text and placeholder slots; ValueError names the item."""
    if "\x00" in item:
        raise ValueError(f"argv[{index}] contains NUL")
    parts: list[str | _Slot] = []
    try:
        parsed = list(string.Formatter().parse(item))
    except ValueError as exc:
        raise ValueError(
            f"argv[{index}] {item!r}: {exc} (write literal braces as '{{{{' and '}}}}')"
        ) from None
    for literal, field, spec, conversion in parsed:
        if literal:
            parts.append(literal)
        if field is None:
            continue
        if spec or conversion or not _PLACEHOLDER_NAME.match(field):
            raise ValueError(
                f"argv[{index}] {item!r}: a placeholder is '{{name}}' with a lower-case name, nothing more "
                "(write literal braces as '{{' and '}}')"
            )
        parts.append(_Slot(field))
    return tuple(parts)


class _CommandFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    commands: list[CommandTemplate] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> _CommandFile:
        seen: set[str] = set()
        for template in self.commands:
            if template.name in seen:
                raise ValueError(f"template name {template.name!r} is used twice")
            seen.add(template.name)
        return self


class CommandTemplates(Mapping[str, CommandTemplate]):
    """The allow-list: templates by name. Build it with ``load`` (a file) or ``from_data``."""

    def __init__(self, templates: Mapping[str, CommandTemplate], source: str = "") -> None:
        self._by_name = dict(templates)
        #: Where the templates came from, for messages.
        self.source = source

    def __getitem__(self, name: str) -> CommandTemplate:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def template(self, name: str) -> CommandTemplate:
        """The template called ``name``; TemplateArgsError lists the allowed ones."""
        found = self._by_name.get(name)
        if found is None:
            allowed = ", ".join(sorted(self._by_name)) or "none"
            raise TemplateArgsError(f"unknown template {name!r}; this agent allows: {allowed}")
        return found

    def longest_run(self, default_grace: float) -> float:
        """The longest a command of these templates may take, its kill grace included."""
        return max(
            (
                t.timeout_seconds
                + (t.kill_grace_seconds if t.kill_grace_seconds is not None else default_grace)
                for t in self._by_name.values()
            ),
            default=0.0,
        )

    @classmethod
    def from_data(cls, data: object, source: str = "") -> CommandTemplates:
        """Templates from parsed file content (``{"commands": [...]}``); ConfigError names the
        template and the field of every problem."""
        try:
            parsed = _CommandFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_problem(error, data) for error in exc.errors())
            raise ConfigError(f"{SETTING} {source or '(data)'}: {problems}") from None
        return cls({t.name: t for t in parsed.commands}, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CommandTemplates:
        """Templates from a ``.json`` or ``.toml`` file; ConfigError says what is wrong."""
        where = Path(path)
        suffix = where.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise ConfigError(f"{SETTING} {where}: the file must end in .json or .toml")
        try:
            text = where.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{SETTING} {where}: cannot read it: {exc}") from None
        try:
            data: object = json.loads(text) if suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{SETTING} {where}: not valid {suffix[1:].upper()}: {exc}") from None
        return cls.from_data(data, str(where))


def _problem(error: Any, data: object) -> str:
    """One validation error as ``template 'x' (commands[2]) field.path: message``."""
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "commands" and isinstance(loc[1], int):
        index = loc[1]
        name = _raw_name(data, index)
        where = f"template {name!r} (commands[{index}])" if name else f"commands[{index}]"
        parts = list(loc[2:])
        if len(parts) >= 3 and parts[0] == "placeholders" and parts[2] in _PLACEHOLDER_TYPES:
            del parts[2]  # the union's tag: the placeholder's own `type` says it already
        field = ".".join(str(part) for part in parts)
        return f"{where} {field}: {message}" if field else f"{where}: {message}"
    field = ".".join(str(part) for part in loc)
    return f"{field}: {message}" if field else message


_PLACEHOLDER_TYPES = frozenset({"str", "int", "enum", "path"})


def _raw_name(data: object, index: int) -> str | None:
    try:
        name = data["commands"][index]["name"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None
