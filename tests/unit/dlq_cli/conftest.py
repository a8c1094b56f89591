"""The ``taskplatform dlq`` tests' fixtures: a fake API (httpx.MockTransport) and the command run
against it, as OS user alice; the root logger given back after each test."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import pytest

from taskplatform.cli import dlq as cli_dlq
from taskplatform.cli import main
from tests.support.fake_api import BASE, TOKEN, FakeApi


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main`` configures the root logger; give the next test the logging it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def dlq(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``taskplatform dlq ARGS...`` against the fake API, as OS user alice."""
    monkeypatch.setenv("TASKPLATFORM_API_URL", BASE)
    monkeypatch.setenv("TASKPLATFORM_TOKEN", TOKEN)
    monkeypatch.setenv("TASKPLATFORM_EVENT_LOOP", "asyncio")
    monkeypatch.setattr(cli_dlq.getpass, "getuser", lambda: "alice")
    monkeypatch.setattr(
        cli_dlq, "open_client", functools.partial(cli_dlq.open_client, transport=api.transport)
    )

    def run(*args: str) -> int:
        return main(["dlq", *args])

    return run
