"""How the ``taskplatform`` command reports: its exit codes, one-line errors on stderr, and the
progress of a long wait (a live line on a terminal, plain lines otherwise, never ANSI codes
off a terminal)."""

from __future__ import annotations

import contextlib
import logging
import textwrap
import time
from collections.abc import Iterator
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol, TextIO
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from taskplatform.models import BackgroundTask


class ExitCode(IntEnum):
    """What ``taskplatform`` exits with; the help's epilog lists them (``exit_codes_epilog``)."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    DENIED = 4
    NOT_FOUND = 5
    CONFLICT = 6
    TIMED_OUT = 124
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "it ran and failed: the waited-for task did not complete, a bulk replay left some "
    "unreplayed, the topology differs, a server stopped on a fault, or the API failed (500)",
    ExitCode.BAD_INPUT: "bad input: the command line, the configuration (TASKPLATFORM_*), or a request "
    "the API refused as invalid (400, 413, 422)",
    ExitCode.UNAVAILABLE: "a service cannot be reached or asks to try later: the API (or 429, 502, "
    "503, 504 from it), RabbitMQ, the store",
    ExitCode.DENIED: "the API refused the caller (401: no or a bad token; 403: the token's roles do "
    "not allow it)",
    ExitCode.NOT_FOUND: "no such task or dead letter (404)",
    ExitCode.CONFLICT: "not in this state (409): the task finished already, the dead letter was "
    "replayed or discarded already",
    ExitCode.TIMED_OUT: "--timeout passed while waiting; the task goes on",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_epilog() -> str:
    """The ``exit codes:`` section of the help, one line per ExitCode."""
    width = max(len(str(int(code))) for code in ExitCode)
    lines = [
        textwrap.fill(
            EXIT_CODE_MEANINGS[code],
            width=78,
            initial_indent=f"  {int(code):>{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
        for code in ExitCode
    ]
    return "exit codes:\n" + "\n".join(lines)


class CommandError(Exception):
    """A failure the command reports as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        self.code = code
        super().__init__(message)


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` on one line of printable characters (messages may come from the API or the
    broker), cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextlib.contextmanager
def quiet_logs(*names: str) -> Iterator[None]:
    """Only CRITICAL records from the loggers ``names`` meanwhile (their levels restored after)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def without_password(text: str, url: str) -> str:
    """``text`` with the password of ``url`` masked, should a library have quoted it."""
    password = urlsplit(url).password
    for secret in (password, unquote(password)) if password else ():
        text = text.replace(secret, "***")
    return text


def api_status_code(status: int) -> ExitCode:
    """The exit code for an error answer of the API."""
    if status in (401, 403):
        return ExitCode.DENIED
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    if status in (429, 502, 503, 504):
        return ExitCode.UNAVAILABLE
    if 400 <= status < 500:
        return ExitCode.BAD_INPUT
    return ExitCode.FAILED


def failure(exc: BaseException, api_url: str) -> tuple[str, ExitCode] | None:
    """The one-line message and exit code for a failure a command may meet in normal use, or
    None for one it should not (a bug: the caller reports it otherwise). ``api_url``: where
    the API was looked for."""
    import httpx
    from pydantic import ValidationError

    from taskplatform.client import ApiError
    from taskplatform.errors import BrokerError, ConfigError, StoreError, TaskPlatformError
    from taskplatform.settings import redact_url

    if isinstance(exc, CommandError):
        return one_line(exc), exc.code
    if isinstance(exc, ApiError):
        hint = ""
        if exc.status == 401:
            hint = " (give a token: TASKPLATFORM_TOKEN or --token; 'taskplatform token' mints one)"
        return one_line(f"{exc}{hint}"), api_status_code(exc.status)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return (
            one_line(
                f"the API's URL {redact_url(api_url)!r} is not an http:// or https:// URL (--api-url, "
                "TASKPLATFORM_API_URL)"
            ),
            ExitCode.BAD_INPUT,
        )
    if isinstance(exc, httpx.HTTPError):
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return (
            one_line(
                f"cannot reach the API at {redact_url(api_url)}: {what} "
                "(is it running? TASKPLATFORM_API_URL or --api-url says where)"
            ),
            ExitCode.UNAVAILABLE,
        )
    if isinstance(exc, ValidationError):  # an answer that is not the API's
        message = f"unexpected answer from the API at {redact_url(api_url)}: {exc}"
        return one_line(message, 500), ExitCode.FAILED
    if isinstance(exc, ConfigError):
        return _said(exc), ExitCode.BAD_INPUT
    if isinstance(exc, BrokerError | StoreError):
        return _said(exc), ExitCode.UNAVAILABLE
    if isinstance(exc, TaskPlatformError):
        return _said(exc), ExitCode.FAILED
    return None


def _said(exc: BaseException) -> str:
    """``exc``'s message on one line; one that ends on a colon (its cause had nothing to say,
    as a bare TimeoutError) names the cause's type."""
    text = one_line(exc)
    if text.endswith(":") and exc.__cause__ is not None:
        text = f"{text} {type(exc.__cause__).__name__}"
    return text


# ---------------------------------------------------------------- progress
def is_live(stream: TextIO) -> bool:
    """Whether ``stream`` takes a live (redrawn) line: a terminal that is not dumb, and that rich
    takes as interactive (``TTY_INTERACTIVE=0``, ``TTY_COMPATIBLE=0`` or ``TERM=dumb`` say no)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    from rich.console import Console

    return bool(Console(file=stream).is_interactive)


class Display(Protocol):
    """Where progress goes: a live line on a terminal, plain lines elsewhere."""

    #: True for a line redrawn in place; a plain display gets only the lines worth keeping.
    live: bool

    def line(self, text: str) -> None:
        """A line that stays (above the live line, if any)."""

    def show(self, description: str, completed: float | None, total: float | None, note: str) -> None:
        """The current state, redrawn in place (a plain display prints it as a line)."""

    def close(self) -> None:
        """Stop the live line, if any (idempotent)."""


class PlainDisplay:
    """Plain lines, no control codes: for logs, CI and pipes."""

    live = False

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def show(self, description: str, completed: float | None, total: float | None, note: str) -> None:
        self.line(" ".join(part for part in (description, note) if part))

    def close(self) -> None:
        pass


class LiveDisplay:
    """One rich progress row, redrawn in place: spinner, what, bar, how far, time, note."""

    live = True

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._console = Console(file=stream, highlight=False)
        self._progress: Progress | None = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=self._console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._row: TaskID | None = None  # the row and its redrawing start with the first show

    def line(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def show(self, description: str, completed: float | None, total: float | None, note: str) -> None:
        if self._progress is None:
            return
        if self._row is None:
            self._row = self._progress.add_task(description, total=total, note=note)
            self._progress.start()
        self._progress.update(
            self._row, description=description, completed=completed or 0, total=total, note=note
        )

    def close(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            progress.stop()


def display_for(stream: TextIO) -> Display:
    """A live display on an interactive terminal, plain lines otherwise."""
    return LiveDisplay(stream) if is_live(stream) else PlainDisplay(stream)


def _percent(task: BackgroundTask) -> float | None:
    """The task's progress percent (a parent's is its children's roll-up), or None."""
    value: Any = (task.progress or {}).get("percent")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None


def _note(task: BackgroundTask) -> str:
    """The task's progress message, printable and short ("" without one)."""
    message: Any = (task.progress or {}).get("message")
    return one_line(message, 60) if isinstance(message, str) and message.strip() else ""


class TaskWatch:
    """Shows a task being waited for: its id at once, then its status and progress.

    Plain lines come only when the status changes or the percent reaches another tenth, so a
    log stays short however often the task reports; on a terminal the line is redrawn.
    """

    def __init__(self, display: Display, task_id: str) -> None:
        self._display = display
        self._task_id = task_id
        self._last: tuple[str, int | None] | None = None
        self._started = time.monotonic()

    def started(self, task_type: str, timeout: float) -> None:
        self._display.line(f"submitted task {self._task_id} ({task_type}); waiting up to {timeout:g}s")

    def update(self, task: BackgroundTask) -> None:
        percent = _percent(task)
        status = task.status.value
        if not self._display.live:
            key = (status, None if percent is None else int(percent // 10))
            if key == self._last:
                return
            self._last = key
            shown = "" if percent is None else f" {percent:.0f}%"
            note = _note(task)
            self._display.line(f"task {self._task_id}: {status}{shown}" + (f" ({note})" if note else ""))
            return
        self._display.show(
            f"task {self._task_id} {status}", percent, None if percent is None else 100.0, _note(task)
        )

    def finished(self, task: BackgroundTask) -> None:
        self._display.close()
        self._display.line(
            f"task {self._task_id}: {task.status.value} after {time.monotonic() - self._started:.1f}s"
        )

    def close(self) -> None:
        self._display.close()


class CountWatch:
    """Shows how many of ``total`` items are done (plain: a line per tenth reached)."""

    def __init__(self, display: Display, what: str, total: int) -> None:
        self._display = display
        self._what = what
        self._total = total
        self._last_tenth = -1

    def update(self, done: int) -> None:
        done = max(0, min(done, self._total))
        if not self._display.live:
            tenth = done * 10 // self._total if self._total else 10
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self._display.line(f"{self._what}: {done}/{self._total}")
            return
        self._display.show(self._what, done, self._total, f"{done}/{self._total}")

    def close(self) -> None:
        self._display.close()

    def line(self, text: str) -> None:
        self._display.line(text)
