"""A fake API over httpx.MockTransport (dead letters, workers, tasks), for the client and CLI tests."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

BASE = "http://api.test"
TOKEN = "s3cret-token"
PREFIX = "/api/v1/dead-letters"
WORKERS = "/api/v1/workers"


def dead_letter(record_id: str = "task-1", **overrides: Any) -> dict[str, Any]:
    """A dead letter as the API returns it."""
    record: dict[str, Any] = {
        "id": record_id,
        "task_id": record_id,
        "task_type": "summary",
        "user_id": "u1",
        "reason": "delivery_limit",
        "error_type": "ValueError",
        "status": "pending",
        "deaths": 2,
        "times_seen": 3,
        "first_seen_at": "2024-05-01T10:00:00Z",
        "last_seen_at": "2024-05-01T12:30:00Z",
        "body": '{"x": 1}',
    }
    record.update(overrides)
    return record


def audit_entry(entry_id: str, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": entry_id,
        "at": "2024-05-02T08:00:00Z",
        "actor": "alice",
        "action": "replay",
        "dead_letter_ids": ["task-1"],
        "outcome": "ok",
    }
    entry.update(overrides)
    return entry


def worker_record(node_id: str = "host-1-4242-abc123", **overrides: Any) -> dict[str, Any]:
    """A worker as the API returns it (its record, ``online`` and ``load``)."""
    record: dict[str, Any] = {
        "node_id": node_id,
        "host": "host-1",
        "pid": 4242,
        "labels": {"role": "db", "region": "eu"},
        "task_types": ["summary"],
        "queue_groups": ["default"],
        "concurrency": 8,
        "running": 2,
        "version": "1.4.0",
        "started_at": "2024-05-01T09:00:00Z",
        "last_seen_at": "2024-05-01T12:30:05Z",
        "heartbeat_seconds": 5.0,
        "expires_at": "2024-05-01T12:30:20Z",
        "state": "online",
        "state_changed_at": "2024-05-01T09:00:00Z",
        "online": True,
        "load": 0.25,
    }
    record.update(overrides)
    return record


def error_body(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


@dataclass
class FakeApi:
    """Answers (method, path) with a canned response and records every request it gets."""

    routes: dict[tuple[str, str], httpx.Response | Callable[[httpx.Request], httpx.Response]] = field(
        default_factory=dict
    )
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, response: httpx.Response | dict[str, Any]) -> None:
        self.routes[(method, path)] = (
            response if isinstance(response, httpx.Response) else httpx.Response(200, json=response)
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if route is None:
            return error_body(404, "not_found", f"no fake route for {request.method} {request.url}")
        return route(request) if callable(route) else route

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def only(self) -> httpx.Request:
        """The one request made."""
        assert len(self.requests) == 1, [str(r.url) for r in self.requests]
        return self.requests[0]


def query(request: httpx.Request) -> dict[str, str]:
    items = request.url.params.multi_items()
    assert len(items) == len(dict(items)), f"repeated query parameters: {items}"
    return dict(items)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


def assert_operator(request: httpx.Request, operator: str = "alice", token: str = TOKEN) -> None:
    assert request.headers.get("authorization") == f"Bearer {token}"
    assert request.headers.get("x-operator") == operator


@contextlib.contextmanager
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test of the CLI's ``main``: no TASKPLATFORM_ variable from the caller's shell, the
    plain asyncio loop, and afterwards the root logger as it was (``main`` configures it)."""
    import os

    for name in [n for n in os.environ if n.upper().startswith("TASKPLATFORM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TASKPLATFORM_EVENT_LOOP", "asyncio")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def api_for_cli(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """A fake API the CLI's client talks to (``TASKPLATFORM_API_URL`` and its transport)."""
    from taskplatform.client import TaskPlatformClient

    fake = FakeApi()
    monkeypatch.setenv("TASKPLATFORM_API_URL", BASE)
    real = TaskPlatformClient.from_settings

    def with_fake_transport(settings: Any, **kwargs: Any) -> TaskPlatformClient:
        return real(settings, transport=fake.transport, **kwargs)

    monkeypatch.setattr(TaskPlatformClient, "from_settings", staticmethod(with_fake_transport))
    return fake


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
