"""``taskplatform submit|status|cancel|update|delete``: tasks through the API.

``submit --wait`` prints the task's id on stderr at once, shows its status and progress while
it waits (``output``), and prints the finished task on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from taskplatform.cli.options import add_token_option, bearer_token, positive_float
from taskplatform.cli.output import CommandError, ExitCode, TaskWatch, display_for
from taskplatform.models import MAX_PRIORITY, TERMINAL, TaskStatus

if TYPE_CHECKING:
    from taskplatform.client import TaskPlatformClient
    from taskplatform.settings import PlatformSettings

#: Seconds between two reads of a waited-for task.
WAIT_POLL_SECONDS = 0.25
_ENDS = ", ".join(sorted(s.value for s in TERMINAL))


def priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_PRIORITY}, got {value}")
    return value


def add_task_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``submit``, ``status``, ``cancel``, ``update`` and ``delete``."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api-url", help="the API's base URL (default: TASKPLATFORM_API_URL)")
    add_token_option(api)

    p = sub.add_parser(
        "submit",
        parents=[api],
        help="submit a task through the API",
        description="Submit a task; print its id as JSON, or with --wait the finished task.",
    )
    p.add_argument("task_type", help="a registered task type (the API's 422 lists them)")
    p.add_argument("--params", default="{}", metavar="JSON", help="parameters, a JSON object (default {})")
    p.add_argument("--user-id", help="submit for this user (only an admin may, when the API authenticates)")
    p.add_argument(
        "--priority", type=priority, default=0, help=f"0 (default) to {MAX_PRIORITY}, higher runs first"
    )
    p.add_argument("--tag", action="append", default=[], help="a tag (repeat for several)")
    p.add_argument(
        "--wait",
        action="store_true",
        help=f"print the id on stderr at once, show status and progress there, print the task on stdout "
        f"when it ends ({_ENDS}); exit 0 only for {TaskStatus.COMPLETED.value}",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help=f"with --wait: give up after this long (default 60), exit {int(ExitCode.TIMED_OUT)}; "
        "the task goes on",
    )

    p = sub.add_parser("status", parents=[api], help="show a task")
    p.add_argument("task_id")

    p = sub.add_parser("cancel", parents=[api], help="cancel a task (a running one is stopped cooperatively)")
    p.add_argument("task_id")

    p = sub.add_parser(
        "update", parents=[api], help=f"change a {TaskStatus.QUEUED.value} task's priority, tags or metadata"
    )
    p.add_argument("task_id")
    p.add_argument("--priority", type=priority, help=f"0 to {MAX_PRIORITY}")
    p.add_argument("--tag", action="append", help="replaces the task's tags (repeat for several)")
    p.add_argument("--metadata", metavar="JSON", help="replaces the task's metadata, a JSON object")

    p = sub.add_parser("delete", parents=[api], help="delete a finished task and its sub-tasks")
    p.add_argument("task_id")


def json_object(option: str, text: str) -> dict[str, Any]:
    """``text`` as a JSON object, or CommandError (exit 2) naming ``option``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}", ExitCode.BAD_INPUT) from None
    if not isinstance(value, dict):
        raise CommandError(f"{option} must be a JSON object, got {type(value).__name__}", ExitCode.BAD_INPUT)
    return value


def _client(settings: PlatformSettings, args: argparse.Namespace) -> TaskPlatformClient:
    from taskplatform.client import TaskPlatformClient

    return TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args))


async def submit(settings: PlatformSettings, args: argparse.Namespace) -> int:
    params = json_object("--params", args.params)
    async with _client(settings, args) as client:
        task_id = await client.submit(
            args.task_type, params, user_id=args.user_id, priority=args.priority, tags=args.tag
        )
        if not args.wait:
            print(json.dumps({"task_id": task_id}))
            return 0
        return await _wait(client, task_id, args)


async def _wait(client: TaskPlatformClient, task_id: str, args: argparse.Namespace) -> int:
    from taskplatform.client import WaitTimedOut

    watch = TaskWatch(display_for(sys.stderr), task_id)
    watch.started(args.task_type, args.timeout)
    try:
        task = await client.wait(
            task_id, timeout=args.timeout, poll=WAIT_POLL_SECONDS, on_update=watch.update
        )
    except WaitTimedOut as exc:
        watch.close()
        print(exc.task.model_dump_json(indent=2))  # as last seen: scripts find the id here
        raise CommandError(
            f"gave up waiting after {args.timeout:g}s: task {task_id} is still {exc.task.status.value}; "
            f"it goes on (see it: taskplatform status {task_id}; stop it: taskplatform cancel {task_id})",
            ExitCode.TIMED_OUT,
        ) from None
    except asyncio.CancelledError:  # Ctrl-C: say what goes on, then stop as asked
        watch.close()
        print(f"stopped waiting; task {task_id} goes on", file=sys.stderr)
        raise
    finally:
        watch.close()
    watch.finished(task)
    print(task.model_dump_json(indent=2))
    return 0 if task.status is TaskStatus.COMPLETED else int(ExitCode.FAILED)


async def status(settings: PlatformSettings, args: argparse.Namespace) -> int:
    async with _client(settings, args) as client:
        task = await client.get(args.task_id)
    print(task.model_dump_json(indent=2))
    return 0


async def cancel(settings: PlatformSettings, args: argparse.Namespace) -> int:
    async with _client(settings, args) as client:
        print(json.dumps(await client.cancel(args.task_id)))
    return 0


async def update(settings: PlatformSettings, args: argparse.Namespace) -> int:
    metadata = None if args.metadata is None else json_object("--metadata", args.metadata)
    if args.priority is None and args.tag is None and metadata is None:
        raise CommandError("give at least one of --priority, --tag, --metadata", ExitCode.BAD_INPUT)
    async with _client(settings, args) as client:
        task = await client.update(args.task_id, priority=args.priority, tags=args.tag, metadata=metadata)
    print(task.model_dump_json(indent=2))
    return 0


async def delete(settings: PlatformSettings, args: argparse.Namespace) -> int:
    async with _client(settings, args) as client:
        print(json.dumps({"deleted": await client.delete(args.task_id)}))
    return 0
