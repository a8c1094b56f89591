"""``taskplatform workers``: the worker registry through the API (a token with the operator or
admin role, from ``--token`` or ``TASKPLATFORM_TOKEN``).

``workers`` lists the workers by node id, following the API's pages up to ``--limit`` rows, as a
table or (``--json``) as the API's JSON; ``workers show NODE_ID`` prints one worker. Exit codes
are those of every command (``output.ExitCode``): an unknown node id exits 5.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from taskplatform.cli.options import add_token_option, bearer_token, positive_int
from taskplatform.cli.output import CommandError, ExitCode
from taskplatform.cli.tables import table
from taskplatform.models.worker import WorkerState, parse_labels

if TYPE_CHECKING:
    from taskplatform.client import TaskPlatformClient, WorkerListing
    from taskplatform.settings import PlatformSettings

#: Rows shown when ``--limit`` is not given.
DEFAULT_LIMIT = 200
#: Workers asked for per request: the API's largest page (``store.types.MAX_PAGE_SIZE``).
PAGE_SIZE = 500
#: The list's options, which ``workers show`` does not take: (option, dest).
LIST_OPTIONS = (
    ("--online/--offline", "online"),
    ("--state", "state"),
    ("--host", "host"),
    ("--label", "label"),
    ("--limit", "limit"),
)
HEADER = ("NODE ID", "HOST", "STATE", "ONLINE", "RUNNING", "LABELS", "LAST SEEN", "VERSION")


def _common(*, keep_parents: bool) -> argparse.ArgumentParser:
    """``--api-url`` and ``--token``. ``keep_parents``: not given, they leave the value the
    ``workers`` parser set alone (``workers --token T show ID``)."""
    common = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS if keep_parents else None
    )
    common.add_argument("--api-url", help="the API's base URL (default: TASKPLATFORM_API_URL)")
    add_token_option(common)
    return common


def add_workers_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``workers`` (and ``workers show``) on the top-level subparsers."""
    p = sub.add_parser(
        "workers",
        parents=[_common(keep_parents=False)],
        help="the worker registry: list the workers, show one",
        description="List the workers of the registry by node id (operator or admin role). A worker is "
        "online while it beats: its state is online or stopping and its last beat is recent (on the "
        "store's clock).",
    )
    presence = p.add_mutually_exclusive_group()
    presence.add_argument(
        "--online", dest="online", action="store_const", const=True, help="online ones only"
    )
    presence.add_argument(
        "--offline",
        dest="online",
        action="store_const",
        const=False,
        help="stopped, offline or silent ones only",
    )
    p.add_argument("--state", choices=[s.value for s in WorkerState], help="the state their record says")
    p.add_argument("--host", help="on this host")
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="carrying this label; repeat for several (all must match)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help=f"most workers shown, over as many pages as it takes (default {DEFAULT_LIMIT})",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    cmds = p.add_subparsers(dest="workers_command", metavar="{show}")
    s = cmds.add_parser("show", parents=[_common(keep_parents=True)], help="show one worker (JSON)")
    s.add_argument("node_id", metavar="NODE_ID")


def parse_label_options(options: list[str] | None) -> dict[str, str]:
    """``--label`` values as labels: each one plain ``key=value``, no key twice; else exit 2."""
    labels: dict[str, str] = {}
    for text in options or ():
        try:
            parsed = parse_labels(text)
        except ValueError as exc:
            raise CommandError(f"--label: {exc}", ExitCode.BAD_INPUT) from None
        if len(parsed) != 1:
            raise CommandError(f"--label {text!r}: give one key=value per --label", ExitCode.BAD_INPUT)
        ((key, value),) = parsed.items()
        if key in labels:
            raise CommandError(f"--label: the key {key!r} is given twice", ExitCode.BAD_INPUT)
        labels[key] = value
    return labels


async def collect(
    client: TaskPlatformClient, args: argparse.Namespace, labels: dict[str, str], limit: int
) -> WorkerListing:
    """Up to ``limit`` workers matching the options, page after page; ``next_cursor`` is the
    cursor after the last one (None when no more match)."""
    from taskplatform.client import WorkerInfo, WorkerListing

    items: list[WorkerInfo] = []
    cursor: str | None = None
    while len(items) < limit:
        page = await client.list_workers(
            online=args.online,
            state=args.state,
            host=args.host,
            labels=labels,
            limit=min(PAGE_SIZE, limit - len(items)),
            cursor=cursor,
        )
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None or not page.items:  # the end (or an API that does not move on)
            break
    return WorkerListing(items=items[:limit], next_cursor=cursor)


def print_workers(listing: WorkerListing) -> None:
    """The workers as a table, then how many (and whether more match)."""
    rows = [
        (
            w.node_id,
            w.host,
            w.state.value,
            "yes" if w.online else "no",
            f"{w.running}/{w.concurrency}",
            ",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or None,
            w.last_seen_at,
            w.version,
        )
        for w in listing.items
    ]
    if not rows:
        print("no workers match")
        return
    print(table(HEADER, rows))
    online = sum(1 for w in listing.items if w.online)
    more = "; more match (--limit shows more)" if listing.next_cursor else ""
    print(f"{len(rows)} worker(s), {online} online{more}")


def _check(args: argparse.Namespace) -> None:
    if args.workers_command == "show":
        given = [option for option, dest in LIST_OPTIONS if getattr(args, dest) is not None]
        if given:
            raise CommandError(
                f"{', '.join(given)} filter the list; 'workers show' takes a node id only", ExitCode.BAD_INPUT
            )


async def run_workers(settings: PlatformSettings, args: argparse.Namespace) -> int:
    """``workers`` or ``workers show``. Bad options exit 2 before any request; the API's
    refusals and an unreachable API propagate (the caller reports them with their exit code)."""
    from taskplatform.client import TaskPlatformClient

    _check(args)
    labels = parse_label_options(args.label)
    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        if args.workers_command == "show":
            print((await client.get_worker(args.node_id)).model_dump_json(indent=2))
            return 0
        listing = await collect(client, args, labels, args.limit or DEFAULT_LIMIT)
    if args.json:
        print(listing.model_dump_json(indent=2))
    else:
        print_workers(listing)
    return 0
