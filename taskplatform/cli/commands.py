"""The ``taskplatform`` command's parser and dispatch. One module per command group: ``serve``
(api, worker, dev), ``tasks`` (submit, status, cancel, update, delete), ``dlq``, ``workers``,
``admin`` (token, topology, db); exit codes, one-line errors and progress in ``output``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskplatform.cli import tasks as cli_tasks
from taskplatform.cli.admin import cmd_token, db_upgrade, topology
from taskplatform.cli.dlq import add_dlq_parser, run_dlq
from taskplatform.cli.options import positive_int
from taskplatform.cli.output import ExitCode, exit_codes_epilog, failure, one_line, quiet_logs
from taskplatform.cli.serve import cmd_api, cmd_grpc, cmd_worker, exposure_refused, run_async
from taskplatform.cli.workers import add_workers_parser, run_workers
from taskplatform.settings import PlatformSettings

if TYPE_CHECKING:
    pass

log = logging.getLogger("taskplatform")

#: The values of ``taskplatform.auth.Role``, spelled out: that module loads cryptography, which
#: only ``taskplatform token`` and the API need.
ROLE_NAMES = ("submitter", "operator", "admin")


def _settings(args: argparse.Namespace) -> PlatformSettings:
    overrides: dict[str, Any] = {}
    door = "grpc" if args.command == "grpc" else "api"
    for name in ("host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[f"{door}_{name}"] = value
    if getattr(args, "grpc_port", None) is not None:
        overrides["grpc_port"] = args.grpc_port
    if getattr(args, "api_url", None):
        overrides["api_url"] = args.api_url
    # ``dev`` is the laptop command: open unless the environment asks for authentication.
    if args.command == "dev" and not any(k.upper() == "TASKPLATFORM_AUTH" for k in os.environ):
        overrides["auth"] = "disabled"
    settings = PlatformSettings(**overrides)
    if args.command == "dev":  # and the demo task, to try retries, dead letters, PATCH, cancel
        from taskplatform.tasks.registry import DEMO_MODULE

        if DEMO_MODULE not in settings.executor_modules:
            settings.executor_modules = [*settings.executor_modules, DEMO_MODULE]
    return settings


# ---------------------------------------------------------------- parser
DESCRIPTION = """\
Run the platform (api, grpc, worker, dev), submit and follow tasks, handle dead letters, list the
workers, check the RabbitMQ topology and the store schema. Settings come from TASKPLATFORM_*
environment variables: the servers read the broker, store and authentication settings; the
commands that call the API read TASKPLATFORM_API_URL and TASKPLATFORM_TOKEN. A failure is one
line on stderr, 'error: ...'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskplatform", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text, door in (
        ("api", "run the HTTP API (and the outbox relay)", "API"),
        ("dev", "run API + gRPC + worker + relay in one process", "API"),
        ("grpc", "run the gRPC front door (and the outbox relay)", "GRPC"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", help=f"address to listen on (default: TASKPLATFORM_{door}_HOST)")
        p.add_argument("--port", type=int, help=f"port to listen on (default: TASKPLATFORM_{door}_PORT)")
        if name == "dev":
            p.add_argument(
                "--grpc-port", type=int, help="the gRPC port (default: TASKPLATFORM_GRPC_PORT; 0: any free)"
            )
        p.add_argument(
            "--insecure-expose-without-auth",
            action="store_true",
            help="serve a non-loopback host even with authentication disabled (every caller is an admin)",
        )
    sub.add_parser("worker", help="run a worker: consume and execute tasks")

    cli_tasks.add_task_parsers(sub)

    p = sub.add_parser("token", help="print a signed JWT for the API")
    p.add_argument("--sub", required=True, metavar="USER", help="the user id (the token's subject)")
    p.add_argument(
        "--role",
        action="append",
        default=[],
        choices=ROLE_NAMES,
        help="repeat for several (default: submitter)",
    )
    p.add_argument("--ttl", type=positive_int, default=3600, metavar="SECONDS", help="lifetime, default 3600")
    p.add_argument("--private-key", type=Path, metavar="PEM", help="sign RS256 with this RSA private key")
    p.add_argument("--kid", help="key id for the token header (RS256, with a JWKS)")

    p = sub.add_parser(
        "topology",
        help="declare or verify the RabbitMQ topology",
        description="The exchanges and queues on the vhost of TASKPLATFORM_AMQP_URL, named with "
        "TASKPLATFORM_TOPOLOGY_PREFIX; both are named in the output.",
    )
    p.add_argument(
        "action",
        choices=["declare", "verify"],
        help="declare: create what is missing; verify: compare with what is there, "
        f"exit {int(ExitCode.FAILED)} on a difference",
    )

    p = sub.add_parser("db", help="store schema")
    p.add_argument(
        "action", choices=["upgrade"], help="migrate the store (TASKPLATFORM_STORE_URL) to the newest schema"
    )

    add_dlq_parser(sub)
    add_workers_parser(sub)
    _add_epilog(parser, exit_codes_epilog())
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-line description; keeps a text written in lines (the epilog) as it is; never
    breaks a word at a hyphen (``header-mismatch``, ``--target`` stay whole on their line)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(
            text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)


def _add_epilog(parser: argparse.ArgumentParser, epilog: str) -> None:
    """Give ``parser`` and every subcommand's parser ``epilog``, kept as written."""
    parser.epilog = epilog
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_epilog(child, epilog)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"TASKPLATFORM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid configuration: {problems}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    from taskplatform.logsetup import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    try:
        if args.command in SERVERS:
            return _dispatch(args, settings)
        with quiet_logs(*BROKER_CLIENT_LOGGERS):  # a refused connection is reported once, below
            return _dispatch(args, settings)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        return _report(exc, args, settings)


#: Commands that serve until stopped; the others do one thing and exit.
SERVERS = frozenset({"api", "dev", "grpc", "worker"})
#: Loggers of the RabbitMQ client, which log a refused connection the command reports itself.
BROKER_CLIENT_LOGGERS = ("aiormq", "aio_pika")


def _report(exc: Exception, args: argparse.Namespace, settings: PlatformSettings) -> int:
    """One line on stderr for a failure, and its exit code. A failure no command expects is a
    bug: a server shows its traceback; a one-shot command says what it was in one line (the
    traceback is logged at DEBUG)."""
    found = failure(exc, settings.client_api_url)
    if found is not None:
        message, code = found
        print(f"error: {message}", file=sys.stderr)
        return int(code)
    if args.command in SERVERS:
        raise exc
    log.debug("unexpected failure of 'taskplatform %s'", args.command, exc_info=exc)
    print(
        f"error: unexpected {type(exc).__name__}: {one_line(exc, 500)} "
        "(TASKPLATFORM_LOG_LEVEL=DEBUG shows the traceback)",
        file=sys.stderr,
    )
    return int(ExitCode.FAILED)


def _dispatch(args: argparse.Namespace, settings: PlatformSettings) -> int:
    command = args.command
    if command in ("api", "dev", "grpc") and (refusal := exposure_refused(args, settings)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    if command == "api":
        return cmd_api(settings)
    if command == "dev":
        return cmd_api(settings, with_worker=True)
    if command == "worker":
        return cmd_worker(settings)
    if command == "grpc":
        return cmd_grpc(settings)
    if command == "token":
        return cmd_token(settings, args)
    runners = {
        "submit": lambda: cli_tasks.submit(settings, args),
        "status": lambda: cli_tasks.status(settings, args),
        "attempts": lambda: cli_tasks.attempts(settings, args),
        "cancel": lambda: cli_tasks.cancel(settings, args),
        "update": lambda: cli_tasks.update(settings, args),
        "delete": lambda: cli_tasks.delete(settings, args),
        "topology": lambda: topology(settings, args.action),
        "db": lambda: db_upgrade(settings),
        "dlq": lambda: run_dlq(settings, args),
        "workers": lambda: run_workers(settings, args),
    }
    runner = runners.get(command)
    if runner is None:
        raise SystemExit(f"unknown command {command!r}")
    return run_async(settings, runner()) or 0
