"""Local stack process management: idempotent start, health, stop, and broker-restart bookkeeping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from operations.stack.process import ProcessManager, ServiceSpec
from operations.stack.services import Stack
from tests.conftest import free_port
from vigil.settings import KafkaSettings, Settings


def http_server(port: int) -> ServiceSpec:
    return ServiceSpec(
        "web",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        port,
        health_url=f"http://127.0.0.1:{port}/",
        start_timeout_s=20,
    )


def test_start_is_idempotent_and_stop_ends_the_process(tmp_path: Path) -> None:
    manager = ProcessManager(tmp_path / "run", tmp_path / "logs")
    spec = http_server(free_port())
    first = manager.start(spec)
    try:
        assert first.running and first.healthy and first.pid
        again = manager.start(spec)
        assert again.pid == first.pid, "a running service is left alone"
    finally:
        assert manager.stop("web") is True
    assert not manager.status(spec).running
    assert manager.stop("web") is False


def test_a_failing_service_reports_its_log(tmp_path: Path) -> None:
    manager = ProcessManager(tmp_path / "run", tmp_path / "logs")
    spec = ServiceSpec(
        "broken",
        [sys.executable, "-c", "import sys; print('bad config: port'); sys.exit(3)"],
        free_port(),
        start_timeout_s=10,
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as err:
        manager.start(spec)
    assert "bad config: port" in str(err.value)


def test_a_port_taken_by_someone_else_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    other = ProcessManager(tmp_path / "other-run", tmp_path / "logs")
    other.start(http_server(port))
    try:
        manager = ProcessManager(tmp_path / "run", tmp_path / "logs")
        with pytest.raises(RuntimeError, match=f"port {port} is already in use"):
            manager.start(http_server(port))
    finally:
        other.stop("web")


@pytest.mark.parametrize(("engine", "kept"), [("memory://tansu/", False), ("postgres://localhost/tansu", True)])
def test_checkpoints_follow_the_brokers_storage(tmp_path: Path, engine: str, kept: bool) -> None:
    settings = Settings(data_dir=tmp_path, kafka=KafkaSettings(local_storage_engine=engine))
    marker = settings.checkpoints_dir / "vigil-window-stats" / "abc" / "job" / "chk-1" / "_metadata"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"x")
    Stack(settings)._forget_offsets_of_a_lost_log()
    assert marker.exists() is kept
