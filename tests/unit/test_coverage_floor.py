"""scripts/coverage_floor.py: per-area branch coverage from a coverage data file, and its floor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from coverage import CoverageData

ROOT = Path(__file__).resolve().parents[2]

SOURCE = "def f(x):\n    if x:\n        return 1\n    return 2\n\n\nf(1)\n"
#: What running SOURCE records: f(1) takes the ``if`` one way, never the other.
HALF = {(-1, 1), (-1, 2), (1, 7), (2, 3), (3, -1), (7, -1)}


def _floor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coverage_floor", ROOT / "scripts/coverage_floor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fabricate(tmp_path: Path, arcs: set[tuple[int, int]]) -> tuple[Path, Path]:
    """A tree with one worker module, a branch-coverage data file for it, and a configuration."""
    module = tmp_path / "taskplatform/worker/mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(SOURCE)
    data = CoverageData(str(tmp_path / ".coverage"))
    data.add_arcs({str(module): arcs})
    data.write()
    config = tmp_path / "coveragerc"
    config.write_text("[run]\nbranch = true\n")
    return tmp_path / ".coverage", config


def test_an_area_below_the_floor_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    floor = _floor()
    data, config = _fabricate(tmp_path, HALF)
    monkeypatch.setattr(floor, "AREAS", {"worker": "taskplatform/worker/"})
    argv = ["--data", str(data), "--config", str(config), "--root", str(tmp_path)]
    assert floor.main([*argv, "--floor", "90"]) == 1
    out = capsys.readouterr()
    assert "worker: 50.0 % of 2 branches covered, below the floor of 90 %" in out.err
    assert "worker: most branches missed in taskplatform/worker/mod.py: 1/2" in out.out
    assert floor.main([*argv, "--floor", "50"]) == 0
    assert floor.main([*argv, "--floor", "0"]) == 0  # report only


def test_every_branch_taken_passes_and_an_unmeasured_area_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    floor = _floor()
    data, config = _fabricate(tmp_path, HALF | {(2, 4), (4, -1)})
    argv = ["--data", str(data), "--config", str(config), "--root", str(tmp_path), "--floor", "90"]
    monkeypatch.setattr(floor, "AREAS", {"worker": "taskplatform/worker/"})
    assert floor.main(argv) == 0
    assert "worker" in capsys.readouterr().out
    areas = {"worker": "taskplatform/worker/", "reaper": "taskplatform/reaper.py"}
    monkeypatch.setattr(floor, "AREAS", areas)
    assert floor.main(argv) == 1
    assert "reaper: no measured branch" in capsys.readouterr().err


def test_missing_data_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _floor().main(["--data", str(tmp_path / "nothing")]) == 1
    assert "no coverage data" in capsys.readouterr().err


def test_the_areas_are_the_ones_the_floor_guards() -> None:
    areas = _floor().AREAS
    assert set(areas) == {"worker", "store", "deadletters", "outbox", "reaper"}
    for prefix in areas.values():
        assert (ROOT / prefix).exists(), prefix
    assert sys.modules.get("coverage_floor") is None
