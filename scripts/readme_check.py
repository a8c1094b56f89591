"""Run every command of README.md, and of the docs pages it leads to, as written (``scripts/readme-check``).

Each fenced ``sh`` and ``python`` block of README.md and then of each page in ``PAGES`` runs, in
order, against the main job that the README's first command starts (``scripts/run``: API + worker
on the embedded SQLite store, port 8000), here on a store and a topology prefix of its own so a
developer's ``var/`` and queues are left alone. An HTML comment on the line before a block
changes how it runs:

* ``<!-- readme-check: skip REASON -->``: not run, and REASON is printed (the test suite itself,
  Docker commands on a machine without a Docker engine);
* ``<!-- readme-check: no-server -->``: run with the main job stopped (a block that starts its
  own API); background jobs it starts are stopped at its end;
* ``<!-- readme-check: file NAME -->``: the block is a file the reader saves as NAME (``greet.py``):
  it is written to a scratch directory, not run, and must import there;
* ``<!-- readme-check: main-job -->``: the block is the command that starts the main job with
  such files, ``VAR=value ... scripts/run``: the main job is (re)started with those variables,
  ``PYTHONPATH=.`` meaning the scratch directory, and every file written so far must be one of
  the ``TASKPLATFORM_EXECUTOR_MODULES`` it names (so the README and the check cannot disagree);
  python blocks after it run with the same ``PYTHONPATH``;
* ``<!-- readme-check: python -->`` is implied by the fence: a python block runs as a script.

Shell blocks run with ``bash -euo pipefail`` in the repository, and consecutive blocks share
one shell (a variable set in one block is seen by the next). A command that fails, an
unfilled placeholder (``<task_id>``), or any answer of 500 or above in the API's access log
fails the check, naming the block and its README (or page) line. ``--keep`` keeps the commands'
output and the servers' logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The docs pages whose commands run after the README's, in this order, on the same main job.
PAGES = ("docs/walkthrough.md", "docs/dead-letters.md", "docs/authentication.md")
PORT = 8000
#: The gRPC port the main job serves (``taskplatform dev``'s default) and the README's client uses.
GRPC_PORT = 50051
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"<!--\s*readme-check:\s*(\S+)\s*(.*?)\s*-->")
PLACEHOLDER = re.compile(r"<[a-z_]+(?:_id)?>")
ACCESS_5XX = re.compile(r'"status":\s*5\d\d\b')
#: /readyz answers 503 until the main job is ready: the check itself waits on it.
NOT_READY = re.compile(r'"route":\s*"/readyz".*"status":\s*503\b')
MAIN_JOB = re.compile(r"^(?P<assignments>(?:[A-Z_][A-Z0-9_]*=\S*\s+)*)scripts/run\s*(?:#.*)?$")


@dataclass
class Block:
    line: int
    language: str
    text: str
    directive: str = ""
    reason: str = ""
    source: str = "README"

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}"


def blocks(readme: str, source: str = "README") -> list[Block]:
    found: list[Block] = []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match and match.group(1):
            start, language = i, match.group(1)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            block = Block(start + 1, language, "\n".join(lines[start + 1 : end]) + "\n", source=source)
            previous = lines[start - 1] if start else ""
            directive = DIRECTIVE.search(previous)
            if directive:
                block.directive, block.reason = directive.group(1), directive.group(2)
            found.append(block)
            i = end + 1
        else:
            i += 1
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_ready(process: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"readme-check: the main job exited with {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                if b" 200 " in s.recv(64):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"readme-check: the main job was not ready within {seconds:.0f} s:\n{tail(log)}")


def tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_shell(script: str, env: dict[str, str], label: str, log: Path) -> None:
    """Run ``script`` with bash; its output (and that of servers it starts) goes to ``log``."""
    print(f"readme-check: running {label}", flush=True)
    # The functions and variables a block defines are kept for the blocks after it (a python
    # block in between means a new shell): saved to STATE on exit, sourced at the start.
    state = log.parent / "shell-state.sh"
    wrapped = (
        f"touch {state}; source {state}\n"
        "__before=\" $(compgen -v | tr '\\n' ' ') \"\n"
        '__save() { { declare -f; for v in $(compgen -v); do case "$__before" in *" $v "*) ;; '
        f'*) declare -p "$v" 2>/dev/null;; esac; done; }} >{state}.new && mv {state}.new {state}; }}\n'
        "trap '__save; jobs -p | xargs -r kill 2>/dev/null; wait 2>/dev/null || true' EXIT\n"
        "set -euo pipefail\n" + script
    )
    with log.open("ab") as out:
        result = subprocess.run(  # noqa: S603
            ["/bin/bash", "-c", wrapped], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        raise SystemExit(f"readme-check: {label} failed (exit {result.returncode}):\n{tail(log)}")


class Runner:
    """Runs the blocks in order, starting and stopping the main job as they need."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.main_env = dict(env)
        self.files = work / "files"
        self.written: dict[str, Block] = {}
        self.logs: list[Path] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.pending: list[Block] = []
        self.ran = self.skipped = 0

    def log(self, name: str) -> Path:
        path = self.work / name
        self.logs.append(path)
        return path

    def start_server(self) -> None:
        for module in self.unloaded(self.main_env):
            raise SystemExit(
                f"readme-check: {module}.py, written at {self.written[module].where}, is never loaded: "
                "a main-job block (PYTHONPATH=. TASKPLATFORM_EXECUTOR_MODULES=... scripts/run) must follow it"
            )
        log = self.log(f"main-job-{len(self.logs)}.log")
        with log.open("wb") as out:
            self.server = subprocess.Popen(  # noqa: S603
                [str(ROOT / "scripts/run")],
                cwd=ROOT,
                env=self.main_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_ready(self.server, log)

    def stop_server(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None

    def flush(self) -> None:
        """Run the shell blocks gathered so far, in one shell."""
        if self.pending:
            script = "".join(f"echo '== {b.where}'\n{b.text}" for b in self.pending)
            label = f"{self.pending[0].source} lines " + ", ".join(str(b.line) for b in self.pending)
            run_shell(script, self.env, label, self.log(f"blocks-{len(self.logs)}.log"))
            self.ran += len(self.pending)
            self.pending.clear()

    def python(self, block: Block) -> None:
        script = self.work / f"block-{len(self.logs)}.py"
        script.write_text(block.text)
        print(f"readme-check: running {block.where} (python)", flush=True)
        log = self.log(f"block-{len(self.logs)}.log")
        with log.open("wb") as out:
            result = subprocess.run(  # noqa: S603
                [str(ROOT / ".venv/bin/python"), str(script)],
                cwd=ROOT,
                env={**self.env, **_pythonpath(self.main_env)},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise SystemExit(f"readme-check: the python block at {block.where} failed:\n{tail(log)}")

    def file(self, block: Block) -> None:
        """Save the block as the file it names, in the scratch directory; it must import there."""
        name = block.reason
        if not re.fullmatch(r"[a-z_][a-z0-9_]*\.py", name):
            raise SystemExit(f"readme-check: the file block at {block.where} names {name!r}, not a module.py")
        self.files.mkdir(exist_ok=True)
        (self.files / name).write_text(block.text)
        self.written[name.removesuffix(".py")] = block
        print(f"readme-check: wrote {name} from {block.where}", flush=True)
        log = self.log(f"file-{len(self.logs)}.log")
        with log.open("wb") as out:
            result = subprocess.run(  # noqa: S603
                [str(ROOT / ".venv/bin/python"), "-c", f"import {name.removesuffix('.py')}"],
                cwd=self.files,
                env={**self.env, "PYTHONPATH": str(self.files)},
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise SystemExit(
                f"readme-check: {name}, the file block at {block.where}, does not import:\n{tail(log)}"
            )

    def main_job(self, block: Block) -> None:
        """The main job from now on runs as this block says: its variables, ``.`` the scratch directory."""
        lines = [line for line in block.text.splitlines() if line.strip() and not line.startswith("#")]
        match = MAIN_JOB.match(lines[-1]) if len(lines) == 1 else None
        if match is None:
            raise SystemExit(
                f"readme-check: the main-job block at {block.where} is not one `VAR=value scripts/run`"
            )
        assignments = dict(word.split("=", 1) for word in match.group("assignments").split())
        if "PYTHONPATH" in assignments:
            paths = assignments["PYTHONPATH"].split(":")
            assignments["PYTHONPATH"] = ":".join(str(self.files) if p in (".", "$PWD") else p for p in paths)
        for module in self.unloaded(assignments):
            raise SystemExit(
                f"readme-check: the main job at {block.where} does not load {module}, the file written "
                f"at {self.written[module].where} (PYTHONPATH=. and TASKPLATFORM_EXECUTOR_MODULES)"
            )
        self.flush()
        self.stop_server()  # the next block starts it as this one says
        self.main_env = {**self.env, **assignments}
        self.ran += 1

    def unloaded(self, env: dict[str, str]) -> list[str]:
        """The written files a main job with ``env`` would not load."""
        loaded = [m.strip() for m in env.get("TASKPLATFORM_EXECUTOR_MODULES", "").split(",")]
        on_path = str(self.files) in env.get("PYTHONPATH", "").split(":")
        return [module for module in self.written if module not in loaded or not on_path]

    def run(self, block: Block) -> None:
        if self.pending and self.pending[-1].source != block.source:
            self.flush()
        if block.directive == "skip":
            print(f"readme-check: skipped the block at {block.where}: {block.reason}")
            self.skipped += 1
            return
        if block.directive == "file":
            self.file(block)
            self.ran += 1
            return
        if block.directive == "main-job":
            self.main_job(block)
            return
        if block.language not in ("sh", "python"):
            raise SystemExit(f"readme-check: the block at {block.where} is ```{block.language}: mark it")
        if block.directive == "no-server":
            self.flush()
            self.stop_server()
            run_shell(block.text, self.env, block.where, self.log(f"block-{len(self.logs)}.log"))
            self.ran += 1
            return
        if self.server is None:
            self.start_server()
        if block.language == "python":
            self.flush()
            self.python(block)
            self.ran += 1
        else:
            self.pending.append(block)

    def server_errors(self) -> list[str]:
        return [
            line
            for log in self.logs
            if log.exists()
            for line in log.read_text(errors="replace").splitlines()
            if "taskplatform.access" in line and ACCESS_5XX.search(line) and not NOT_READY.search(line)
        ]


def _pythonpath(env: dict[str, str]) -> dict[str, str]:
    return {"PYTHONPATH": env["PYTHONPATH"]} if "PYTHONPATH" in env else {}


def all_blocks() -> list[Block]:
    """The README's blocks, then each page's."""
    found = blocks((ROOT / "README.md").read_text())
    for page in PAGES:
        found += blocks((ROOT / page).read_text(), source=page)
    return found


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="readme-check-"))
    prefix = f"rc{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "TASKPLATFORM_STORE_URL": f"sqlite+aiosqlite:///{work / 'tasks.db'}",
        "TASKPLATFORM_TOPOLOGY_PREFIX": prefix,
        "TASKPLATFORM_LOG_JSON": "true",
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "3",
    }
    for name in ("TASKPLATFORM_AUTH", "TASKPLATFORM_JWT_SECRET", "TASKPLATFORM_TOKEN"):
        env.pop(name, None)
    todo = all_blocks()
    unfilled = [(b.where, m) for b in todo if b.directive != "skip" for m in PLACEHOLDER.findall(b.text)]
    if unfilled:
        raise SystemExit(f"readme-check: placeholders in blocks that run: {unfilled}")
    for port in (PORT, GRPC_PORT):
        if not port_free(port):
            raise SystemExit(f"readme-check: port {port} is taken; the README's commands use it")
    runner = Runner(work, env)
    try:
        for block in todo:
            runner.run(block)
        runner.flush()
    finally:
        runner.stop_server()
        subprocess.run(  # noqa: S603
            [str(ROOT / ".venv/bin/python"), "-c", _DELETE_TOPOLOGY, prefix],
            cwd=ROOT,
            env=runner.main_env,
            check=False,
            timeout=60,
        )
    errors = runner.server_errors()
    if errors:
        raise SystemExit("readme-check: the API answered 5xx:\n" + "\n".join(errors[:20]))
    print(f"readme-check: ok: {runner.ran} blocks ran, {runner.skipped} skipped; no 5xx in the access log")
    if "--keep" in sys.argv:
        print(f"readme-check: the commands' output and the servers' logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


_DELETE_TOPOLOGY = """
import asyncio, sys
import aio_pika
from taskplatform.tasks.registry import DEMO_MODULE, ExecutableRegistry
from taskplatform.settings import PlatformSettings
from topology import build_topology

async def main(prefix):
    settings = PlatformSettings()
    registry = ExecutableRegistry.discover([*settings.executor_modules, DEMO_MODULE])
    topology = build_topology(registry.queues(), prefix=prefix)
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    channel = await connection.channel()
    for queue in topology.queues:
        await channel.queue_delete(queue.name)
    for exchange in topology.exchanges:
        await channel.exchange_delete(exchange.name)
    await connection.close()

asyncio.run(main(sys.argv[1]))
"""

if __name__ == "__main__":
    sys.exit(main())
