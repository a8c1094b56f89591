"""The ``taskplatform`` command as an operator runs it: a real process against a real
``taskplatform dev`` (API, worker, DLQ consumer; JWT authentication; its own topology prefix on
the test broker; a SQLite store of its own).

``submit --wait`` prints the id at once, then progress (plain lines in a pipe, one redrawn line
on a terminal), and gives up on ``--timeout`` with exit 124; ``dlq replay --all`` counts its
progress on real dead letters; ``topology verify`` names the vhost it checked; a usual failure
is one line on stderr with its documented exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from taskplatform.cli.output import EXIT_CODE_MEANINGS, ExitCode
from taskplatform.models.reasons import DeadLetterReason
from tests.api.tokens import SECRET, token
from tests.support.server import ROOT, delete_topology_now, free_port, platform_env, served_topology, serving
from tests.support.services import RABBITMQ_URL, require_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _command() -> list[str]:
    """The installed ``taskplatform`` script beside this interpreter, else ``python -m``."""
    script = shutil.which("taskplatform", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "taskplatform.cli"]


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return "/" if path in ("", "/") else unquote(path[1:])


@dataclass
class Platform:
    base_url: str
    prefix: str
    log: Path

    def env(self, token_: str | None = None, **extra: str) -> dict[str, str]:
        """A clean environment for the CLI: the API's URL and ``token_`` (an operator's by default)."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TASKPLATFORM_")}
        env.update(TASKPLATFORM_API_URL=self.base_url, PYTHONPATH=str(ROOT))  # tests.support.executables
        env["TASKPLATFORM_TOKEN"] = token("cli-operator", "operator") if token_ is None else token_
        env.update(extra)
        return env

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
        done = subprocess.run(  # noqa: S603
            [*_command(), *argv],
            cwd=ROOT,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token('cli-operator', 'operator')}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def one_error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: ") and "Traceback" not in self.err, self.err
        return lines[0]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    require_rabbitmq()
    tmp = tmp_path_factory.mktemp("cli")
    prefix = f"cli{uuid.uuid4().hex[:8]}."
    env = platform_env(
        TASKPLATFORM_AUTH="jwt",
        TASKPLATFORM_JWT_SECRET=SECRET,
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=f"sqlite+aiosqlite:///{tmp / 'tasks.db'}",
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_EXECUTOR_MODULES='["tests.support.executables"]',
        TASKPLATFORM_PROGRESS_INTERVAL_SECONDS="0.05",
        TASKPLATFORM_LOG_LEVEL="ERROR",
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="2",
    )
    log = tmp / "server.log"
    try:
        with serving("dev", env, log) as base:
            yield Platform(base, prefix, log)
    finally:
        delete_topology_now(served_topology(prefix))


