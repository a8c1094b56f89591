"""The configuration reference, ``docs/configuration.md``, generated from ``PlatformSettings``.

Every setting as its environment variable, type, default and description, grouped by the
``# section`` comments of ``taskplatform/settings.py``, ``settings_worker.py`` and ``settings_api.py``.
``python -m taskplatform.settings_doc --write`` rewrites the page; without ``--write`` it prints
it; ``--check`` exits 1 when the page differs (``tests/unit/test_configuration_doc.py`` does too).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from taskplatform.settings import PlatformSettings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
COMMAND = ".venv/bin/python -m taskplatform.settings_doc --write"
_SECTION = re.compile(r"^    # (?P<title>[^:!].*)$")
_FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")

HEADER = """# Configuration

Every setting is an environment variable with the prefix `{prefix}` (read when a process
starts; nothing is read at import time). Lists are JSON (`["a","b"]`); `bool` takes
`true`/`false`/`1`/`0`; "unset" means the variable is absent or empty.

This page is generated from `taskplatform/settings.py`, `settings_worker.py` and `settings_api.py`
(`PlatformSettings`): do
not edit it by hand; change a field's `description` there and run `{command}`.
"""


def sections(settings: type[BaseSettings] = PlatformSettings) -> list[tuple[str, list[str]]]:
    """The fields in source order, grouped under the ``# title`` comment above them: the class's
    own, then those of the platform's classes it is built from (``WorkerSettings``, ``ApiSettings``)."""
    grouped: list[tuple[str, list[str]]] = [("general", [])]
    parts = [settings, *(cls for cls in settings.__mro__[1:] if cls.__module__.startswith("taskplatform."))]
    for part in parts:
        for line in inspect.getsource(part).splitlines():
            if section := _SECTION.match(line):
                grouped.append((section.group("title"), []))
            elif (field := _FIELD.match(line)) and field.group("name") in settings.model_fields:
                grouped[-1][1].append(field.group("name"))
    return [(title, names) for title, names in grouped if names]


def missing_descriptions(settings: type[BaseSettings] = PlatformSettings) -> list[str]:
    """Fields without a description: each must say what it is for."""
    return [name for name, field in settings.model_fields.items() if not (field.description or "").strip()]


def type_text(annotation: Any) -> str:
    """A field's type as a reader of the environment sees it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [type_text(arg) for arg in args if arg is not type(None)]
        return " \\| ".join(kinds) + (", optional" if type(None) in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map of {type_text(args[0])} to {type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "event type" if annotation.__name__ == "EventType" else annotation.__name__
    if isinstance(annotation, type):
        return {"SecretStr": "secret string", "Path": "file path", "Rate": "rate (`N/s`, `N/m`, `N/h`)"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def bounds_text(field: FieldInfo) -> str:
    """The numeric bounds a field enforces (``≥ 1``, ``> 0``)."""
    words = []
    for rule in field.metadata:
        for kind, symbol, attribute in ((Ge, "≥", "ge"), (Gt, ">", "gt"), (Le, "≤", "le"), (Lt, "<", "lt")):
            if isinstance(rule, kind):
                words.append(f"{symbol} {_number(getattr(rule, attribute))}")
    return ", ".join(words)


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in the environment."""
    if field.default_factory is not None:
        if field.default_factory is list:
            return "`[]`"
        if field.default_factory is dict:
            return "empty"
        doc = inspect.getdoc(field.default_factory) or field.default_factory.__name__
        return doc.splitlines()[0].rstrip(".").lower()
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    return f"`{value}`" if value != "" else "empty"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render(settings: type[BaseSettings] = PlatformSettings) -> str:
    """The whole page."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    out = [HEADER.format(prefix=prefix, command=COMMAND)]
    for title, names in sections(settings):
        out.append(f"## {title[0].upper()}{title[1:]}\n")
        for name in names:
            field = settings.model_fields[name]
            bounds = bounds_text(field)
            kind = type_text(field.annotation) + (f", {bounds}" if bounds else "")
            out.append(f"- **`{prefix}{name.upper()}`** · {kind} · default {default_text(field)}  ")
            out.append(f"  {(field.description or '').strip()}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    missing = missing_descriptions()
    if missing:
        print(f"settings without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render()
    if "--write" in args:
        PAGE.write_text(text)
        print(f"wrote {PAGE}")
    elif "--check" in args:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
