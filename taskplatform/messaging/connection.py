"""One robust RabbitMQ connection per process, that may come up after the process does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import unquote

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from taskplatform.errors import BrokerError
from taskplatform.settings import redact_url

log = logging.getLogger(__name__)


class BrokerConnection:
    """Owns a ``connect_robust`` connection.

    ``start(wait=False)`` keeps trying in the background when the broker is down, so an
    API can start (and accept tasks into the outbox) before RabbitMQ is reachable. Once
    connected, aio-pika's robust connection restores channels and consumers itself.
    """

    def __init__(self, url: str, *, name: str, retry_interval: float = 2.0) -> None:
        self.url = url
        self.name = name
        self._retry_interval = retry_interval
        self._connection: AbstractRobustConnection | None = None
        self._connected = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._on_connect: list[asyncio.Future[None]] = []

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError(f"not connected to RabbitMQ at {_redact(self.url)}")
        return self._connection

    @property
    def is_connected(self) -> bool:
        """Connected right now (False while the robust connection is reconnecting)."""
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def _connect_once(self) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": self.name}, timeout=10
        )

    async def start(self, *, wait: bool = True) -> None:
        """Connect now (``wait``: raise BrokerError on failure) or keep trying in the background."""
        if wait:
            try:
                self._connection = await self._connect_once()
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                raise BrokerError(
                    f"cannot connect to RabbitMQ at {_redact(self.url)}: {_scrub(exc, self.url)}"
                ) from exc
            self._connected.set()
            return
        self._connector = asyncio.create_task(self._connect_forever(), name=f"{self.name}-connect")

    async def _connect_forever(self) -> None:
        while self._connection is None:
            try:
                self._connection = await self._connect_once()
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning(
                    "RabbitMQ at %s unreachable (%s); retrying in %.0fs",
                    _redact(self.url),
                    _scrub(exc, self.url),
                    self._retry_interval,
                )
                await asyncio.sleep(self._retry_interval)
        log.info("connected to RabbitMQ at %s", _redact(self.url))
        self._connected.set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the first connection is up; False on timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def channel(self, **kwargs: object) -> AbstractChannel:
        """A new channel on the connection; BrokerError while the connection is down (aiormq says
        so with a bare RuntimeError, which callers would take for a bug)."""
        try:
            return await self.connection.channel(**kwargs)  # type: ignore[arg-type]
        except RuntimeError as exc:
            if self.is_connected:
                raise
            raise BrokerError(
                f"the connection to RabbitMQ at {_redact(self.url)} is down; reconnecting"
            ) from exc

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        if self._connection is not None:
            conn, self._connection = self._connection, None
            await conn.close()


def _redact(url: str) -> str:
    """The URL without its password."""
    return redact_url(url)


def _scrub(exc: BaseException, url: str) -> str:
    """The error's text with the URL's password masked, should a library have quoted it."""
    text = str(exc)
    rest = url.partition("://")[2]
    credentials = rest.rsplit("@", 1)[0] if "@" in rest else ""
    password = credentials.partition(":")[2]
    for secret in (password, unquote(password)) if password else ():
        text = text.replace(secret, "***")
    return text
