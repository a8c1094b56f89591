"""``taskplatform dlq``: list, inspect, replay and discard dead letters through the DeadLetter API;
``dlq unpark`` moves parked messages back to the DLQ (it talks to RabbitMQ, ``AMQP_URL``).

The bearer token (a JWT with the operator or admin role) comes from ``--token`` or
``TASKPLATFORM_TOKEN``; none is sent when neither is set. ``--operator`` names who acts in the
audit log (default: the OS user name), which the API reads only while its authentication is
disabled. Exit codes are those of every command (``output.ExitCode``); a bulk replay that
left some records unreplayed exits 1. ``replay --all`` shows its progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, get_args

from taskplatform.cli.options import add_token_option, bearer_token, positive_float, positive_int
from taskplatform.cli.output import CommandError, CountWatch, ExitCode, display_for, without_password
from taskplatform.cli.tables import dump, print_audit, print_listing
from taskplatform.models.dead_letter import AuditAction, DeadLetterStatus
from taskplatform.models.reasons import BROKER_REASONS, DeadLetterReason

if TYPE_CHECKING:
    import httpx

    from taskplatform.client import TaskPlatformClient
    from taskplatform.settings import PlatformSettings

#: Filters that select dead letters (``dlq list`` and ``dlq replay --all``): (option, dest).
FILTERS = (
    ("--task-type", "task_type"),
    ("--reason", "reason"),
    ("--user-id", "user_id"),
    ("--error-type", "error_type"),
    ("--since", "since"),
    ("--until", "until"),
)
#: Options of a bulk replay that mean nothing when replaying one record by ID.
BULK_ONLY = (*FILTERS, ("--limit", "limit"), ("--rate", "rate"), ("--dry-run", "dry_run"), ("--yes", "yes"))
#: ``dlq list --status``: a DeadLetterStatus, or every one.
STATUS_CHOICES = (*(s.value for s in DeadLetterStatus), "any")
#: Seconds between two looks at how far a bulk replay is.
REPLAY_POLL_SECONDS = 1.0


class BadInput(CommandError):
    """The command line asks for something malformed; reported in one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BAD_INPUT)


def reasons_help() -> str:
    """``--reason``'s help: the reasons a dead letter records (DeadLetterReason)."""
    own = ", ".join(r.value for r in DeadLetterReason if r not in BROKER_REASONS)
    broker = ", ".join(r.value for r in DeadLetterReason if r in BROKER_REASONS)
    return f"why it died: {own}; or RabbitMQ's {broker} when the platform recorded none"


# ---------------------------------------------------------------- parser
def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task-type")
    parser.add_argument("--reason", help=reasons_help())
    parser.add_argument("--user-id")
    parser.add_argument("--error-type", help="the exception type, e.g. ValueError")
    parser.add_argument("--since", metavar="ISO", help="last seen at or after (ISO 8601; UTC if no offset)")
    parser.add_argument("--until", metavar="ISO", help="last seen before (ISO 8601; UTC if no offset)")


def add_dlq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq`` and its subcommands on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", help="the API's base URL (default: TASKPLATFORM_API_URL)")
    add_token_option(common)
    common.add_argument(
        "--operator",
        metavar="NAME",
        help="who acts, for the audit log, when the API runs without authentication (default: OS user)",
    )

    dlq = sub.add_parser("dlq", help="dead letters: list, show, replay, discard, audit")
    cmds = dlq.add_subparsers(dest="dlq_command", required=True)

    p = cmds.add_parser("list", parents=[common], help="list dead letters, most recently seen first")
    p.add_argument(
        "--status",
        choices=STATUS_CHOICES,
        default=DeadLetterStatus.PENDING.value,
        help=f"default {DeadLetterStatus.PENDING.value}",
    )
    _add_filters(p)
    p.add_argument("--limit", type=positive_int, default=50, help="most records on the page (default 50)")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    p = cmds.add_parser("show", parents=[common], help="show one dead letter, whole")
    p.add_argument("id")

    _add_replay_parser(cmds, common)

    p = cmds.add_parser("discard", parents=[common], help="give a dead letter up (its task stays dead)")
    p.add_argument("id")

    p = cmds.add_parser(
        "audit", parents=[common], help="the audit log (task and dead-letter actions), newest first"
    )
    p.add_argument("--dead-letter-id", metavar="ID")
    p.add_argument("--task-id", metavar="ID", help="entries that acted on this task")
    p.add_argument("--actor", help="entries of this actor (a token subject)")
    p.add_argument("--action", choices=list(get_args(AuditAction)))
    p.add_argument("--since", metavar="ISO", help="at or after (ISO 8601; UTC if no offset)")
    p.add_argument("--until", metavar="ISO", help="before (ISO 8601; UTC if no offset)")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    p = cmds.add_parser(
        "unpark",
        help="move messages the DLQ consumer parked (the store kept refusing them) back to the DLQ, "
        "to be captured again; talks to RabbitMQ (TASKPLATFORM_AMQP_URL), not the API",
    )
    p.add_argument("--limit", type=positive_int, help="most messages to move (default: all parked now)")


