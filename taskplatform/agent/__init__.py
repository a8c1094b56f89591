"""The agent: ``run_command``, commands from an allow-list of templates run on the worker's host.

Off unless ``AGENT_COMMANDS_FILE`` names the allow-list: ``templates.py`` reads and checks it,
``command.py`` runs one command (no shell, its own process group), ``executable.py`` is the task.
"""

from __future__ import annotations

import os

from taskplatform.agent.executable import (
    DEFAULT_KILL_GRACE_SECONDS,
    RunCommand,
    RunCommandParams,
    RunCommandResult,
)
from taskplatform.agent.templates import CommandTemplate, CommandTemplates

__all__ = [
    "CommandTemplate",
    "CommandTemplates",
    "RunCommand",
    "RunCommandParams",
    "RunCommandResult",
    "agent_executable",
]


def agent_executable(
    commands_file: str | os.PathLike[str], *, kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
) -> type[RunCommand]:
    """The ``run_command`` executable serving the templates of ``commands_file``; ConfigError
    (naming the template and the field) when the file is not a valid allow-list."""
    return RunCommand.bound(CommandTemplates.load(commands_file), kill_grace_seconds=kill_grace_seconds)
