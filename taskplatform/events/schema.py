"""The JSON Schema of the external event, generated from ``ExternalTaskEvent``.

Usage::

    python -m taskplatform.events.schema            # print it
    python -m taskplatform.events.schema --write    # write docs/events/task-event.schema.json
    python -m taskplatform.events.schema --check    # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskplatform.events.external import SCHEMA_VERSION, ExternalTaskEvent

SCHEMA_ID = f"urn:taskplatform:schema:task-event:v{SCHEMA_VERSION}"
SCHEMA_TITLE = f"taskplatform task lifecycle event, schema version {SCHEMA_VERSION}"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The committed copy, relative to the repository root (this file is taskplatform/events/schema.py).
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "events" / "task-event.schema.json"


def task_event_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the events published to the events exchange."""
    # Serialization mode: the schema describes the JSON we emit, where every key is present.
    generated = ExternalTaskEvent.model_json_schema(mode="serialization")
    generated.pop("title", None)
    return {"$schema": DIALECT, "$id": SCHEMA_ID, "title": SCHEMA_TITLE, **generated}


def render() -> str:
    """The schema as the committed file holds it (2-space indent, trailing newline)."""
    return json.dumps(task_event_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the schema file; the exit status for ``--check``."""
    parser = argparse.ArgumentParser(
        prog="python -m taskplatform.events.schema", description="JSON Schema of the external task event."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the schema file")
    mode.add_argument("--check", action="store_true", help="exit 1 if the schema file is out of date")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="schema file (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render()
    path: Path = args.path
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    if args.check:
        if not path.is_file():
            print(f"{path} is missing; run `python -m taskplatform.events.schema --write`", file=sys.stderr)
            return 1
        if path.read_text(encoding="utf-8") != text:
            print(
                f"{path} differs from the schema generated from ExternalTaskEvent; if the change is "
                "intended, run `python -m taskplatform.events.schema --write` and commit the file "
                "(a breaking change also needs a new schema_version)",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
