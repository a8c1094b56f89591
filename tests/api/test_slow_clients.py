"""Slow, stalled and oversized clients against a real ``taskplatform api`` process.

JWT authentication on, a SQLite store, short time-outs from the settings. A thousand
unauthenticated connections that trickle or stall their heads or bodies must neither hold the
API's memory nor their connections: a request to ``/api/`` without a valid token is answered
401 from its headers, without its body being read; a head or body that does not arrive in time
is cut off.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.tokens import SECRET, token
from tests.support.server import ROOT, free_port, stop, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HEAD_TIMEOUT = 2.0
#: Longer than the head's, so a body refused at once from its headers is told apart from one
#: held until its time-out, with a margin for a thousand connections on a busy host.
BODY_TIMEOUT = 4.0
#: Each group of the slow-client run: how many connections.
PER_GROUP = 250
#: How long after the time-outs a connection may still be open before it counts as not cut off.
SLACK = 3.0
RSS_ALLOWANCE = 100 * 1024 * 1024


@dataclass
class Server:
    host: str
    port: int
    pid: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running ``taskplatform api`` with JWT authentication and short time-outs. Its broker is
    unreachable on purpose: the API serves without one, and leaves nothing on a real broker."""
    port = free_port()
    store = tmp_path_factory.mktemp("slow") / "tasks.db"
    env = {
        **os.environ,
        "TASKPLATFORM_AUTH": "jwt",
        "TASKPLATFORM_JWT_SECRET": SECRET,
        "TASKPLATFORM_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "TASKPLATFORM_STORE_URL": f"sqlite+aiosqlite:///{store}",
        "TASKPLATFORM_LOG_LEVEL": "CRITICAL",
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "1",
        "TASKPLATFORM_API_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "TASKPLATFORM_API_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "TASKPLATFORM_API_MAX_CONNECTIONS": "5000",
    }
    log = store.parent / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "taskplatform.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log, timeout=60, path="/healthz")
        yield Server("127.0.0.1", port, proc.pid)
    finally:
        stop(proc)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def head(path: str, *lines: str) -> bytes:
    return "".join(
        [f"POST {path} HTTP/1.1\r\n", "Host: api\r\n", *(f"{x}\r\n" for x in lines), "\r\n"]
    ).encode()


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except (ConnectionError, OSError):
        pass
    return data


@dataclass
class Outcome:
    group: str
    seconds: float | None  # until the server closed the connection; None: still open
    status: str


