"""``taskplatform dlq replay --all`` against a fake API: the progress it prints while the one bulk
request is open, and the window it counts in."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from taskplatform.cli import dlq as cli_dlq
from taskplatform.cli import main
from tests.support.fake_api import BASE, PREFIX, FakeApi, body, query


def test_dlq_bulk_replay_shows_progress_while_the_server_replays(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the one bulk request is open, the CLI counts the pending records that match and were
    last seen before it started: those gone are replayed. The fake server answers only after
    three such looks."""
    import asyncio

    import httpx

    pending = iter([10, 7, 4, 1])  # the count before, then at each look
    looks: list[httpx.Request] = []
    answered = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            looks.append(request)
            total = next(pending)
            if total == 1:
                answered.set()
            return httpx.Response(200, json={"items": [], "counts": {"total": total}})
        await answered.wait()
        result = {"dry_run": False, "matched": list("abcdefghij"), "replayed": list("abcdefghi")}
        return httpx.Response(200, json={**result, "failed": {"j": "conflict"}, "seconds": 2.5})

    monkeypatch.setenv("TASKPLATFORM_API_URL", BASE)
    monkeypatch.setenv("TASKPLATFORM_EVENT_LOOP", "asyncio")
    monkeypatch.setattr(cli_dlq, "REPLAY_POLL_SECONDS", 0.01)
    monkeypatch.setattr(
        cli_dlq, "open_client", functools.partial(cli_dlq.open_client, transport=httpx.MockTransport(handle))
    )
    assert main(["dlq", "replay", "--all", "--task-type", "summary", "--rate", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "replaying 10 of 10 pending dead letter(s) matching the filters at 4/s",
        "replayed: 3/10",
        "replayed: 6/10",
        "replayed: 9/10",
        "replayed 9, failed 1 of 10 matched in 2.5s",
        "1 of 10 could not be replayed",
    ]
    assert "\x1b" not in captured.err  # not a terminal: plain lines
    assert json.loads(captured.out)["failed"] == {"j": "conflict"}
    assert len({tuple(sorted(query(r).items())) for r in looks}) == 1  # the same question each time
    until = datetime.fromisoformat(query(looks[0])["until"])
    assert query(looks[0]) == {
        "status": "pending",
        "task_type": "summary",
        "limit": "1",
        "until": until.isoformat(),
    }
    assert until.tzinfo is not None and until <= datetime.now(UTC)


def test_dlq_bulk_replay_counts_within_an_earlier_until(
    dlq: Callable[..., int], api: FakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", PREFIX, {"items": [], "counts": {"total": 0}})
    api.on("POST", f"{PREFIX}/replay", {"matched": [], "replayed": [], "failed": {}, "seconds": 0})
    assert dlq("replay", "--all", "--until", "2024-05-01T00:00:00Z") == 0
    count, replay = api.requests
    assert query(count)["until"] == body(replay)["until"] == "2024-05-01T00:00:00+00:00"
