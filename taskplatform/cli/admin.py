"""``taskplatform token``, ``topology`` and ``db``: minting API tokens, declaring or verifying
the RabbitMQ topology, migrating the store."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import unquote, urlsplit

from taskplatform.cli.output import ExitCode
from taskplatform.errors import ConfigError
from taskplatform.settings import PlatformSettings, redact_url


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


async def topology(settings: PlatformSettings, action: str) -> int:
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


async def db_upgrade(settings: PlatformSettings) -> int:
    from taskplatform.store import create_store

    store = create_store(
        settings.store_url, auto_migrate=True, max_connections=settings.store_max_connections
    )
    await store.open()
    await store.close()
    print(f"store at {settings.store_url.split('://', 1)[0]}:// is at the newest schema")
    return 0
