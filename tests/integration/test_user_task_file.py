"""A task file written exactly as the README shows it, loaded by ``TASKPLATFORM_EXECUTOR_MODULES``
into a real ``taskplatform dev`` (real RabbitMQ): submitted with curl, it completes with the typed
result. A file whose ``@task`` function is mistyped stops the server, naming the function."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ROOT, delete_topology_now, free_port, platform_env, served_topology, serving
from tests.support.services import RABBITMQ_URL, require_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARKER = "<!-- readme-check: file greet.py -->"


def readme_block(marker: str = MARKER) -> str:
    """The fenced block right after ``marker`` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(marker) + r"\n```python\n(.*?)\n```", text, re.DOTALL)
    assert found, f"README.md has no ```python block right after {marker!r}"
    return found.group(1) + "\n"


def test_the_readme_task_file_is_short() -> None:
    lines = [line for line in readme_block().splitlines() if line.strip()]
    assert len(lines) <= 12, f"the README's task file has {len(lines)} non-blank lines"


def dev_env(tmp: Path, prefix: str) -> dict[str, str]:
    return platform_env(
        PYTHONPATH=str(tmp),
        TASKPLATFORM_EXECUTOR_MODULES="greet",
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=f"sqlite+aiosqlite:///{tmp / 'tasks.db'}",
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_LOG_LEVEL="WARNING",
    )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``taskplatform dev`` with the README's ``greet.py`` on its path, as the README runs it."""
    require_rabbitmq()
    tmp = tmp_path_factory.mktemp("user-task")
    (tmp / "greet.py").write_text(readme_block())
    prefix = f"ut{uuid.uuid4().hex[:8]}."
    try:
        with serving("dev", dev_env(tmp, prefix), tmp / "dev.log", ready_timeout=60) as base:
            yield base
    finally:
        delete_topology_now(served_topology(prefix, test_executables=False))


def curl(*args: str) -> Any:
    binary = shutil.which("curl")
    assert binary, "curl is needed: the README submits with it"
    done = subprocess.run(
        [binary, "-s", "--fail-with-body", *args], capture_output=True, text=True, timeout=30
    )  # noqa: S603
    assert done.returncode == 0, f"curl {args} exited {done.returncode}: {done.stdout} {done.stderr}"
    return json.loads(done.stdout)


def test_a_greet_task_submitted_with_curl_completes_with_the_typed_result(dev: str) -> None:
    body = json.dumps({"task_type": "greet", "parameters": {"name": "Ada"}})
    submitted = curl("-X", "POST", f"{dev}/api/v1/tasks", "-H", "content-type: application/json", "-d", body)
    task_id = submitted["task_id"]

    deadline = time.monotonic() + 60
    task = curl(f"{dev}/api/v1/tasks/{task_id}")
    while task["status"] not in ("COMPLETED", "FAILED", "DEAD_LETTER", "CANCELLED"):
        assert time.monotonic() < deadline, f"task {task_id} still {task['status']} after 60 s"
        time.sleep(0.1)
        task = curl(f"{dev}/api/v1/tasks/{task_id}")

    assert task["status"] == "COMPLETED", task.get("error_info")
    assert task["result"] == {"text": "Hello, Ada!"}


def test_the_greet_type_is_listed_with_its_models_schemas(dev: str) -> None:
    types = {t["task_type"]: t for t in httpx.get(f"{dev}/api/v1/task-types", timeout=10).json()}
    greet = types["greet"]
    assert greet["queue"] == "default"
    assert list(greet["parameters_schema"]["properties"]) == ["name"]
    assert list(greet["result_schema"]["properties"]) == ["text"]


def test_a_mistyped_task_function_stops_the_server_naming_the_function(tmp_path: Path) -> None:
    (tmp_path / "greet.py").write_text(readme_block().replace("params: Greet", "params: dict"))
    argv = [
        sys.executable,
        "-m",
        "taskplatform.cli",
        "dev",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    env = dev_env(tmp_path, f"ut{uuid.uuid4().hex[:8]}.")

    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # noqa: S603

    assert done.returncode != 0
    assert "@task function greet.greet: the parameter 'params' annotation must be a pydantic BaseModel" in (
        done.stdout + done.stderr
    )
