"""The uvicorn side of the API's protection from slow clients: the server options, and an h11
protocol that closes a connection whose request head does not arrive in time."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from taskplatform.settings import PlatformSettings

#: Largest request head (request line and headers) a connection may send: h11's default, said once.
MAX_HEAD_BYTES = 16 * 1024


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request head.

    uvicorn's keep-alive timer runs only between requests and restarts on every byte received, so
    a client trickling a head (or sending nothing) would hold its connection for ever. Here a
    connection has ``timeout_keep_alive`` seconds from its opening, and from each response, to
    complete its next request head, however it trickles; then it is closed.
    """

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if not self._awaiting_head():
            self._cancel_head_deadline()  # a request is in progress: the body time-out is the app's

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_head_deadline()  # before: a pipelined head handled in there cancels it
        super().on_response_complete()

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self._awaiting_head() and not self.transport.is_closing():
            if self.conn.our_state is not h11.ERROR:
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
            self.transport.close()


def uvicorn_options(settings: PlatformSettings) -> dict[str, Any]:
    """The options that bound what slow or many clients can hold: the head deadline (also the
    keep-alive time-out), the head size, and the connections (503 above)."""
    return {
        "http": HeadDeadlineH11Protocol,
        "timeout_keep_alive": settings.api_header_timeout_seconds,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "limit_concurrency": settings.api_max_connections,
    }
