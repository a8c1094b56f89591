"""Every README command runs as written: ``scripts/readme-check`` against the main job.

The checker itself (scripts/readme_check.py) is tested here too: which blocks it runs, how it
reads its directives, that it refuses placeholders and finds 5xx answers in the access log.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.services import require_rabbitmq

ROOT = Path(__file__).resolve().parents[2]


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_check", ROOT / "scripts/readme_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_blocks_are_read_with_their_directives_and_placeholders_are_found() -> None:
    check = _checker()
    text = (
        "intro\n<!-- readme-check: skip needs a Docker engine -->\n```sh\ndocker ps\n```\n"
        "```sh\ncurl -s localhost:8000/api/v1/tasks/<task_id>\n```\n"
        "<!-- readme-check: no-server -->\n```sh\ntaskplatform api &\n```\n```python\nprint(1)\n```\n"
        "```\nplain text, no language: not a block to run\n```\n"
    )
    blocks = check.blocks(text)
    assert [(b.language, b.directive, b.reason) for b in blocks] == [
        ("sh", "skip", "needs a Docker engine"),
        ("sh", "", ""),
        ("sh", "no-server", ""),
        ("python", "", ""),
    ]
    assert blocks[1].line == 6 and check.PLACEHOLDER.findall(blocks[1].text) == ["<task_id>"]
    assert not check.PLACEHOLDER.findall("curl -s $API/api/v1/tasks/$TASK | grep -i '^HTTP'")


def test_a_5xx_in_the_access_log_is_found_but_not_the_readiness_wait(tmp_path: Path) -> None:
    check = _checker()
    log = tmp_path / "main-job-0.log"
    line = '{"logger":"taskplatform.access","route":"%s","status":%d}'
    log.write_text(
        "\n".join([line % ("/readyz", 503), line % ("/api/v1/tasks", 201), line % ("/api/v1/tasks", 500)])
    )
    runner = check.Runner(tmp_path, {})
    runner.logs.append(log)
    assert runner.server_errors() == [line % ("/api/v1/tasks", 500)]


def test_a_failing_command_fails_the_check_naming_its_line(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    runner.pending.append(check.Block(12, "sh", "true\nfalse\n"))
    with pytest.raises(SystemExit, match="README lines 12 failed"):
        runner.flush()


def test_variables_and_functions_reach_the_blocks_after_a_new_shell(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    runner.pending.append(check.Block(1, "sh", "greet() { echo hello-$1; }\nNAME=readme\n"))
    runner.flush()
    runner.pending.append(check.Block(9, "sh", 'test "$(greet $NAME)" = hello-readme\n'))
    runner.flush()  # raises if the second shell lacks either
    assert runner.ran == 2


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_readme_command_runs_as_written() -> None:
    require_rabbitmq()
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.fail("port 8000 is taken: the README's commands talk to localhost:8000")
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "scripts/readme_check.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "readme-check: ok:" in result.stdout


def test_a_main_job_that_exits_fails_the_check_with_its_log(tmp_path: Path) -> None:
    check = _checker()
    log = tmp_path / "main-job.log"
    log.write_text("error: the store URL is not valid\n")
    process = subprocess.Popen(["/bin/sh", "-c", "exit 3"])  # noqa: S603
    process.wait()
    with pytest.raises(SystemExit, match=r"exited with 3:\nerror: the store URL is not valid"):
        check.wait_ready(process, log, seconds=5)


def test_a_failing_python_block_and_an_unmarked_language_fail_the_check(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    with pytest.raises(SystemExit, match="(?s)python block at README line 4 failed:.*ZeroDivisionError"):
        runner.python(check.Block(4, "python", "1 / 0\n"))
    with pytest.raises(SystemExit, match="line 9 is ```yaml: mark it"):
        runner.run(check.Block(9, "yaml", "a: 1\n"))
    runner.run(check.Block(12, "json", "{}\n", directive="skip", reason="sample output"))
    assert runner.skipped == 1 and runner.ran == 0


def test_a_file_block_is_written_and_the_main_job_block_loads_it(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    text = (
        "<!-- readme-check: file greet.py -->\n```python\nGREETING = 'hello'\n```\n"
        "<!-- readme-check: main-job -->\n"
        "```sh\nPYTHONPATH=. TASKPLATFORM_EXECUTOR_MODULES=greet scripts/run\n```\n"
    )
    file_block, main_block = check.blocks(text)
    assert (file_block.directive, file_block.reason) == ("file", "greet.py")
    runner.run(file_block)
    runner.run(main_block)
    assert (tmp_path / "files/greet.py").read_text() == "GREETING = 'hello'\n"
    assert runner.main_env["PYTHONPATH"] == str(tmp_path / "files")
    assert runner.main_env["TASKPLATFORM_EXECUTOR_MODULES"] == "greet"
    assert runner.server is None and runner.ran == 2


def test_a_file_block_that_does_not_import_fails_the_check_naming_its_line(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    block = check.Block(21, "python", "import no_such_module_anywhere\n", directive="file", reason="greet.py")
    with pytest.raises(
        SystemExit,
        match="(?s)greet.py, the file block at README line 21, does not import.*ModuleNotFoundError",
    ):
        runner.run(block)


def test_a_main_job_that_does_not_load_the_written_file_fails_the_check(tmp_path: Path) -> None:
    check = _checker()
    runner = check.Runner(tmp_path, {"PATH": "/usr/bin:/bin"})
    runner.run(check.Block(3, "python", "X = 1\n", directive="file", reason="greet.py"))
    for command in (
        "TASKPLATFORM_EXECUTOR_MODULES=other scripts/run\n",
        "TASKPLATFORM_EXECUTOR_MODULES=greet scripts/run\n",
    ):
        with pytest.raises(
            SystemExit,
            match="main job at README line 9 does not load greet, the file written at README line 3",
        ):
            runner.run(check.Block(9, "sh", command, directive="main-job"))
    with pytest.raises(SystemExit, match="main-job block at README line 9 is not one"):
        runner.run(check.Block(9, "sh", "scripts/run --reload\n", directive="main-job"))
    with pytest.raises(SystemExit, match="greet.py, written at README line 3, is never loaded"):
        runner.run(check.Block(14, "sh", "curl -s localhost:8000/healthz\n"))  # would start the main job
    assert runner.server is None
    with pytest.raises(SystemExit, match="names 'greet.txt', not a module.py"):
        runner.run(check.Block(12, "python", "X = 1\n", directive="file", reason="greet.txt"))


def test_the_docs_pages_run_after_the_readme_and_the_readme_loads_its_task() -> None:
    check = _checker()
    found = check.all_blocks()
    sources = [b.source for b in found]
    assert sources[0] == "README" and set(sources) == {"README", *check.PAGES}
    readme = [b for b in found if b.source == "README"]
    assert [b.directive for b in readme if b.directive in ("file", "main-job")] == ["file", "main-job"]
    assert all(b.language in ("sh", "python") or b.directive == "skip" for b in found)
