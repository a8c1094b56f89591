"""Values that would turn an argument into something else are refused (a negative number reads as
an option, an empty or ``..`` text as a path step), and a process group the worker may not signal
does not break the runner's clean-up."""

from __future__ import annotations

import logging
import os
import signal

import pytest
from pydantic import TypeAdapter

from taskplatform.agent import command
from taskplatform.agent.placeholders import IntPlaceholder, PlaceholderValueError, StrPlaceholder


def test_an_int_without_a_min_refuses_negatives_and_one_with_a_min_takes_them() -> None:
    plain = IntPlaceholder(type="int")
    with pytest.raises(PlaceholderValueError, match="must not be negative"):
        plain.check(-1)
    with pytest.raises(PlaceholderValueError, match="must not be negative"):
        plain.check("-1")
    assert plain.check(0) == "0" and plain.check("+7") == "7"
    signed = IntPlaceholder(type="int", min=-5)
    assert signed.check(-1) == "-1"
    with pytest.raises(PlaceholderValueError, match="below the minimum -5"):
        signed.check(-6)


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_a_text_without_a_pattern_refuses_empty_and_path_steps(value: str) -> None:
    with pytest.raises(PlaceholderValueError, match="must not be empty, '.' or '..'"):
        StrPlaceholder(type="str").check(value)


def test_a_pattern_decides_for_itself() -> None:
    dotted = TypeAdapter(StrPlaceholder).validate_python({"type": "str", "pattern": r"\.{0,2}"})
    assert dotted.check("..") == ".." and dotted.check("") == ""
    assert StrPlaceholder(type="str").check("web-1") == "web-1"


def test_a_group_the_worker_may_not_signal_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(pgid: int, signum: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "killpg", refused)
    with caplog.at_level(logging.ERROR, logger="taskplatform.agent.command"):
        command.signal_group(12345, signal.SIGTERM)
    assert "cannot send SIGTERM to command process group 12345" in caplog.text


def test_a_group_already_gone_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(pgid: int, signum: int) -> None:
        raise ProcessLookupError

    monkeypatch.setattr(os, "killpg", gone)
    command.signal_group(12345, signal.SIGKILL)
