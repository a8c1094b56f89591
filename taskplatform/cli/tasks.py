"""``taskplatform submit|status|cancel|update|delete``: tasks through the API.

``submit --wait`` prints the task's id on stderr at once, shows its status and progress while
it waits (``output``), and prints the finished task on stdout. ``submit --file`` submits one
task per line of a JSON Lines file through the bulk route, 1,000 per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

from taskplatform.cli.options import add_token_option, bearer_token, positive_float
from taskplatform.cli.output import (
    CommandError,
    CountWatch,
    ExitCode,
    TaskWatch,
    api_status_code,
    display_for,
    one_line,
)
from taskplatform.cli.tables import print_attempts
from taskplatform.models import MAX_PRIORITY, TERMINAL, TaskStatus

if TYPE_CHECKING:
    from taskplatform.client import BulkResult, BulkSubmitError, TaskPlatformClient
    from taskplatform.models.target import TaskTarget
    from taskplatform.settings import PlatformSettings

#: Seconds between two reads of a waited-for task.
WAIT_POLL_SECONDS = 0.25
_ENDS = ", ".join(sorted(s.value for s in TERMINAL))
#: The fields a line of ``submit --file`` may have: the submit body's, and an idempotency key.
LINE_FIELDS = (
    "task_type",
    "parameters",
    "user_id",
    "priority",
    "tags",
    "metadata",
    "idempotency_key",
    "target",
)
#: Bad lines, and the API's problems, ``submit --file`` names at most in its one error line.
SHOWN_PROBLEMS = 10


def priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_PRIORITY}, got {value}")
    return value


def chunk_size(text: str) -> int:
    """``--chunk-size``: tasks per bulk request, 1 to the API's 1,000."""
    from taskplatform.client import BULK_MAX_TASKS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= BULK_MAX_TASKS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {BULK_MAX_TASKS}, got {value}")
    return value


def add_task_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``submit``, ``status``, ``cancel``, ``update`` and ``delete``."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api-url", help="the API's base URL (default: TASKPLATFORM_API_URL)")
    add_token_option(api)

    p = sub.add_parser(
        "submit",
        parents=[api],
        help="submit a task (or a file of tasks) through the API",
        description="Submit a task; print its id as JSON, or with --wait the finished task. With --file, "
        "submit every task of a JSON Lines file instead (one object per line, like the API's submit body "
        "with an optional idempotency_key): nothing is sent if a line is bad; 1,000 tasks per request; "
        "one JSON line per task on stdout (its line, task_id, status, outcome), a summary on stderr.",
    )
    p.add_argument("task_type", nargs="?", help="a registered task type (the API's 422 lists them)")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="submit the tasks of this JSON Lines file ('-': stdin) in bulk, instead of TASK_TYPE",
    )
    p.add_argument(
        "--chunk-size",
        type=chunk_size,
        metavar="N",
        help="with --file: tasks per request, 1 to 1000 (default 1000; with API_SUBMIT_RATE set, at most "
        "the API's API_SUBMIT_BURST)",
    )
    p.add_argument("--params", metavar="JSON", help="parameters, a JSON object (default {})")
    p.add_argument("--user-id", help="submit for this user (only an admin may, when the API authenticates)")
    p.add_argument("--priority", type=priority, help=f"0 (default) to {MAX_PRIORITY}, higher runs first")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeat for several)")
    p.add_argument(
        "--target",
        metavar="JSON",
        help='where it runs: {"node": "db-1"}, {"labels": {"role": "db"}} (any one of them) or with '
        '"mode": "each" (every one, as sub-tasks); "target_timeout": seconds to wait for an offline target',
    )
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

    p = sub.add_parser("attempts", parents=[api], help="list a task's attempts, oldest first")
    p.add_argument("task_id")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")

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


def _target(text: str) -> TaskTarget:
    """``--target`` as a target, or CommandError (exit 2) naming what is wrong."""
    from pydantic import ValidationError

    from taskplatform.models.target import TaskTarget

    raw = json_object("--target", text)
    try:
        return TaskTarget.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'target'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise CommandError(f"--target is not a valid target: {problems}", ExitCode.BAD_INPUT) from None


def _client(settings: PlatformSettings, args: argparse.Namespace) -> TaskPlatformClient:
    from taskplatform.client import TaskPlatformClient

    return TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args))