async def _slow_client(server: Server, group: str, limit: float) -> Outcome:
    """One client of ``group``; how long until the server closed it (within ``limit`` s)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(server.host, server.port)

    async def write() -> None:
        try:
            if group == "idle":
                await asyncio.sleep(limit)
            elif group == "trickled head":
                writer.write(b"POST /api/v1/tasks HTTP/1.1\r\nHost: api\r\n")
                for i in range(int(limit / 0.5)):
                    writer.write(f"X-Slow-{i}: x\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.5)
            elif group == "chunked upload":
                writer.write(
                    head("/api/v1/tasks", "Content-Type: application/json", "Transfer-Encoding: chunked")
                )
                piece = b"x" * 65536
                for _ in range(15):  # 960 KiB, under the 1 MiB limit, then a trickle
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                while True:
                    writer.write(b"1\r\nx\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.5)
            else:  # a large declared body, all but its last byte sent, then stalled
                size = 1_048_576
                writer.write(
                    head("/api/v1/tasks", "Content-Type: application/json", f"Content-Length: {size}")
                )
                writer.write(b"x" * (size - 1))
                await writer.drain()
                await asyncio.sleep(limit)
        except (ConnectionError, OSError):
            pass

    writing = asyncio.create_task(write())
    try:
        async with asyncio.timeout(limit):
            data = await _read_until_closed(reader)
        seconds: float | None = time.monotonic() - started
    except TimeoutError:
        data, seconds = b"", None
    finally:
        writing.cancel()
        writer.close()
    status = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "(no answer)"
    return Outcome(group, seconds, status)


async def _run_slow_clients(server: Server) -> tuple[list[Outcome], int, int, int]:
    limit = max(HEAD_TIMEOUT, BODY_TIMEOUT) + SLACK
    start_rss = peak_rss = rss_bytes(server.pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_rss
        while not done.is_set():
            peak_rss = max(peak_rss, rss_bytes(server.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    groups = ("idle", "trickled head", "chunked upload", "stalled large body")
    outcomes = await asyncio.gather(
        *(_slow_client(server, group, limit) for group in groups for _ in range(PER_GROUP))
    )
    done.set()
    await sampler
    return list(outcomes), start_rss, peak_rss, rss_bytes(server.pid)


def test_a_thousand_unauthenticated_slow_clients_are_cut_off_and_hold_no_memory(server: Server) -> None:
    outcomes, start_rss, peak_rss, end_rss = asyncio.run(_run_slow_clients(server))

    mib = 1024 * 1024
    print(
        f"\nAPI RSS: start {start_rss / mib:.0f} MiB, peak {peak_rss / mib:.0f} MiB "
        f"(+{(peak_rss - start_rss) / mib:.0f} MiB), end {end_rss / mib:.0f} MiB"
    )
    problems = []
    for group in dict.fromkeys(o.group for o in outcomes):
        mine = [o for o in outcomes if o.group == group]
        closed = sorted(o.seconds for o in mine if o.seconds is not None)
        statuses = sorted({o.status for o in mine})
        figures = f"median {statistics.median(closed):.2f} s, max {closed[-1]:.2f} s" if closed else "-"
        print(f"{group}: {len(closed)}/{len(mine)} cut off ({figures}); answers: {statuses}")
        if len(closed) < len(mine):
            problems.append(f"{group}: {len(mine) - len(closed)} connections still open")
    assert not problems, problems
    assert peak_rss - start_rss <= RSS_ALLOWANCE, f"RSS grew by {(peak_rss - start_rss) / mib:.0f} MiB"
    # Heads cut off after their time-out; unauthenticated bodies refused at once, from the headers.
    for o in outcomes:
        if o.group in ("chunked upload", "stalled large body"):
            assert o.status.startswith("HTTP/1.1 401") or o.status == "(no answer)", o
            assert o.seconds is not None and o.seconds < BODY_TIMEOUT, o
    # The server still serves.
    assert httpx.get(f"http://{server.host}:{server.port}/healthz", timeout=5).status_code == 200


async def _exchange(server: Server, data: bytes, wait: float) -> tuple[bytes, float | None]:
    """Send ``data``, then read until the server closes; what came, and when (None: not in ``wait``)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(wait):
            answer = await _read_until_closed(reader)
        return answer, time.monotonic() - started
    except TimeoutError:
        return b"", None
    finally:
        writer.close()


def test_unauthenticated_post_is_refused_before_its_body_is_sent(server: Server) -> None:
    request = head("/api/v1/tasks", "Content-Type: application/json", "Content-Length: 100000")
    answer, seconds = asyncio.run(_exchange(server, request, wait=1.5))  # no body is ever sent

    assert seconds is not None, "the server waited for the body of an unauthenticated request"
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'www-authenticate: bearer realm="taskplatform"' in answer.lower()
    assert b"connection: close" in answer.lower()


def test_authenticated_body_that_stalls_answers_408_and_closes(server: Server) -> None:
    request = head(
        "/api/v1/tasks",
        f"Authorization: Bearer {token('slow-uploader')}",
        "Content-Type: application/json",
        "Content-Length: 1000",
    )
    answer, seconds = asyncio.run(_exchange(server, request + b'{"task_type": ', wait=BODY_TIMEOUT + SLACK))

    assert seconds is not None and BODY_TIMEOUT - 0.5 <= seconds <= BODY_TIMEOUT + SLACK, seconds
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    print(f"\nstalled authenticated body answered 408 and closed after {seconds:.2f} s")


def test_idle_connection_is_closed_after_the_head_time_out(server: Server) -> None:
    answer, seconds = asyncio.run(_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: api\r\n", wait=10))

    assert seconds is not None and HEAD_TIMEOUT - 0.5 <= seconds <= HEAD_TIMEOUT + SLACK, seconds
    assert answer == b""
