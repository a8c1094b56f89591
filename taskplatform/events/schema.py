"""The JSON Schemas of the external events, generated from ``ExternalTaskEvent`` and
``ExternalWorkerEvent``.

Usage::

    python -m taskplatform.events.schema            # print the task event's
    python -m taskplatform.events.schema --write    # write docs/events/task-event.schema.json
    python -m taskplatform.events.schema --check    # exit 1 if the committed file differs
    python -m taskplatform.events.schema --event worker --check   # the same for worker-event.schema.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from taskplatform.events.external import SCHEMA_VERSION, ExternalTaskEvent
from taskplatform.events.workers import WORKER_SCHEMA_VERSION, ExternalWorkerEvent

SCHEMA_ID = f"urn:taskplatform:schema:task-event:v{SCHEMA_VERSION}"
SCHEMA_TITLE = f"taskplatform task lifecycle event, schema version {SCHEMA_VERSION}"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The committed copy, relative to the repository root (this file is taskplatform/events/schema.py).
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "events" / "task-event.schema.json"
WORKER_SCHEMA_ID = f"urn:taskplatform:schema:worker-event:v{WORKER_SCHEMA_VERSION}"
WORKER_SCHEMA_TITLE = f"taskplatform worker lifecycle event, schema version {WORKER_SCHEMA_VERSION}"
WORKER_PATH = DEFAULT_PATH.with_name("worker-event.schema.json")
#: Per event kind: the model, the schema's id and title, the committed file.
EVENTS: dict[str, tuple[type[BaseModel], str, str, Path]] = {
    "task": (ExternalTaskEvent, SCHEMA_ID, SCHEMA_TITLE, DEFAULT_PATH),
    "worker": (ExternalWorkerEvent, WORKER_SCHEMA_ID, WORKER_SCHEMA_TITLE, WORKER_PATH),
}


def event_schema(kind: str = "task") -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the ``kind`` (task, worker) events on the events exchange."""
    model, schema_id, title, _path = EVENTS[kind]
    # Serialization mode: the schema describes the JSON we emit, where every key is present.
    generated = model.model_json_schema(mode="serialization")
    generated.pop("title", None)
    return {"$schema": DIALECT, "$id": schema_id, "title": title, **generated}


def task_event_schema() -> dict[str, Any]:
    """The JSON Schema of the task events."""
    return event_schema("task")


def render(kind: str = "task") -> str:
    """The schema as the committed file holds it (2-space indent, trailing newline)."""
    return json.dumps(event_schema(kind), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the schema file; the exit status for ``--check``."""
    parser = argparse.ArgumentParser(
        prog="python -m taskplatform.events.schema", description="JSON Schema of an external event."
    )
    parser.add_argument("--event", choices=sorted(EVENTS), default="task", help="which event (default: task)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the schema file")
    mode.add_argument("--check", action="store_true", help="exit 1 if the schema file is out of date")
    parser.add_argument("--path", type=Path, default=None, help="schema file (default: the committed one)")
    args = parser.parse_args(argv)
    model, _id, _title, committed = EVENTS[args.event]
    text = render(args.event)
    path: Path = args.path or committed
    command = "python -m taskplatform.events.schema" + (
        "" if args.event == "task" else f" --event {args.event}"
    )
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    if args.check:
        if not path.is_file():
            print(f"{path} is missing; run `{command} --write`", file=sys.stderr)
            return 1
        if path.read_text(encoding="utf-8") != text:
            print(
                f"{path} differs from the schema generated from {model.__name__}; if the change is "
                f"intended, run `{command} --write` and commit the file "
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
