"""Running Vigil's Flink jobs: in-process (PyFlink local mode) or on a standalone cluster.

The standalone cluster is pyflink's bundled ``start-cluster.sh`` with a configuration rendered
from ``flink-conf/cluster/config.yaml.template``; jobs go to it with ``flink run --python``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyflink
import requests
import yaml

from jobs.registry import FLINK_JOBS
from operations.stack.process import inherited_environment
from operations.stack.services import Stack
from vigil.settings import PROJECT_ROOT, Settings

TEMPLATE = PROJECT_ROOT / "flink-conf" / "cluster" / "config.yaml.template"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flink_home() -> Path:

    return Path(pyflink.__file__).parent


def conf_dir(settings: Settings) -> Path:
    return settings.data_dir / "flink" / "conf"


def _bundled_java_opts() -> str:
    bundled = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text())
    return bundled["env"]["java"]["opts"]["all"]


def render_cluster_conf(settings: Settings) -> Path:
    target = conf_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    text = TEMPLATE.read_text().format(
        jobmanager_rpc_port=settings.flink.rpc_port,
        rest_port=settings.flink.rest_port,
        parallelism=settings.flink.parallelism,
        checkpoint_interval_ms=settings.flink.checkpoint_interval_ms,
        checkpoints_uri=settings.checkpoints_dir.resolve().as_uri(),
        python=sys.executable,
        java_opts=_bundled_java_opts(),
    )
    (target / "config.yaml").write_text(text)
    # start-cluster.sh starts "localhost" workers directly (no ssh).
    (target / "masters").write_text(f"localhost:{settings.flink.rest_port}\n")
    (target / "workers").write_text("localhost\n")
    log4j = flink_home() / "conf" / "log4j.properties"
    if log4j.is_file():
        (target / "log4j.properties").write_text(log4j.read_text())
    return target


def _cluster_env(settings: Settings) -> dict[str, str]:
    log_dir = settings.logs_dir / "flink"
    log_dir.mkdir(parents=True, exist_ok=True)
    return (
        inherited_environment()
        | settings.to_env()
        | {
            "VIGIL_FLINK__TARGET": "cluster",
            "FLINK_HOME": str(flink_home()),
            "FLINK_CONF_DIR": str(conf_dir(settings)),
            "FLINK_LOG_DIR": str(log_dir),
            # Pid files per data dir, so stop-cluster.sh stops this cluster and no other.
            "FLINK_PID_DIR": str(settings.run_dir / "flink"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
    )


def rest_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.flink.rest_port}"


def _overview(settings: Settings) -> dict | None:
    try:
        return requests.get(f"{rest_url(settings)}/overview", timeout=1).json()
    except (requests.RequestException, ValueError):
        return None


def cluster_running(settings: Settings) -> bool:
    overview = _overview(settings)
    return bool(overview) and overview.get("taskmanagers", 0) > 0


def start_cluster(settings: Settings, timeout_s: float = 90.0) -> str:
    """Start JobManager and TaskManager (idempotent) and wait until a TaskManager registered."""
    if cluster_running(settings):
        return rest_url(settings)
    if _overview(settings) is not None:  # a JobManager without TaskManagers: restart it cleanly
        stop_cluster(settings)
    render_cluster_conf(settings)
    script = flink_home() / "bin" / "start-cluster.sh"
    result = subprocess.run(["bash", str(script)], env=_cluster_env(settings), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"start-cluster.sh failed:\n{result.stdout}\n{result.stderr}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster_running(settings):
            return rest_url(settings)
        time.sleep(0.5)
    raise RuntimeError(
        f"the Flink cluster did not come up within {timeout_s:.0f}s; see the logs in {settings.logs_dir / 'flink'}"
    )


def taskmanager_pids(settings: Settings) -> list[int]:
    """Pids of this cluster's TaskManagers (flink-daemon.sh keeps one pid file per daemon type)."""
    pids: list[int] = []
    for pid_file in (settings.run_dir / "flink").glob("flink-*-taskexecutor.pid"):
        pids += [int(line) for line in pid_file.read_text().split() if line.isdigit()]
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def kill_taskmanagers(settings: Settings) -> list[int]:
    """SIGKILL every TaskManager of the cluster (its tasks and their Python workers die with it)."""
    pids = taskmanager_pids(settings)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def _taskmanager_ids(settings: Settings) -> set[str]:
    try:
        listed = requests.get(f"{rest_url(settings)}/taskmanagers", timeout=2).json()
    except (requests.RequestException, ValueError):
        return set()
    return {tm["id"] for tm in listed.get("taskmanagers", [])}


def start_taskmanager(settings: Settings, timeout_s: float = 90.0) -> None:
    """Start one more TaskManager and wait until the JobManager lists it (a killed one may still be listed
    until its heartbeat times out)."""
    before = _taskmanager_ids(settings)
    script = flink_home() / "bin" / "taskmanager.sh"
    result = subprocess.run(["bash", str(script), "start"], env=_cluster_env(settings), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"taskmanager.sh start failed:\n{result.stdout}\n{result.stderr}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _taskmanager_ids(settings) - before:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no new TaskManager registered within {timeout_s:.0f}s; see {settings.logs_dir / 'flink'}")


def stop_cluster(settings: Settings) -> None:
    script = flink_home() / "bin" / "stop-cluster.sh"
    subprocess.run(["bash", str(script)], env=_cluster_env(settings), capture_output=True, text=True)


def submit(settings: Settings, job: str, target: str = "local", detach: bool = False, resume: bool = True) -> int:
    """Run ``job``; returns the exit code of the runner (0 when a detached submission succeeded)."""
    entry = FLINK_JOBS[job]
    script = PROJECT_ROOT / (entry.module.replace(".", "/") + ".py")
    extra = [] if resume else ["--no-resume"]
    if target == "local":
        if detach:  # the stack's service for this job, started like `vigil demo` starts it
            Stack(settings).up((entry.service,))
            return 0
        if job == "anomaly-scoring":
            # Its own MiniCluster needs its own REST port: the stack's scoring job holds the configured one.
            scoring = settings.scoring.model_copy(update={"rest_port": _free_port()})
            settings = settings.model_copy(update={"scoring": scoring})
        env = inherited_environment() | settings.to_env()
        return subprocess.call([sys.executable, "-m", entry.module, *extra], cwd=PROJECT_ROOT, env=env)
    start_cluster(settings)
    flink = flink_home() / "bin" / "flink"
    cmd = [
        str(flink),
        "run",
        "-m",
        f"127.0.0.1:{settings.flink.rest_port}",
        "--python",
        str(script),
        "-pyexec",
        sys.executable,
        "-pyclientexec",
        sys.executable,
    ]
    if detach:
        cmd.insert(2, "--detached")
    return subprocess.call([*cmd, *extra], env=_cluster_env(settings), cwd=PROJECT_ROOT)