def _wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    """Poll ``check()`` until it returns something truthy (``what`` names it on failure)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)
    return found


# ---------------------------------------------------------------- help
def test_the_help_lists_every_exit_code_and_the_real_reasons(platform: Platform) -> None:
    top = platform.run("--help")
    assert top.code == 0 and top.err == ""
    words = " ".join(top.out.split())
    for code in ExitCode:
        assert f" {int(code)} {' '.join(EXIT_CODE_MEANINGS[code].split())}" in words
    replay = platform.run("dlq", "replay", "--help")
    assert replay.code == 0
    words = " ".join(replay.out.split())
    for reason in DeadLetterReason:
        assert reason.value in words
    assert not re.search(r"(?<![\w-])(expired|maxlen)\b", words) and "exit codes:" in words


# ---------------------------------------------------------------- submit --wait
def test_submit_wait_prints_the_id_first_then_progress_then_the_task(platform: Platform) -> None:
    params = json.dumps({"updates": 20, "pause": 0.1})
    run = platform.run("submit", "test_chatty", "--params", params, "--wait", "--timeout", "120")
    assert run.code == 0, run.err
    lines = run.err.splitlines()
    first = re.fullmatch(rf"submitted task ({UUID}) \(test_chatty\); waiting up to 120s", lines[0])
    assert first, lines
    task_id = first.group(1)
    running = [line for line in lines if line.startswith(f"task {task_id}: RUNNING ")]
    assert running, lines  # the status and percent as the worker reports them
    percents = [int(re.search(r"RUNNING (\d+)%", line).group(1)) for line in running]  # type: ignore[union-attr]
    assert percents == sorted(percents) and all(0 <= p <= 100 for p in percents)
    assert lines[-1].startswith(f"task {task_id}: COMPLETED after ")
    assert "\x1b" not in run.err + run.out  # a pipe, not a terminal: plain lines only
    task = json.loads(run.out)
    assert (task["id"], task["status"], task["result"]) == (task_id, "COMPLETED", {"value": 20})


def test_submit_wait_timing_out_exits_124_in_one_line_and_the_task_goes_on(platform: Platform) -> None:
    run = platform.run("submit", "test_cooperative", "--wait", "--timeout", "1.5")
    assert run.code == ExitCode.TIMED_OUT == 124
    task_id = json.loads(run.out)["id"]  # the task as last seen, for scripts
    lines = run.err.splitlines()
    assert lines[0] == f"submitted task {task_id} (test_cooperative); waiting up to 1.5s"
    assert re.fullmatch(
        rf"error: gave up waiting after 1\.5s: task {task_id} is still (QUEUED|RUNNING); it goes on "
        rf"\(see it: taskplatform status {task_id}; stop it: taskplatform cancel {task_id}\)",
        lines[-1],
    ), lines
    assert "Traceback" not in run.err
    # The commands it names work: the task is still there, and stops when asked.
    assert json.loads(platform.run("status", task_id).out)["status"] in ("QUEUED", "RUNNING")
    cancel = platform.run("cancel", task_id)
    assert cancel.code == 0 and json.loads(cancel.out)["task_id"] == task_id

    def cancelled() -> bool:
        return json.loads(platform.run("status", task_id).out)["status"] == "CANCELLED"

    _wait_for(f"task {task_id} cancelled", cancelled)


def test_changing_a_finished_task_is_one_line_exit_6(platform: Platform) -> None:
    done = platform.run("submit", "test_noop", "--params", '{"value": 7}', "--wait")
    assert done.code == 0, done.err
    task_id = json.loads(done.out)["id"]
    for argv in (("cancel", task_id), ("update", task_id, "--priority", "5")):
        run = platform.run(*argv)
        assert run.code == ExitCode.CONFLICT, run.err
        assert run.one_error_line().startswith("error: HTTP 409 ")


def test_submit_wait_on_a_terminal_redraws_one_status_line(platform: Platform) -> None:
    """stderr on a pseudo-terminal: a live line (control codes, carriage returns); stdout, a
    pipe, stays plain JSON."""
    master, slave = pty.openpty()
    env = platform.env(TERM="xterm-256color", COLUMNS="120")
    params = json.dumps({"updates": 20, "pause": 0.1})
    process = subprocess.Popen(  # noqa: S603
        [*_command(), "submit", "test_chatty", "--params", params, "--wait"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    shown = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process is gone and so is the terminal's other end
                    break
                if not chunk:
                    break
                shown += chunk
            elif process.poll() is not None:
                break
        out = process.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert re.search(rf"submitted task {UUID} \(test_chatty\); waiting up to 60s", text)
    assert "\x1b[" in text and "\r" in text  # redrawn in place
    assert re.search(r"RUNNING.*\d+%", text), text
    assert "COMPLETED after" in text
    assert "\x1b" not in out and json.loads(out)["status"] == "COMPLETED"


# ---------------------------------------------------------------- dlq replay --all
def test_dlq_replay_all_shows_how_many_are_replayed(platform: Platform) -> None:
    with platform.http() as http:
        for n in range(10):
            submitted = http.post(
                "/api/v1/tasks", json={"task_type": "test_boom", "parameters": {"value": n}}
            )
            assert submitted.status_code in (200, 201, 202), submitted.text

        def ten_pending() -> bool:
            page = http.get("/api/v1/dead-letters", params={"task_type": "test_boom", "limit": 1}).json()
            return bool(page["counts"]["total"] == 10)

        _wait_for("10 dead letters of test_boom", ten_pending)
    listed = platform.run("dlq", "list", "--task-type", "test_boom", "--reason", "non-retryable", "--json")
    assert listed.code == 0 and json.loads(listed.out)["counts"]["total"] == 10

    # 10 at 4/s: the last replay starts 2.25 s in, so the CLI (a look a second) sees it midway.
    run = platform.run("dlq", "replay", "--all", "--task-type", "test_boom", "--rate", "4")
    assert run.code == 0, run.err
    lines = run.err.splitlines()
    assert lines[0] == "replaying 10 of 10 pending dead letter(s) matching the filters at 4/s"
    counts = [int(m.group(1)) for line in lines[1:-1] if (m := re.fullmatch(r"replayed: (\d+)/10", line))]
    assert counts and len(counts) == len(lines) - 2, lines
    assert counts == sorted(counts)  # the tasks die again at once: their reopened records do not count back
    assert re.fullmatch(r"replayed 10, failed 0 of 10 matched in [\d.]+s", lines[-1]), lines
    assert "\x1b" not in run.err
    result = json.loads(run.out)
    assert len(result["replayed"]) == 10 and result["failed"] == {}

    audit = json.loads(platform.run("dlq", "audit", "--json", "--limit", "5").out)["items"]
    bulk = next(e for e in audit if e["action"] == "bulk_replay" and not e["dry_run"])
    assert (bulk["actor"], bulk["outcome"], len(bulk["dead_letter_ids"])) == ("cli-operator", "ok", 10)


def test_attempts_lists_each_attempt_as_a_table_or_json(platform: Platform) -> None:
    with platform.http() as http:
        submitted = http.post("/api/v1/tasks", json={"task_type": "test_fails_thrice", "parameters": {}})
        assert submitted.status_code in (201, 202), submitted.text
        task_id = submitted.json()["task_id"]

        def dead() -> bool:
            return bool(http.get(f"/api/v1/tasks/{task_id}").json()["status"] == "DEAD_LETTER")

        _wait_for("the task to die after three attempts", dead)
    shown = platform.run("attempts", task_id)
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].split()[:3] == ["ATTEMPT", "OUTCOME", "NODE"]
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["0.0", "failed"],
        ["0.1", "failed"],
        ["0.2", "failed"],
    ]
    assert all("FlakyError" in line for line in lines[1:4])
    assert lines[-1] == f"task {task_id} is DEAD_LETTER: 3 attempt(s) (generation.attempt)"
    listed = json.loads(platform.run("attempts", task_id, "--json").out)
    assert [(a["attempt"], a["retried"]) for a in listed["attempts"]] == [(0, True), (1, True), (2, False)]
    missing = platform.run("attempts", "no-such-task")
    assert missing.code != 0 and "not found" in missing.err and "Traceback" not in missing.err
    # the audit log names its submission
    audited = json.loads(platform.run("dlq", "audit", "--task-id", task_id, "--json").out)["items"]
    assert [(e["action"], e["task_ids"], e["outcome"]) for e in audited] == [("submit", [task_id], "ok")]
    table = platform.run("dlq", "audit", "--task-id", task_id, "--action", "submit", "--since", "2026-01-01")
    assert table.code == 0 and table.out.splitlines()[0].split()[-3:] == ["TASKS", "DEAD", "LETTERS"]
    assert task_id[:8] in table.out.splitlines()[1]
    bad = platform.run("dlq", "audit", "--since", "yesterday")
    assert bad.code == int(ExitCode.BAD_INPUT) and "--since is not an ISO 8601 date-time" in bad.err


# ---------------------------------------------------------------- topology verify
def test_topology_verify_names_the_vhost_it_checked(platform: Platform) -> None:
    url = urlsplit(RABBITMQ_URL)
    place = f"vhost {_vhost(RABBITMQ_URL)!r} on {url.hostname}:{url.port or 5672}, prefix {platform.prefix!r}"
    env = platform.env(TASKPLATFORM_AMQP_URL=RABBITMQ_URL, TASKPLATFORM_TOPOLOGY_PREFIX=platform.prefix)
    env["TASKPLATFORM_EXECUTOR_MODULES"] = '["tests.support.executables"]'
    run = platform.run("topology", "verify", env=env)
    assert run.code == 0, run.err
    assert re.fullmatch(rf"topology ok on {re.escape(place)}: \d+ exchanges, \d+ queues match\n", run.out)
    assert run.err == ""

    other = f"none{uuid.uuid4().hex[:8]}."  # nothing is declared under this prefix
    env["TASKPLATFORM_TOPOLOGY_PREFIX"] = other
    differs = platform.run("topology", "verify", env=env)
    assert differs.code == ExitCode.FAILED
    other_place = place.replace(repr(platform.prefix), repr(other))
    assert re.search(
        rf"topology on {re.escape(other_place)} differs in \d+ place\(s\); see above", differs.err
    )
    assert differs.out == ""


def test_topology_verify_without_an_amqp_url_says_it_uses_the_default_broker(platform: Platform) -> None:
    if RABBITMQ_URL != DEFAULT_AMQP_URL:
        pytest.skip(f"the default broker {DEFAULT_AMQP_URL} is not the test broker here")
    env = platform.env(TASKPLATFORM_TOPOLOGY_PREFIX=platform.prefix)
    env["TASKPLATFORM_EXECUTOR_MODULES"] = '["tests.support.executables"]'
    run = platform.run("topology", "verify", env=env)
    place = f"vhost '/' on 127.0.0.1:5672, prefix {platform.prefix!r}"
    assert run.err.splitlines() == [
        f"note: TASKPLATFORM_AMQP_URL is not set: using the default broker amqp://guest:***@127.0.0.1:5672/ "
        f"({place})"
    ]
    assert run.code == 0 and run.out.startswith(f"topology ok on {place}: ")


def test_topology_verify_of_a_vhost_that_does_not_exist_is_one_line_exit_3(platform: Platform) -> None:
    missing = urlsplit(RABBITMQ_URL)._replace(path=f"/no-such-vhost-{uuid.uuid4().hex[:6]}").geturl()
    run = platform.run("topology", "verify", env=platform.env(TASKPLATFORM_AMQP_URL=missing))
    assert run.code == ExitCode.UNAVAILABLE
    assert run.one_error_line().startswith("error: cannot connect to RabbitMQ at ")


# ---------------------------------------------------------------- usual failures
@pytest.mark.parametrize(
    ("argv", "who", "code", "start"),
    [
        (("status", "some-task"), "nobody", ExitCode.DENIED, "error: HTTP 401 unauthorized: "),
        (("dlq", "list"), "submitter", ExitCode.DENIED, "error: HTTP 403 forbidden: "),
        (("dlq", "replay", "--all", "--yes"), "submitter", ExitCode.DENIED, "error: HTTP 403 forbidden: "),
        (("status", "no-such-task"), "operator", ExitCode.NOT_FOUND, "error: HTTP 404 not_found: "),
        (("dlq", "show", "no-such-record"), "operator", ExitCode.NOT_FOUND, "error: HTTP 404 not_found: "),
        (("submit", "no_such_type"), "operator", ExitCode.BAD_INPUT, "error: HTTP 422 unknown_task_type: "),
        (
            ("submit", "test_noop", "--params", '{"value": "x"}'),
            "operator",
            ExitCode.BAD_INPUT,
            "error: HTTP 422 invalid_parameters: ",
        ),
        (
            ("submit", "test_noop", "--params", "[]"),
            "operator",
            ExitCode.BAD_INPUT,
            "error: --params must be",
        ),
        (
            ("dlq", "list", "--since", "yesterday"),
            "operator",
            ExitCode.BAD_INPUT,
            "error: --since is not an ISO 8601 date-time",
        ),
    ],
)
def test_a_usual_failure_is_one_line_and_a_documented_exit_code(
    platform: Platform, argv: tuple[str, ...], who: str, code: ExitCode, start: str
) -> None:
    tokens = {"nobody": "", "submitter": token("cli-submitter"), "operator": None}
    run = platform.run(*argv, env=platform.env(tokens[who]))
    assert run.code == code, run.err
    assert run.one_error_line().startswith(start)
    assert run.out == ""


def test_an_unreachable_api_broker_or_store_is_one_line_exit_3(platform: Platform, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    checks = [
        (("status", "x"), {"TASKPLATFORM_API_URL": f"http://{nowhere}"}, "error: cannot reach the API at "),
        (("dlq", "list"), {"TASKPLATFORM_API_URL": f"http://{nowhere}"}, "error: cannot reach the API at "),
        (
            ("topology", "verify"),
            {"TASKPLATFORM_AMQP_URL": f"amqp://guest:guest@{nowhere}/"},
            "error: cannot",
        ),
        (
            ("dlq", "unpark"),
            {"TASKPLATFORM_AMQP_URL": f"amqp://guest:guest@{nowhere}/"},
            "error: cannot reach",
        ),
        (
            ("db", "upgrade"),
            {"TASKPLATFORM_STORE_URL": f"postgresql+asyncpg://u:pw@{nowhere}/db"},
            "error: cannot reach store ",
        ),
    ]
    for argv, extra, start in checks:
        run = platform.run(*argv, env=platform.env(**extra))
        assert run.code == ExitCode.UNAVAILABLE, (argv, run.err)
        assert run.one_error_line().startswith(start), argv
        assert ":pw@" not in run.err


def test_an_api_that_cannot_take_its_port_says_so_and_exits_1(platform: Platform, tmp_path: Path) -> None:
    taken = urlsplit(platform.base_url).port  # the platform's own API listens there
    env = platform.env(
        TASKPLATFORM_AUTH="disabled",
        TASKPLATFORM_STORE_URL=f"sqlite+aiosqlite:///{tmp_path / 'other.db'}",
        TASKPLATFORM_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # none: it would retry
    )
    run = platform.run("api", "--host", "127.0.0.1", "--port", str(taken), env=env)
    assert run.code == ExitCode.FAILED, run.err
    assert (
        run.err.splitlines()[-1]
        == f"error: the API did not start on 127.0.0.1:{taken}; the log above says why"
    )
    assert "address already in use" in run.err and "Traceback" not in run.err


def test_an_api_url_that_is_not_one_is_bad_input(platform: Platform) -> None:
    run = platform.run("status", "x", "--api-url", "localhost:8000")
    assert run.code == ExitCode.BAD_INPUT
    assert run.one_error_line() == (
        "error: the API's URL 'localhost:8000' is not an http:// or https:// URL "
        "(--api-url, TASKPLATFORM_API_URL)"
    )


def test_ctrl_c_while_waiting_exits_130_and_says_the_task_goes_on(platform: Platform) -> None:
    process = subprocess.Popen(  # noqa: S603
        [*_command(), "submit", "test_cooperative", "--wait"],
        cwd=ROOT,
        env=platform.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # printed at once: the id is known before any wait
    task_id = re.fullmatch(rf"submitted task ({UUID}) \(test_cooperative\); waiting up to 60s\n", first)
    assert task_id, first
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED == 130
    assert err.splitlines()[-1] == f"stopped waiting; task {task_id.group(1)} goes on"
    assert "Traceback" not in err and out == ""
    assert platform.run("cancel", task_id.group(1)).code == 0
