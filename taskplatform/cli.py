"""The ``taskplatform`` command: run the API, a worker, or both; submit and inspect tasks
(``cli_tasks``); handle dead letters (``taskplatform dlq``, in ``cli_dlq``); mint API tokens
(``taskplatform token``). Exit codes, one-line errors and progress: ``cli_output``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from taskplatform import cli_tasks
from taskplatform.cli_dlq import add_dlq_parser, positive_int, run_dlq
from taskplatform.cli_output import ExitCode, exit_codes_epilog, failure, one_line, quiet_logs
from taskplatform.errors import ConfigError
from taskplatform.settings import PlatformSettings, redact_url

if TYPE_CHECKING:
    from taskplatform.runtime import Runtime

log = logging.getLogger("taskplatform")

#: The values of ``taskplatform.auth.Role``, spelled out: that module loads cryptography, which
#: only ``taskplatform token`` and the API need.
ROLE_NAMES = ("submitter", "operator", "admin")


def _settings(args: argparse.Namespace) -> PlatformSettings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[f"api_{name}"] = value
    if getattr(args, "api_url", None):
        overrides["api_url"] = args.api_url
    # ``dev`` is the laptop command: open unless the environment asks for authentication.
    if args.command == "dev" and not any(k.upper() == "TASKPLATFORM_AUTH" for k in os.environ):
        overrides["auth"] = "disabled"
    settings = PlatformSettings(**overrides)
    if args.command == "dev":  # and the demo task, to try retries, dead letters, PATCH, cancel
        from executors.registry import DEMO_MODULE

        if DEMO_MODULE not in settings.executor_modules:
            settings.executor_modules = [*settings.executor_modules, DEMO_MODULE]
    return settings


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name (or "", every address): it may resolve to anything


def exposure_refused(args: argparse.Namespace, settings: PlatformSettings) -> str | None:
    """Why ``api`` / ``dev`` must not start: an API without authentication acts as an admin for
    every caller, so it stays on loopback unless the operator says otherwise in so many words."""
    if settings.auth != "disabled" or is_loopback(settings.api_host):
        return None
    if getattr(args, "insecure_expose_without_auth", False):
        log.warning(
            "authentication is disabled and the API listens on %s: anyone who reaches it is an admin",
            settings.api_host,
        )
        return None
    return (
        f"refusing to serve the API on {settings.api_host!r} with authentication disabled: anyone who "
        "reaches it would act as an admin. Set TASKPLATFORM_AUTH=jwt (with TASKPLATFORM_JWT_SECRET), "
        "bind a loopback address (--host 127.0.0.1), or pass --insecure-expose-without-auth"
    )


# ---------------------------------------------------------------- servers
def cmd_api(settings: PlatformSettings, *, with_worker: bool = False) -> int:
    import uvicorn

    from taskplatform.api.app import create_app
    from taskplatform.api.server import uvicorn_options

    loop = "asyncio" if loop_factory(settings) is None else "uvloop"
    options: dict[str, Any] = {
        "loop": loop,
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        **uvicorn_options(settings),  # time-outs and bounds against slow or many clients
    }
    if settings.api_processes > 1:
        if with_worker:
            raise ConfigError("API_PROCESSES above 1 is for 'taskplatform api'; run workers on their own")
        prepare_multiprocess_metrics()
        # Each process builds its own app from the environment (uvicorn needs an import string).
        with _startup_failure_reported(settings):
            uvicorn.run(
                "taskplatform.api.app:create_app_in_process",
                factory=True,
                workers=settings.api_processes,
                **options,
            )
            return 0
        return int(ExitCode.FAILED)
    server: uvicorn.Server | None = None

    def stop_serving() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, with_worker=with_worker, on_setup_failure=stop_serving)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    with _startup_failure_reported(settings):
        server.run()
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    failed = runtime is not None and runtime.setup_error is not None
    return 1 if failed or not server.started else 0  # never started: the port, the lifespan


@contextlib.contextmanager
def _startup_failure_reported(settings: PlatformSettings) -> Iterator[None]:
    """uvicorn exits (SystemExit 3) when it cannot start, the port taken, say: report it in one
    line (the log above says why) and let the command exit 1."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        yield
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        print(
            f"error: the API did not start on {settings.api_host}:{settings.api_port}; "
            "the log above says why",
            file=sys.stderr,
        )


def prepare_multiprocess_metrics() -> None:
    """Give the API processes a directory to share their metrics in (prometheus-client's
    multiprocess mode): ``PROMETHEUS_MULTIPROC_DIR`` if set, else a fresh one, emptied first (its
    files are the previous run's counts)."""
    from taskplatform.metrics.exposition import MULTIPROC_ENV

    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="taskplatform-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))
    os.environ[MULTIPROC_ENV] = directory
    log.info("API metrics of every process are shared in %s", directory)


