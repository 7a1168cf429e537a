"""Local stack process management: idempotent start, health, stop, and broker-restart bookkeeping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.service import edge_kafka
from operations.stack.kafka_broker import broker_spec, new_cluster_id, server_properties
from operations.stack.process import ProcessManager, ServiceSpec
from operations.stack.services import Stack
from tests.conftest import free_port
from vigil.settings import EdgeSettings, KafkaSettings, Settings


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


def test_local_broker_is_one_durable_kraft_node_with_transactions_sized_for_the_flink_sinks(tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:29092", local_controller_port=29093, transaction_timeout_ms=1_200_000
    )
    settings = Settings(data_dir=tmp_path, kafka=kafka)
    props = dict(line.split("=", 1) for line in server_properties(settings).splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")  # under the stack's data dir: kept across restarts
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["transaction.max.timeout.ms"]) >= kafka.transaction_timeout_ms
    spec = broker_spec(settings)
    assert spec.port == 29092 and spec.argv[-1].endswith("server.properties")


def test_the_edge_gets_a_listener_of_its_own_advertised_where_it_reaches_it(tmp_path: Path) -> None:
    """Kafka clients connect to the address the broker advertises, not the bootstrap: the edge's listener is
    advertised at the proxy in front of it, or no blackhole of the proxy would cut the edge off."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:29092", local_controller_port=29093, local_edge_port=29095)
    edge = EdgeSettings(kafka_bootstrap_servers="127.0.0.1:29096")
    props = dict(line.split("=", 1) for line in server_properties(Settings(kafka=kafka, edge=edge)).splitlines())
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,EDGE://127.0.0.1:29095,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092,EDGE://127.0.0.1:29096"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,EDGE:PLAINTEXT"
    assert edge_kafka(Settings(kafka=kafka, edge=edge)).bootstrap_servers == "127.0.0.1:29096"
    assert edge_kafka(Settings(kafka=kafka)).bootstrap_servers == "127.0.0.1:29092"


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    """One random id in 64 starts with "-", which kafka-storage's parser reads as an option and fails on."""
    ids = [new_cluster_id() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22} and len(set(ids)) == len(ids)


def test_the_data_dir_is_private_to_its_owner(tmp_path: Path) -> None:
    """Telemetry, passwords, tokens and models live under it: no other local user may enter it."""
    fresh = tmp_path / "fresh"
    Stack(Settings(data_dir=fresh))
    assert fresh.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    Stack(Settings(data_dir=shared))
    assert shared.stat().st_mode & 0o777 == 0o700
