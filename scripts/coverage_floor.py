"""Check the branch-coverage floor of the areas that settle work (``scripts/test`` runs it).

Reads the combined coverage data (``COVERAGE_FILE``, default ``.coverage``), prints, per area,
its branches, the covered ones and their share, and exits 1 when an area is below the floor
(``--floor``, percent; 0 prints the figures without enforcing them) or has no measured file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]

#: area → path prefix (relative to the repository) of the files it holds.
AREAS = {
    "worker": "taskplatform/worker/",
    "store": "taskplatform/store/",
    "deadletters": "taskplatform/deadletters/",
    "outbox": "taskplatform/outbox.py",
    "reaper": "taskplatform/reaper.py",
}


def file_summaries(data_file: Path, config: str, root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Per measured file (path relative to ``root``): its JSON report summary."""
    cov = coverage.Coverage(data_file=str(data_file), config_file=config)
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out), ignore_errors=True)
        report = json.loads(out.read_text())
    summaries = {}
    for name, entry in report["files"].items():
        path = Path(name) if Path(name).is_absolute() else Path.cwd() / name
        summaries[os.path.relpath(path.resolve(), root.resolve())] = entry["summary"]
    return summaries


def area_totals(summaries: dict[str, dict[str, int]], areas: dict[str, str]) -> dict[str, tuple[int, int]]:
    """area → (branches, covered branches), summed over the area's files."""
    totals = {}
    for area, prefix in areas.items():
        files = [s for path, s in summaries.items() if path == prefix or path.startswith(prefix)]
        totals[area] = (sum(s["num_branches"] for s in files), sum(s["covered_branches"] for s in files))
    return totals


def least_covered(
    summaries: dict[str, dict[str, int]], areas: dict[str, str], count: int = 5
) -> dict[str, list[str]]:
    """area → its files with the most uncovered branches (``path: missed/total``), worst first."""
    worst = {}
    for area, prefix in areas.items():
        files = [(p, s) for p, s in summaries.items() if (p == prefix or p.startswith(prefix))]
        files = [(p, s) for p, s in files if s["num_branches"] > s["covered_branches"]]
        files.sort(key=lambda item: item[1]["covered_branches"] - item[1]["num_branches"])
        worst[area] = [
            f"{p}: {s['num_branches'] - s['covered_branches']}/{s['num_branches']}" for p, s in files[:count]
        ]
    return worst


def check(totals: dict[str, tuple[int, int]], floor: float) -> list[str]:
    """The lines to print, and the failures (areas below the floor or unmeasured)."""
    failures = []
    print(f"{'area':<12} {'branches':>9} {'covered':>8} {'branch %':>9}   (floor {floor:g} %)")
    for area, (branches, covered) in totals.items():
        share = 100.0 * covered / branches if branches else 0.0
        print(f"{area:<12} {branches:>9} {covered:>8} {share:>8.1f}%")
        if not branches:
            failures.append(f"{area}: no measured branch (no data for its files?)")
        elif floor and share < floor:
            failures.append(
                f"{area}: {share:.1f} % of {branches} branches covered, below the floor of {floor:g} %"
            )
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("COVERAGE_FILE", ROOT / ".coverage"))
    )
    parser.add_argument("--floor", type=float, default=90.0, help="percent of branches; 0: report only")
    parser.add_argument("--config", default=str(ROOT / "pyproject.toml"), help="coverage configuration file")
    parser.add_argument("--root", type=Path, default=ROOT, help="the directory the areas' paths start from")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"coverage-floor: no coverage data at {args.data}", file=sys.stderr)
        return 1
    summaries = file_summaries(args.data, args.config, args.root)
    failures = check(area_totals(summaries, AREAS), args.floor)
    for area, files in least_covered(summaries, AREAS).items():
        if files:
            print(f"{area}: most branches missed in " + ", ".join(files))
    for failure in failures:
        print(f"coverage-floor: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
