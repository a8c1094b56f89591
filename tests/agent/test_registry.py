"""``run_command`` is served only by a worker whose AGENT_COMMANDS_FILE names an allow-list."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskplatform.agent import RunCommand
from taskplatform.cli import commands as cli
from taskplatform.errors import ConfigError
from taskplatform.runtime import build_registry
from taskplatform.settings import PlatformSettings

GOOD = {"commands": [{"name": "uptime", "argv": ["/usr/bin/uptime"], "timeout_seconds": 600}]}
BAD = {
    "commands": [
        {
            "name": "bad",
            "argv": ["/bin/echo", "{x}"],
            "placeholders": {"x": {"type": "int", "min": 2, "max": 1}},
        }
    ]
}


@pytest.fixture(autouse=True)
def _no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TASKPLATFORM_ variable from the caller's shell; the root logger restored (``main`` sets it)."""
    for name in [n for n in os.environ if n.upper().startswith("TASKPLATFORM_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "commands.json"
    path.write_text(json.dumps(data))
    return path


def test_without_the_setting_the_worker_does_not_serve_run_command() -> None:
    registry = build_registry(PlatformSettings(load_entry_points=False))
    assert "run_command" not in registry
    assert "agent" not in registry.queues()


def test_an_empty_setting_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_AGENT_COMMANDS_FILE", "")
    assert PlatformSettings().agent_commands_file is None


def test_with_the_setting_the_worker_serves_run_command_from_its_own_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_AGENT_COMMANDS_FILE", str(write(tmp_path, GOOD)))
    monkeypatch.setenv("TASKPLATFORM_AGENT_KILL_GRACE_SECONDS", "7")

    registry = build_registry(PlatformSettings(load_entry_points=False))

    cls = registry.get("run_command")
    assert issubclass(cls, RunCommand) and cls is not RunCommand
    assert list(cls.templates) == ["uptime"]
    assert cls.kill_grace_seconds == 7
    assert registry.queues()["agent"] == ["run_command"]
    # The attempt's own time-out must not cut the command's time-out and kill grace short.
    assert cls.timeout is not None and cls.timeout > 600 + 7


def test_a_bad_allow_list_stops_the_registry_with_a_config_error(tmp_path: Path) -> None:
    settings = PlatformSettings(load_entry_points=False, agent_commands_file=write(tmp_path, BAD))
    with pytest.raises(
        ConfigError, match=r"template 'bad' \(commands\[0\]\) placeholders\.x: min \(2\) is above"
    ):
        build_registry(settings)


def test_a_worker_with_a_bad_allow_list_exits_2_naming_the_template_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_EVENT_LOOP", "asyncio")
    monkeypatch.setenv("TASKPLATFORM_STORE_URL", "memory://")
    monkeypatch.setenv("TASKPLATFORM_AGENT_COMMANDS_FILE", str(write(tmp_path, BAD)))

    assert cli.main(["worker"]) == 2

    error = capsys.readouterr().err
    assert "TASKPLATFORM_AGENT_COMMANDS_FILE" in error
    assert "template 'bad' (commands[0]) placeholders.x: min (2) is above max (1)" in error
