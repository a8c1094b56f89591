"""The blocking primitives under ``LocalArtifactStore`` (``local_files``) and its sweep's helpers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from taskplatform.artifacts import local_files
from taskplatform.artifacts.local import _older, _unlink
from tests.artifacts.helpers import HOUR, files_under, make_old


def test_a_closed_range_reader_refuses_to_read() -> None:
    reader = local_files.RangeReader(os.open(os.devnull, os.O_RDONLY))
    assert reader.pread(1, 0) == b""
    reader.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.pread(1, 0)


def test_the_sweeps_helpers_take_a_file_gone_meanwhile_for_nothing(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    assert _older(gone, time.time()) is False
    assert _unlink(gone) is False
    gone.write_bytes(b"")
    make_old(gone)
    assert _older(gone, time.time() - HOUR) is True
    assert _unlink(gone) is True
    assert not gone.exists()


def test_a_new_file_whose_mode_cannot_be_set_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, mode: int) -> None:
        raise PermissionError("fchmod refused")

    monkeypatch.setattr(local_files.os, "fchmod", refuse)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PermissionError, match="fchmod refused"):
        local_files.open_new(tmp_path / "f")
    assert files_under(tmp_path) == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_upload_discarded_before_it_opened_never_creates_its_temp_file(tmp_path: Path) -> None:
    pending = local_files.PendingArtifact(tmp_path / ".tmp")
    pending.discard()  # a cancelled put, while its open still waited for a thread
    with pytest.raises(RuntimeError, match="discarded"):
        pending.open()
    with pytest.raises(RuntimeError, match="discarded"):
        pending.write(b"x")
    assert not (tmp_path / ".tmp").exists()
