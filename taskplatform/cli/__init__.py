"""The ``taskplatform`` command (``taskplatform --help``); one module per command group."""

from taskplatform.cli.commands import main

__all__ = ["main"]