async def run_worker(settings: PlatformSettings) -> int:
    """Run a worker until SIGTERM/SIGINT, then shut down gracefully (0); or until its broker
    setup fails (1)."""
    from taskplatform.runtime import Runtime

    runtime = Runtime(settings, role="worker", consume=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start(wait_for_broker=False)
    try:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(runtime.setup_failed.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        if runtime.setup_error is not None:
            log.critical(
                "cannot consume: broker setup failed (%s); exiting so the supervisor restarts this worker",
                runtime.setup_error,
            )
            return 1
        log.info("shutting down: finishing in-flight tasks (up to %.0fs)", settings.shutdown_grace_seconds)
        return 0
    finally:
        await runtime.stop(grace=settings.shutdown_grace_seconds)


def loop_factory(settings: PlatformSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or when installed and the setting is ``auto``; else asyncio's."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise ConfigError("TASKPLATFORM_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_async(settings: PlatformSettings, coro: Coroutine[Any, Any, int | None]) -> int | None:
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(coro)


def cmd_worker(settings: PlatformSettings) -> int:
    return run_async(settings, run_worker(settings)) or 0


# ---------------------------------------------------------------- client
def cmd_token(settings: PlatformSettings, args: argparse.Namespace) -> int:
    """Print a token for ``--sub``: HS256 with ``JWT_SECRET``, or RS256 with ``--private-key``."""
    from taskplatform.auth import Role, mint_token

    if args.kid is not None and args.private_key is None:
        print("error: --kid names an RS256 key: give --private-key PEM with it", file=sys.stderr)
        return 2
    if args.private_key is None and settings.jwt_algorithm == "RS256":
        print(
            "error: TASKPLATFORM_JWT_ALGORITHM=RS256: sign with the private key, --private-key PEM",
            file=sys.stderr,
        )
        return 2
    if args.private_key is None and settings.jwt_secret is None:
        print(
            "error: no secret to sign with: set TASKPLATFORM_JWT_SECRET (the API's HS256 secret, at "
            "least 32 bytes), or pass --private-key PEM for an RS256 token",
            file=sys.stderr,
        )
        return 2
    roles = [Role(r) for r in args.role] or [Role.SUBMITTER]
    try:
        token = mint_token(
            settings,
            args.sub,
            roles=roles,
            ttl_seconds=args.ttl,
            private_key_file=args.private_key,
            kid=args.kid,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


# ---------------------------------------------------------------- topology / db
def broker_place(settings: PlatformSettings) -> str:
    """Which topology a command works on: the vhost, the broker, the name prefix."""
    url = urlsplit(settings.amqp_url)
    vhost = "/" if url.path in ("", "/") else unquote(url.path[1:])
    port = url.port or (5671 if url.scheme == "amqps" else 5672)
    prefix = f"prefix {settings.topology_prefix!r}" if settings.topology_prefix else "no prefix"
    return f"vhost {vhost!r} on {url.hostname}:{port}, {prefix}"


async def _topology(settings: PlatformSettings, action: str) -> int:
    from taskplatform.messaging.connection import BrokerConnection
    from taskplatform.runtime import build_platform_topology, build_registry
    from topology import declare_topology, find_topology_problems

    place = broker_place(settings)
    if "amqp_url" not in settings.model_fields_set:
        print(
            f"note: TASKPLATFORM_AMQP_URL is not set: using the default broker "
            f"{redact_url(settings.amqp_url)} ({place})",
            file=sys.stderr,
        )
    topo = build_platform_topology(settings, build_registry(settings))
    broker = BrokerConnection(settings.amqp_url, name=f"taskplatform-cli-{settings.node_id}")
    await broker.start(wait=True)
    try:
        if action == "declare":
            await declare_topology(broker.connection, topo)
            print(
                f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, "
                f"{len(topo.bindings)} bindings on {place}"
            )
            return 0
        problems = await find_topology_problems(broker.connection, topo)
        for problem in problems:
            print(f"MISMATCH {problem}", file=sys.stderr)
        if problems:
            print(f"topology on {place} differs in {len(problems)} place(s); see above", file=sys.stderr)
            return int(ExitCode.FAILED)
        print(f"topology ok on {place}: {len(topo.exchanges)} exchanges, {len(topo.queues)} queues match")
        return 0
    finally:
        await broker.close()


async def _db_upgrade(settings: PlatformSettings) -> int:
    from taskplatform.store import create_store

    store = create_store(settings.store_url, auto_migrate=True)
    await store.open()
    await store.close()
    print(f"store at {settings.store_url.split('://', 1)[0]}:// is at the newest schema")
    return 0


# ---------------------------------------------------------------- parser
DESCRIPTION = """\
Run the platform (api, worker, dev), submit and follow tasks, handle dead letters, check the
RabbitMQ topology and the store schema. Settings come from TASKPLATFORM_* environment variables:
the servers read the broker, store and authentication settings; the commands that call the API
read TASKPLATFORM_API_URL and TASKPLATFORM_TOKEN. A failure is one line on stderr, 'error: ...'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskplatform", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (
        ("api", "run the HTTP API (and the outbox relay)"),
        ("dev", "run API + worker + relay in one process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", help="address to listen on (default: TASKPLATFORM_API_HOST)")
        p.add_argument("--port", type=int, help="port to listen on (default: TASKPLATFORM_API_PORT)")
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
    _add_epilog(parser, exit_codes_epilog())
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-line description; keeps a text written in lines (the epilog) as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


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
SERVERS = frozenset({"api", "dev", "worker"})
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
    if command in ("api", "dev") and (refusal := exposure_refused(args, settings)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    if command == "api":
        return cmd_api(settings)
    if command == "dev":
        return cmd_api(settings, with_worker=True)
    if command == "worker":
        return cmd_worker(settings)
    if command == "token":
        return cmd_token(settings, args)
    runners = {
        "submit": lambda: cli_tasks.submit(settings, args),
        "status": lambda: cli_tasks.status(settings, args),
        "cancel": lambda: cli_tasks.cancel(settings, args),
        "update": lambda: cli_tasks.update(settings, args),
        "delete": lambda: cli_tasks.delete(settings, args),
        "topology": lambda: _topology(settings, args.action),
        "db": lambda: _db_upgrade(settings),
        "dlq": lambda: run_dlq(settings, args),
    }
    runner = runners.get(command)
    if runner is None:
        raise SystemExit(f"unknown command {command!r}")
    return run_async(settings, runner()) or 0


if __name__ == "__main__":
    sys.exit(main())
