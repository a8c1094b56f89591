"""A RabbitMQ node of the suite's own, for the tests that stop their broker or close its connections.

The node runs beside any other on the machine, as the same OS user: its own node name, AMQP and
distribution ports (free ones), and its data, logs, config and Erlang cookie under a temporary
directory. Only epmd is shared. ``stop`` halts it and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

#: Where Debian/Ubuntu packages keep the real scripts (``/usr/sbin/rabbitmq-server`` is a wrapper
#: that switches to the ``rabbitmq`` user and to the system node's settings).
PACKAGE_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
#: rabbitmq-env reads these from the system's config unless they are set: every one is set here.
_SYSTEM_ENV = ("RABBITMQ_", "NODENAME", "NODE_PORT", "CONFIG_FILE", "ERL_EPMD_ADDRESS")


class RabbitNodeError(RuntimeError):
    """The node could not be started (or found): the message says why."""


def find_scripts(server: str | None = None) -> Path:
    """The directory holding the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts.

    ``server`` (``TASKPLATFORM_TEST_RABBITMQ_SERVER``) names the ``rabbitmq-server`` to use; else
    the one on PATH, resolved through Debian's wrapper; else the package's directory.
    """
    candidates: list[Path] = []
    if server:
        candidates.append(Path(server))
    elif found := shutil.which("rabbitmq-server"):
        candidates.append(Path(found).resolve())  # the wrapper's link points into the package's bin
    candidates.append(PACKAGE_SCRIPTS / "rabbitmq-server")
    for candidate in candidates:
        scripts = candidate.parent
        if (scripts / "rabbitmq-server").is_file() and (scripts / "rabbitmqctl").is_file():
            return scripts
    raise RabbitNodeError(
        "rabbitmq-server is not installed here (not on PATH, nor in /usr/lib/rabbitmq/bin); "
        "set TASKPLATFORM_TEST_RABBITMQ_SERVER to its path"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitNode:
    """One RabbitMQ node started (and stopped) by the test suite."""

    def __init__(self, scripts: Path, *, prefix: str = "tpsuite") -> None:
        self.scripts = scripts
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"{prefix}-rabbitmq-"))
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds from launch until the node accepted AMQP (set by ``start``).
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbitmq.pid"

    def env(self) -> dict[str, str]:
        """The environment of the node and of every rabbitmqctl call aimed at it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SYSTEM_ENV)}
        env.update(
            HOME=str(self.base / "home"),  # the Erlang cookie of this node and its rabbitmqctl
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout: float = 180.0) -> None:
        """Launch the node and wait until it accepts AMQP connections; RabbitNodeError if it
        does not within ``timeout`` seconds (the node is stopped then)."""
        (self.base / "home").mkdir()
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not the system node's NODENAME & co.
        (self.base / "enabled_plugins").write_text("[].\n")
        started = time.monotonic()
        with (self.base / "server.out").open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                [str(self.scripts / "rabbitmq-server")],
                env=self.env(),
                cwd=self.base,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() signals this node only
            )
        try:
            self.ctl("wait", "--timeout", str(int(timeout)), str(self.pid_file), timeout=timeout + 10)
            self._wait_for_amqp(started + timeout)
        except (RabbitNodeError, subprocess.TimeoutExpired) as exc:
            log = self.log_tail()
            self.stop()
            raise RabbitNodeError(f"RabbitMQ node {self.name} did not start: {exc}\n{log}") from exc
        self.startup_seconds = time.monotonic() - started

    def _wait_for_amqp(self, deadline: float) -> None:
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.amqp_port), 1):
                return
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"nothing listens on 127.0.0.1:{self.amqp_port}")
            time.sleep(0.1)

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``rabbitmqctl -n <this node> args``; RabbitNodeError with its output if it fails."""
        done = subprocess.run(  # noqa: S603
            [str(self.scripts / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            cwd=self.base,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        output = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {output[-1000:]}"
            )
        return output

    async def actl(self, *args: str, timeout: float = 120.0) -> str:
        """``ctl`` without blocking the event loop."""
        return await asyncio.to_thread(self.ctl, *args, timeout=timeout)

    def log_tail(self, limit: int = 3000) -> str:
        logs = sorted((self.base / "log").glob("*.log")) + [self.base / "server.out"]
        text = "".join(p.read_text(errors="replace") for p in logs if p.is_file())
        return text[-limit:]

    def stop(self) -> None:
        """Halt the node (gracefully, else by signal to the process group started here) and
        remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(RabbitNodeError, subprocess.TimeoutExpired):
                self.ctl("stop", str(self.pid_file), timeout=60)
                process.wait(timeout=30)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if process.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