def _add_replay_parser(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = cmds.add_parser(
        "replay", parents=[common], help="replay one dead letter (ID), or pending ones by filter (--all)"
    )
    p.add_argument("id", nargs="?", help="the dead letter to replay (dlq list shows ids)")
    p.add_argument("--params", metavar="JSON", help="replacement parameters (one ID only), a JSON object")
    p.add_argument(
        "--all",
        action="store_true",
        help="replay pending dead letters matching the filters: progress on stderr, the result "
        "(JSON) on stdout",
    )
    _add_filters(p)
    p.add_argument("--limit", type=positive_int, help="most records to replay with --all (default 100)")
    p.add_argument("--rate", type=positive_float, help="replays per second (default: the server's)")
    p.add_argument("--dry-run", action="store_true", default=None, help="only list what --all would replay")
    p.add_argument("--yes", action="store_true", default=None, help="allow --all without any filter")


# ---------------------------------------------------------------- input
def parse_time(option: str, text: str) -> datetime:
    """An ISO 8601 date or date-time; one without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"{option} is not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z): {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--params is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInput(f"--params must be a JSON object, got {type(value).__name__}")
    return value


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {dest: getattr(args, dest) for _, dest in FILTERS}


def prepare(args: argparse.Namespace) -> None:
    """Check and convert the command line in place (times, ``--params``) before any request."""
    for option, dest in (("--since", "since"), ("--until", "until")):
        if isinstance(getattr(args, dest, None), str):
            setattr(args, dest, parse_time(option, getattr(args, dest)))
    if args.dlq_command == "replay":
        _check_replay(args)
        if args.params is not None:
            args.params = parse_params(args.params)


def _operator(args: argparse.Namespace) -> str:
    if args.operator:
        return str(args.operator)
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "operator"


def open_client(
    settings: PlatformSettings, args: argparse.Namespace, *, transport: httpx.AsyncBaseTransport | None = None
) -> TaskPlatformClient:
    """The API client with the caller's token and the operator's name (``transport`` is for tests)."""
    from taskplatform.client import TaskPlatformClient

    return TaskPlatformClient.from_settings(
        settings, token=bearer_token(settings, args), operator=_operator(args), transport=transport
    )


# ---------------------------------------------------------------- commands
async def _list(client: TaskPlatformClient, args: argparse.Namespace) -> int:
    listing = await client.list_dead_letters(
        status=args.status, limit=args.limit, cursor=args.cursor, **_filters(args)
    )
    if args.json:
        print(listing.model_dump_json(indent=2))
    else:
        print_listing(listing, args.status)
    return 0


async def _show(client: TaskPlatformClient, args: argparse.Namespace) -> int:
    print((await client.get_dead_letter(args.id)).model_dump_json(indent=2))
    return 0


def _check_replay(args: argparse.Namespace) -> None:
    """One ID, or ``--all`` with filters (or ``--yes``); no option that does not apply."""
    if args.id is not None and args.all:
        raise BadInput("give a dead letter ID or --all, not both")
    if args.id is None and not args.all:
        raise BadInput("give the ID of the dead letter to replay, or --all with filters for a bulk replay")
    if args.id is not None:
        extra = [option for option, dest in BULK_ONLY if getattr(args, dest) is not None]
        if extra:
            raise BadInput(f"{', '.join(extra)} only apply to a bulk replay (--all), not to one ID")
        return
    if args.params is not None:
        raise BadInput("--params applies to replaying one dead letter by ID, not to --all")
    if not any(v is not None for v in _filters(args).values()) and not args.yes:
        names = ", ".join(option for option, _ in FILTERS)
        raise BadInput(
            f"refusing to replay every pending dead letter: add a filter ({names}) or --yes "
            "(--dry-run --yes shows what would be replayed)"
        )


async def _replay(client: TaskPlatformClient, args: argparse.Namespace) -> int:
    if args.id is not None:
        dump(await client.replay_dead_letter(args.id, args.params))
        return 0
    limit = args.limit or 100
    if args.dry_run:
        result = await client.replay_dead_letters(dry_run=True, limit=limit, rate=args.rate, **_filters(args))
    else:
        result = await _replay_watched(client, args, limit)
    dump(result)
    failed = result.get("failed") or {}
    if failed:
        print(f"{len(failed)} of {len(result.get('matched', []))} could not be replayed", file=sys.stderr)
        return int(ExitCode.FAILED)
    return 0


async def _pending(client: TaskPlatformClient, filters: dict[str, Any]) -> int:
    listing = await client.list_dead_letters(status=DeadLetterStatus.PENDING, limit=1, **filters)
    return int(listing.counts.get("total", len(listing.items)))


async def _replay_watched(client: TaskPlatformClient, args: argparse.Namespace, limit: int) -> dict[str, Any]:
    """A bulk replay, with its progress on stderr. The server replays (paced, audited as one
    action) within the one request; meanwhile, every REPLAY_POLL_SECONDS, the CLI counts the
    pending records that match and were last seen before it started: those gone are replayed.
    (A replayed task that dies again reopens its record, seen now: it is not counted back.)"""
    import httpx

    from taskplatform.client import ApiError

    filters = _filters(args)
    started = datetime.now(UTC)
    seen_before = {**filters, "until": min(filters["until"], started) if filters["until"] else started}
    before = await _pending(client, seen_before)
    total = min(before, limit)
    pace = f" at {args.rate:g}/s" if args.rate else ""
    watch = CountWatch(display_for(sys.stderr), "replayed", total)
    watch.line(f"replaying {total} of {before} pending dead letter(s) matching the filters{pace}")
    request = asyncio.ensure_future(
        client.replay_dead_letters(dry_run=False, limit=limit, rate=args.rate, **filters)
    )
    try:
        while not (await asyncio.wait({request}, timeout=REPLAY_POLL_SECONDS))[0]:
            try:
                watch.update(before - await _pending(client, seen_before))
            except (httpx.HTTPError, ApiError):  # a missed look; the replay's own answer tells
                continue
        result: dict[str, Any] = request.result()
    finally:
        if not request.done():  # interrupted: the server finishes the replay all the same
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        watch.close()
    replayed, failed = len(result.get("replayed") or []), len(result.get("failed") or {})
    watch.line(
        f"replayed {replayed}, failed {failed} of {len(result.get('matched') or [])} matched "
        f"in {result.get('seconds', 0)}s"
    )
    return result


async def _discard(client: TaskPlatformClient, args: argparse.Namespace) -> int:
    print((await client.discard_dead_letter(args.id)).model_dump_json(indent=2))
    return 0


async def _audit(client: TaskPlatformClient, args: argparse.Namespace) -> int:
    listing = await client.audit(
        actor=args.actor,
        action=args.action,
        task_id=args.task_id,
        dead_letter_id=args.dead_letter_id,
        since=args.since,
        until=args.until,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print(listing.model_dump_json(indent=2))
    else:
        print_audit(listing)
    return 0


Command = Callable[["TaskPlatformClient", argparse.Namespace], Coroutine[Any, Any, int]]
COMMANDS: dict[str, Command] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "discard": _discard,
    "audit": _audit,
}


async def unpark(settings: PlatformSettings, args: argparse.Namespace) -> int:
    """``dlq unpark``: move parked messages back to the DLQ (each confirmed, then removed)."""
    import aio_pika
    from aio_pika.exceptions import ChannelNotFoundEntity

    from taskplatform.deadletters.parking import move_parked
    from taskplatform.settings import redact_url
    from topology import DEAD_LETTER_QUEUE, PARKING_QUEUE

    parking = f"{settings.topology_prefix}{PARKING_QUEUE}"
    dlq = f"{settings.topology_prefix}{DEAD_LETTER_QUEUE}"
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise CommandError(
            f"cannot reach RabbitMQ at {redact_url(settings.amqp_url)} (TASKPLATFORM_AMQP_URL): "
            f"{type(exc).__name__}: {without_password(str(exc), settings.amqp_url)}",
            ExitCode.UNAVAILABLE,
        ) from None
    try:
        moved = await move_parked(connection, parking, dlq, limit=args.limit)
    except ChannelNotFoundEntity:
        raise CommandError(f"queue {parking!r} does not exist; run 'taskplatform topology declare'") from None
    finally:
        await connection.close()
    print(f"moved {moved} parked message(s) from {parking} back to {dlq}")
    return 0


async def run_dlq(settings: PlatformSettings, args: argparse.Namespace) -> int:
    """Run one ``dlq`` subcommand. Failures propagate (BadInput, ApiError, httpx errors): the
    command's caller reports them in one line with their exit code."""
    if args.dlq_command == "unpark":
        return await unpark(settings, args)
    prepare(args)  # before any request: bad input is reported as such
    async with open_client(settings, args) as client:
        return await COMMANDS[args.dlq_command](client, args)
