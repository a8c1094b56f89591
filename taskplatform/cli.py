"""The ``taskplatform`` command: run the API, a worker, or both; submit and inspect tasks;
handle dead letters (``taskplatform dlq``, in ``cli_dlq``); mint API tokens (``taskplatform token``)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskplatform.cli_dlq import add_dlq_parser, add_token_option, bearer_token, positive_int, run_dlq
from taskplatform.errors import ConfigError, TaskPlatformError
from taskplatform.settings import PlatformSettings

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
    return PlatformSettings(**overrides)


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
        uvicorn.run(
            "taskplatform.api.app:create_app_in_process",
            factory=True,
            workers=settings.api_processes,
            **options,
        )
        return 0
    server: uvicorn.Server | None = None

    def stop_serving() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, with_worker=with_worker, on_setup_failure=stop_serving)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run()
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    failed = runtime is not None and runtime.setup_error is not None
    return 1 if failed or not server.started else 0  # never started: the port, the lifespan


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
async def _submit(settings: PlatformSettings, args: argparse.Namespace) -> int:
    from taskplatform.client import TaskPlatformClient

    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        print(f"--params is not valid JSON: {exc}", file=sys.stderr)
        return 2
    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        task_id = await client.submit(
            args.task_type, params, user_id=args.user_id, priority=args.priority, tags=args.tag
        )
        if not args.wait:
            print(json.dumps({"task_id": task_id}))
            return 0
        task = await client.wait(task_id, timeout=args.timeout)
        print(task.model_dump_json(indent=2))
        return 0 if task.status.value == "COMPLETED" else 1


async def _cancel(settings: PlatformSettings, args: argparse.Namespace) -> int:
    from taskplatform.client import TaskPlatformClient

    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        print(json.dumps(await client.cancel(args.task_id)))
    return 0


async def _update(settings: PlatformSettings, args: argparse.Namespace) -> int:
    from taskplatform.client import TaskPlatformClient

    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            print(f"--metadata is not valid JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(metadata, dict):
            print(f"--metadata must be a JSON object, got {type(metadata).__name__}", file=sys.stderr)
            return 2
    if args.priority is None and args.tag is None and metadata is None:
        print("give at least one of --priority, --tag, --metadata", file=sys.stderr)
        return 2
    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        task = await client.update(args.task_id, priority=args.priority, tags=args.tag, metadata=metadata)
    print(task.model_dump_json(indent=2))
    return 0


async def _delete(settings: PlatformSettings, args: argparse.Namespace) -> int:
    from taskplatform.client import TaskPlatformClient

    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        print(json.dumps({"deleted": await client.delete(args.task_id)}))
    return 0


async def _status(settings: PlatformSettings, args: argparse.Namespace) -> int:
    from taskplatform.client import TaskPlatformClient

    async with TaskPlatformClient.from_settings(settings, token=bearer_token(settings, args)) as client:
        task = await client.get(args.task_id)
    print(task.model_dump_json(indent=2))
    return 0


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
async def _topology(settings: PlatformSettings, action: str) -> int:
    from taskplatform.messaging.connection import BrokerConnection
    from taskplatform.runtime import build_platform_topology, build_registry
    from topology import declare_topology, find_topology_problems

    topo = build_platform_topology(settings, build_registry(settings))
    broker = BrokerConnection(settings.amqp_url, name=f"taskplatform-cli-{settings.node_id}")
    await broker.start(wait=True)
    try:
        if action == "declare":
            await declare_topology(broker.connection, topo)
            print(
                f"declared {len(topo.exchanges)} exchanges, {len(topo.queues)} queues, "
                f"{len(topo.bindings)} bindings"
            )
            return 0
        problems = await find_topology_problems(broker.connection, topo)
        for problem in problems:
            print(f"MISMATCH {problem}", file=sys.stderr)
        if problems:
            print(f"topology differs in {len(problems)} place(s); see above", file=sys.stderr)
            return 1
        print(f"topology ok: {len(topo.exchanges)} exchanges, {len(topo.queues)} queues match")
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
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskplatform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (
        ("api", "run the HTTP API (and the outbox relay)"),
        ("dev", "run API + worker + relay in one process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument(
            "--insecure-expose-without-auth",
            action="store_true",
            help="serve a non-loopback host even with authentication disabled (every caller is an admin)",
        )
    sub.add_parser("worker", help="run a worker: consume and execute tasks")

    p = sub.add_parser("submit", help="submit a task through the API")
    p.add_argument("task_type")
    p.add_argument("--params", default="{}", help="parameters as a JSON object")
    p.add_argument("--user-id", help="submit for this user (only an admin may, when the API authenticates)")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--wait", action="store_true", help="wait until the task finishes and print it")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--api-url")
    add_token_option(p)

    p = sub.add_parser("status", help="show a task")
    p.add_argument("task_id")
    p.add_argument("--api-url")
    add_token_option(p)

    p = sub.add_parser("cancel", help="cancel a task (a running one is stopped cooperatively)")
    p.add_argument("task_id")
    p.add_argument("--api-url")
    add_token_option(p)

    p = sub.add_parser("update", help="change a QUEUED task's priority, tags or metadata")
    p.add_argument("task_id")
    p.add_argument("--priority", type=int)
    p.add_argument("--tag", action="append", help="replaces the task's tags (repeat for several)")
    p.add_argument("--metadata", metavar="JSON", help="replaces the task's metadata, a JSON object")
    p.add_argument("--api-url")
    add_token_option(p)

    p = sub.add_parser("delete", help="delete a finished task and its sub-tasks")
    p.add_argument("task_id")
    p.add_argument("--api-url")
    add_token_option(p)

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

    p = sub.add_parser("topology", help="declare or verify the RabbitMQ topology")
    p.add_argument("action", choices=["declare", "verify"])

    p = sub.add_parser("db", help="store schema")
    p.add_argument("action", choices=["upgrade"])

    add_dlq_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"TASKPLATFORM_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"invalid configuration: {problems}", file=sys.stderr)
        return 2
    from taskplatform.logsetup import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    try:
        return _dispatch(args, settings)
    except TaskPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: PlatformSettings) -> int:
    command = args.command
    if command in ("api", "dev") and (refusal := exposure_refused(args, settings)) is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if command == "api":
        return cmd_api(settings)
    if command == "dev":
        return cmd_api(settings, with_worker=True)
    if command == "worker":
        return cmd_worker(settings)
    if command == "token":
        return cmd_token(settings, args)
    runners = {
        "submit": lambda: _submit(settings, args),
        "status": lambda: _status(settings, args),
        "cancel": lambda: _cancel(settings, args),
        "update": lambda: _update(settings, args),
        "delete": lambda: _delete(settings, args),
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
