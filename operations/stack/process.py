"""Detached child processes tracked by pid files, so `vigil stack` commands are idempotent.

A process started by `vigil stack up` outlives the command; its pid, argv and port are kept in
``<data_dir>/run/<name>.json`` and its output in ``<data_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one local server and how to tell that it is healthy."""

    name: str
    argv: list[str]
    port: int
    health_url: str | None = None  # HTTP GET answering 2xx when ready; else a TCP connect is tried
    ready: Callable[[], bool] | None = None  # a stricter readiness check, tried after the health URL
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 60.0
    description: str = ""
    prepare: Callable[[], None] | None = None  # e.g. render config files before start


@dataclass
class ServiceStatus:
    name: str
    port: int
    pid: int | None
    running: bool
    healthy: bool
    description: str
    detail: str = ""


PORT_RELEASE_WAIT_S = 10.0
# Set in a process's environment by PyFlink once it has run a Python UDF in loopback mode (in-process
# worker): a child inheriting them believes it is a UDF worker and refuses to start its own job
# ("launching the PythonGatewayServer during Python UDF execution").
PYFLINK_WORKER_VARIABLES = (
    "PYFLINK_GATEWAY_DISABLED",
    "PYTHON_LOOPBACK_SERVER_ADDRESS",
    "_PYFLINK_CONN_INFO_PATH",
    "_PYTHON_WORKER_MEMORY_LIMIT",
    "BOOT_LOG_DIR",
    "SEMI_PERSISTENT_DIRECTORY",
)


def inherited_environment() -> dict[str, str]:
    """This process's environment for a service, minus the state of PyFlink UDF workers run in it."""
    return {k: v for k, v in os.environ.items() if k not in PYFLINK_WORKER_VARIABLES}


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def is_healthy(spec: ServiceSpec) -> bool:
    if spec.port == 0 and not spec.health_url:
        return True  # a worker without a port: alive is healthy (the pid file is checked by the caller)
    if spec.health_url:
        try:
            if not requests.get(spec.health_url, timeout=1.0).ok:
                return False
        except requests.RequestException:
            return False
        return spec.ready() if spec.ready else True
    return port_open(spec.port) and (spec.ready() if spec.ready else True)


class ProcessManager:
    """Starts, stops and inspects the services of one data directory."""

    def __init__(self, run_dir: Path, logs_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs_dir = logs_dir

    def _state_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        path = self._state_path(name)
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        pid = int(state["pid"])
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > state["started_at"] + 5:
                return None  # a different process reused the pid
        except psutil.NoSuchProcess:
            return None
        return pid

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        pid = self.pid(spec.name)
        healthy = is_healthy(spec) and (pid is not None or spec.port != 0)
        detail = ""
        if pid is None and healthy:
            detail = "port answered by a process this stack did not start"
        return ServiceStatus(spec.name, spec.port, pid, pid is not None, healthy, spec.description, detail)

    def start(self, spec: ServiceSpec) -> ServiceStatus:
        """Start unless already running; wait until healthy. Raises with the log tail on failure."""
        if self.pid(spec.name) is not None:
            self.wait_healthy(spec)
            return self.status(spec)
        # A process that just died (a crash, SIGKILL) can hold its port for a moment while the kernel tears
        # it down (a large JVM takes a few hundred ms): give it a few seconds before calling it foreign.
        deadline = time.monotonic() + PORT_RELEASE_WAIT_S
        while port_open(spec.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_open(spec.port):
            raise RuntimeError(
                f"{spec.name}: port {spec.port} is already in use by another program. Stop it, or choose "
                f"another port in vigil.toml / VIGIL_* variables (see `vigil stack status`)."
            )
        if spec.prepare:
            spec.prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path(spec.name).open("ab")
        env = inherited_environment() | spec.env
        proc = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,
        )
        log.close()
        started = psutil.Process(proc.pid).create_time()
        self._state_path(spec.name).write_text(
            json.dumps({"pid": proc.pid, "argv": spec.argv, "port": spec.port, "started_at": started})
        )
        self.wait_healthy(spec, proc)
        return self.status(spec)

    def wait_healthy(self, spec: ServiceSpec, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + spec.start_timeout_s
        if spec.port == 0 and proc is not None:
            time.sleep(1.0)  # give a port-less worker a moment to fail on bad configuration
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            if is_healthy(spec):
                return
            time.sleep(0.1)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{spec.name} exited with code {proc.returncode} while starting.\n"
                f"Last lines of {self.log_path(spec.name)}:\n{self.tail(spec.name)}"
            )
        raise RuntimeError(
            f"{spec.name} did not become healthy on port {spec.port} within {spec.start_timeout_s:.0f}s.\n"
            f"Last lines of {self.log_path(spec.name)}:\n{self.tail(spec.name)}"
        )

    def stop(self, name: str, timeout: float = 15.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``. True if it was running."""
        pid = self.pid(name)
        self._state_path(name).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
        return True

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_path(name)
        if not path.is_file():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
