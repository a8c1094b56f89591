"""Which series exist from a process's start, how dead messages are counted, and the process,
platform and garbage-collector metrics (in multiprocess mode too)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from taskplatform.deadletters.consumer import is_uncounted_death
from taskplatform.metrics.exposition import MULTIPROC_ENV, ProcessesCollector, render
from taskplatform.metrics.registry import (
    BRIDGE_OUTCOMES,
    DEAD_LETTER_REASONS,
    OTHER_REASON,
    PUBLISH_FAILURE_REASONS,
    UNKNOWN_TASK_TYPE,
    Metrics,
)
from taskplatform.models import BackgroundTask, DeadLetter, TaskStatus
from taskplatform.models.reasons import DeadLetterReason
from taskplatform.store.deadletters import UpsertOutcome

PACKAGE = Path(__file__).resolve().parents[2] / "taskplatform"


def _metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry), registry


def test_every_bounded_label_set_starts_at_zero() -> None:
    metrics, registry = _metrics()
    metrics.prepare(["report", "resize"])
    for task_type in ("report", "resize", UNKNOWN_TASK_TYPE):
        for reason in (*DEAD_LETTER_REASONS, OTHER_REASON):
            labels = {"task_type": task_type, "reason": reason}
            assert registry.get_sample_value("taskplatform_dead_letters_total", labels) == 0, labels
    for reason in PUBLISH_FAILURE_REASONS:
        assert registry.get_sample_value("taskplatform_publish_failures_total", {"reason": reason}) == 0
    for outcome in BRIDGE_OUTCOMES:
        assert registry.get_sample_value("taskplatform_events_bridged_total", {"outcome": outcome}) == 0
    assert registry.get_sample_value("taskplatform_tasks_in_progress", {"task_type": "report"}) == 0
    wait = {"task_type": "report", "le": "+Inf"}
    assert registry.get_sample_value("taskplatform_task_queue_wait_seconds_bucket", wait) == 0
    took = {"task_type": "resize", "status": "DEAD_LETTER"}
    assert registry.get_sample_value("taskplatform_task_duration_seconds_count", took) == 0
    assert registry.get_sample_value("taskplatform_task_retries_total", {"task_type": "resize"}) == 0


def _literals(pattern: str) -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found |= set(re.findall(pattern, path.read_text(encoding="utf-8")))
    return found


def test_every_publish_failure_reason_and_bridge_outcome_the_code_counts_starts_at_zero() -> None:
    reasons = _literals(r'count_failure\(\s*"([^"]+)"')
    assert reasons, "the publisher counts failures by reason"
    assert reasons <= set(PUBLISH_FAILURE_REASONS), reasons - set(PUBLISH_FAILURE_REASONS)
    outcomes = _literals(r'self\._count\(\s*"([^"]+)"')
    assert outcomes, "the bridge counts outcomes"
    assert outcomes <= set(BRIDGE_OUTCOMES), outcomes - set(BRIDGE_OUTCOMES)


def test_every_reason_the_worker_dead_letters_with_is_a_label_of_its_own() -> None:
    """Dead-letter reasons are written as DeadLetterReason members, never as bare strings (a
    string would mint a reason no label was prepared for)."""
    reasons = _literals(r"reject_malformed\(\s*\w+,\s*DeadLetterReason\.(\w+)")
    reasons |= _literals(r"raise MessageDecodeError\(\s*DeadLetterReason\.(\w+)")
    reasons |= _literals(r"reason=DeadLetterReason\.(\w+)")
    assert {"UNKNOWN_TASK_TYPE", "BAD_JSON", "ATTEMPTS_EXHAUSTED"} <= reasons
    assert {DeadLetterReason[name].value for name in reasons} <= DEAD_LETTER_REASONS
    bare = _literals(
        r"(?:reject_malformed\(\s*\w+,|raise MessageDecodeError\(|dead_letter_of_task\([^)]*reason=)"
        r'\s*"([^"]+)"'
    )
    assert not bare, f"dead-letter reasons written as strings: {bare}"


def test_a_dead_message_counts_under_a_known_task_type_or_unknown_and_a_known_reason_or_other() -> None:
    metrics, registry = _metrics()
    metrics.prepare(["report"])
    metrics.count_dead_message("report", "bad-json")
    metrics.count_dead_message("made-up type from a header", "x-foreign reason")
    metrics.count_dead_message(None, None)
    dead = "taskplatform_dead_letters_total"
    assert registry.get_sample_value(dead, {"task_type": "report", "reason": "bad-json"}) == 1
    assert registry.get_sample_value(dead, {"task_type": UNKNOWN_TASK_TYPE, "reason": OTHER_REASON}) == 2
    types = {s.labels["task_type"] for f in registry.collect() for s in f.samples if s.name == dead}
    assert types == {"report", UNKNOWN_TASK_TYPE}  # nothing a message says mints a series


def _record(kind: str) -> DeadLetter:
    return DeadLetter.model_validate({"id": "r", "kind": kind, "task_id": "t", "reason": "bad-json"})


@pytest.mark.parametrize(
    ("kind", "outcome", "task_status", "counted"),
    [
        ("message", UpsertOutcome.CREATED, None, True),  # malformed: no task died with it
        ("message", UpsertOutcome.CREATED, TaskStatus.DEAD_LETTER, True),  # names a dead task all the same
        ("message", UpsertOutcome.REOPENED, None, True),
        ("task", UpsertOutcome.CREATED, None, True),  # a well-formed message naming no stored task
        ("task", UpsertOutcome.CREATED, TaskStatus.COMPLETED, True),  # a stale copy of a finished task
        ("task", UpsertOutcome.CREATED, TaskStatus.DEAD_LETTER, False),  # the task's death was counted
        ("task", UpsertOutcome.REOPENED, TaskStatus.DEAD_LETTER, False),  # died again after a replay
        ("message", UpsertOutcome.DUPLICATE, None, False),  # the same death seen again
        ("task", UpsertOutcome.STALE, TaskStatus.QUEUED, False),
    ],
)
def test_which_stored_dead_letters_the_dlq_consumer_counts(
    kind: str, outcome: UpsertOutcome, task_status: TaskStatus | None, counted: bool
) -> None:
    task = BackgroundTask(task_type="report", status=task_status) if task_status is not None else None
    assert is_uncounted_death(_record(kind), outcome, task) is counted


def test_the_registry_holds_process_platform_and_gc_metrics() -> None:
    metrics, registry = _metrics()
    assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    assert (registry.get_sample_value("process_cpu_seconds_total") or 0) > 0
    assert registry.get_sample_value("python_gc_collections_total", {"generation": "0"}) is not None
    [info] = [f for f in registry.collect() if f.name == "python_info"]
    assert info.samples[0].labels["implementation"] == platform.python_implementation()
    assert {"process_open_fds", "python_gc_objects_collected_total"} <= metrics.exposed_names()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[Path, list[int], int]]:
    """A multiprocess directory with the files of this process, of a live child, and of a process
    that has exited: (directory, live pids, dead pid)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: S603
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    gone.wait()
    live = [os.getpid(), child.pid]
    for name in (f"counter_{live[0]}.db", f"histogram_{live[1]}.db", f"counter_{gone.pid}.db", "notes.txt"):
        if name.endswith(".db"):
            MmapedDict(str(tmp_path / name)).close()  # an empty, well-formed metrics file
        else:
            (tmp_path / name).write_text("not a metrics file")
    try:
        yield tmp_path, sorted(live), gone.pid
    finally:
        child.kill()
        child.wait()