async def submit(settings: PlatformSettings, args: argparse.Namespace) -> int:
    if args.file is not None:
        return await submit_file(settings, args)
    if args.task_type is None:
        raise CommandError("give a task type, or --file with one task per line", ExitCode.BAD_INPUT)
    if args.chunk_size is not None:
        raise CommandError("--chunk-size goes with --file", ExitCode.BAD_INPUT)
    params = json_object("--params", args.params or "{}")
    target = _target(args.target) if args.target is not None else None
    async with _client(settings, args) as client:
        task_id = await client.submit(
            args.task_type,
            params,
            user_id=args.user_id,
            priority=args.priority or 0,
            tags=args.tag,
            target=target,
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


async def attempts(settings: PlatformSettings, args: argparse.Namespace) -> int:
    async with _client(settings, args) as client:
        listing = await client.attempts(args.task_id)
    if args.json:
        print(listing.model_dump_json(indent=2))
    else:
        print_attempts(listing)
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


# ---------------------------------------------------------------- submit --file
def _file_options(args: argparse.Namespace) -> list[str]:
    """The options of a single submission given beside ``--file`` (which takes everything from
    its lines)."""
    given = {
        "TASK_TYPE": args.task_type is not None,
        "--params": args.params is not None,
        "--user-id": args.user_id is not None,
        "--priority": args.priority is not None,
        "--tag": bool(args.tag),
        "--target": args.target is not None,
        "--wait": args.wait,
    }
    return [name for name, present in given.items() if present]


def read_lines(path: str, stdin: TextIO | None = None) -> list[str]:
    """The lines of ``path`` (``-``: stdin), or CommandError (exit 2) saying why not."""
    if path == "-":
        return (stdin or sys.stdin).read().splitlines()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read --file {path}: {exc}", ExitCode.BAD_INPUT) from None


def parse_tasks(lines: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """The tasks of a JSON Lines text and the line number (from 1) of each; blank lines are
    skipped. CommandError (exit 2) naming every bad line when any is: nothing is sent then."""
    tasks: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = None
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON: {exc}"
        else:
            problem = _line_problem(value)
        if problem is not None:
            bad.append(f"line {number}: {problem}")
            continue
        tasks.append(value)
        numbers.append(number)
    if bad:
        more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        raise CommandError(
            f"{len(bad)} bad line(s), nothing was sent: {'; '.join(bad[:SHOWN_PROBLEMS])}{more}",
            ExitCode.BAD_INPUT,
        )
    return tasks, numbers


def _line_problem(value: Any) -> str | None:
    """What is wrong with a parsed line, before the API checks it whole (None: nothing)."""
    if not isinstance(value, dict):
        return f"must be a JSON object, got {type(value).__name__}"
    unknown = sorted(set(value) - set(LINE_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(map(repr, unknown))}; a line may have {', '.join(LINE_FIELDS)}"
    if not isinstance(value.get("task_type"), str) or not value["task_type"]:
        return "task_type (a registered task type's name) is missing"
    return None


async def submit_file(settings: PlatformSettings, args: argparse.Namespace) -> int:
    """``submit --file``: every line's task through the bulk route, 1,000 per request."""
    from taskplatform.client import BULK_MAX_TASKS, BulkSubmitError

    extra = _file_options(args)
    if extra:
        raise CommandError(
            f"{', '.join(extra)} cannot go with --file: each line names its task type and fields",
            ExitCode.BAD_INPUT,
        )
    source = "stdin" if args.file == "-" else args.file
    tasks, numbers = parse_tasks(read_lines(args.file))
    if not tasks:
        raise CommandError(f"no tasks in {source}: give one JSON object per line", ExitCode.BAD_INPUT)
    # Progress only when there is more than one request to wait for.
    watch = (
        CountWatch(display_for(sys.stderr), "submitted", len(tasks)) if len(tasks) > BULK_MAX_TASKS else None
    )
    requests = 0

    def progress(done: int) -> None:
        nonlocal requests
        requests += 1
        if watch is not None:
            watch.update(done)

    try:
        async with _client(settings, args) as client:
            results = await client.submit_many(
                tasks, chunk_size=args.chunk_size or BULK_MAX_TASKS, on_progress=progress
            )
    except BulkSubmitError as exc:
        _print_results(exc.results, numbers)
        code = api_status_code(exc.status) if exc.status else ExitCode.UNAVAILABLE
        raise CommandError(_refused(exc, numbers, source), code) from None
    finally:
        if watch is not None:
            watch.close()
    _print_results(results, numbers)
    counts = Counter(r.outcome for r in results)
    waiting = counts["stored_unpublished"]
    later = f", {waiting} stored_unpublished (published when the broker returns)" if waiting else ""
    print(
        f"submitted {len(results)} task(s) from {source} in {requests} request(s): {counts['created']} "
        f"created, {counts['existing']} existing{later}",
        file=sys.stderr,
    )
    return 0


def _print_results(results: list[BulkResult], numbers: list[int]) -> None:
    for r in results:
        line = {
            "line": numbers[r.index],
            "task_id": r.task_id,
            "status": r.status.value,
            "outcome": r.outcome,
        }
        print(json.dumps(line))


def _refused(exc: BulkSubmitError, numbers: list[int], source: str) -> str:
    """A refused bulk request in one line: the API's error with its items named by line."""
    named: list[tuple[int, Any]] = []
    for detail in exc.details if isinstance(exc.details, list) else []:
        index = detail.get("index") if isinstance(detail, dict) else None
        if isinstance(index, int) and 0 <= index < len(numbers):
            named.append((numbers[index], detail.get("msg")))
    said = [f"line {number}: {one_line(msg, 300)}" for number, msg in named if msg]
    if said:
        more = f"; and {len(said) - SHOWN_PROBLEMS} more" if len(said) > SHOWN_PROBLEMS else ""
        what = f"HTTP {exc.status} {exc.code}: {'; '.join(said[:SHOWN_PROBLEMS])}{more}"
    else:
        what = f"HTTP {exc.status} {exc.code}: {one_line(exc.message, 1000)}"
        if named:
            lines = ", ".join(str(number) for number, _ in named[:SHOWN_PROBLEMS])
            what += f" (line(s) {lines}{', …' if len(named) > SHOWN_PROBLEMS else ''})"
    from taskplatform.client import BULK_NO_ANSWER

    unknown = exc.code == BULK_NO_ANSWER
    if not exc.first:
        return what if unknown else f"{what}; nothing was stored"
    rest = (
        "whether the rest were is unknown: submit the file again with idempotency keys to be sure"
        if unknown
        else "the rest were not: fix the file and submit it again (with idempotency keys, "
        "what was stored comes back as existing)"
    )
    return (
        f"{what}; the tasks of lines {numbers[0]} to {numbers[exc.first - 1]} of {source} were stored "
        f"(printed above), {rest}"
    )