def test_process_metrics_of_every_live_process_in_the_directory_by_pid(
    processes: tuple[Path, list[int], int],
) -> None:
    directory, live, gone = processes
    assert ProcessesCollector(str(directory)).pids() == live
    families = {f.name: f for f in ProcessesCollector(str(directory)).collect()}
    memory = {s.labels["pid"]: s.value for s in families["process_resident_memory_bytes"].samples}
    assert set(memory) == {str(p) for p in live} and all(v > 0 for v in memory.values())
    cpu = families["process_cpu_seconds"]
    assert cpu.type == "counter" and {s.name for s in cpu.samples} == {"process_cpu_seconds_total"}
    assert str(gone) not in {s.labels["pid"] for f in families.values() for s in f.samples}


def test_a_multiprocess_scrape_shows_every_process_but_no_gc_counts(
    processes: tuple[Path, list[int], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, live, _gone = processes
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    body, content_type = render(Metrics())
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    pids = {s.labels["pid"] for s in families["process_resident_memory_bytes"].samples}
    assert pids == {str(p) for p in live}
    assert "python_info" in families
    assert not [name for name in families if name.startswith("python_gc")]  # other processes' are unreadable


def test_a_missing_multiprocess_directory_shows_no_process() -> None:
    assert ProcessesCollector("/nonexistent/taskplatform-metrics").pids() == []
