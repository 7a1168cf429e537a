"""Local stack process management: idempotent start, health, stop, and broker-restart bookkeeping."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.service import edge_kafka
from operations.stack import kafka_security
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


def _broker_props(settings: Settings) -> dict[str, str]:
    kafka_security.ensure_passwords(settings)
    return dict(line.split("=", 1) for line in server_properties(settings).splitlines())


def test_local_broker_is_one_durable_kraft_node_with_transactions_sized_for_the_flink_sinks(tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:29092", local_controller_port=29093, transaction_timeout_ms=1_200_000
    )
    settings = Settings(data_dir=tmp_path, kafka=kafka)
    props = _broker_props(settings)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "CLIENT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")  # under the stack's data dir: kept across restarts
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["transaction.max.timeout.ms"]) >= kafka.transaction_timeout_ms
    spec = broker_spec(settings)
    assert spec.port == 29092 and spec.argv[-1].endswith("server.properties")


def test_the_local_broker_authenticates_every_listener_and_denies_what_no_acl_allows(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:29092", local_edge_port=29095)
    )
    props = _broker_props(settings)
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,CLIENT:SASL_SSL,EDGE:SASL_SSL"
    assert (
        props["ssl.enabled.protocols"] == "TLSv1.3" and props["listener.name.controller.ssl.client.auth"] == "required"
    )
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:vigil-admin;User:vigil-broker;User:vigil-kafka"
    broker_password = settings.kafka.password_file("broker").read_text()
    for listener in ("client", "edge"):
        assert f'password="{broker_password}"' in props[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"]
    assert oct(settings.kafka.password_file("edge").stat().st_mode & 0o777) == "0o600"
    # Every component but the super users has ACLs, and none of them reaches everything.
    principals = {b.principal for b in kafka_security.acl_bindings(settings)}
    assert principals == {f"User:vigil-{i}" for i in ("edge", "flink", "sinks", "alerting", "monitor")}
    edge_writes = {
        b.name
        for b in kafka_security.acl_bindings(settings)
        if b.principal == "User:vigil-edge" and b.operation.name == "WRITE"
    }
    assert edge_writes == {settings.kafka.telemetry_topic, settings.kafka.dead_letter_topic}


def test_plaintext_is_a_choice_that_turns_the_authorizer_off_too(tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:29092", security_protocol="PLAINTEXT", sasl_mechanism=None)
    props = _broker_props(Settings(data_dir=tmp_path, kafka=kafka))
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,CLIENT:PLAINTEXT"
    assert "authorizer.class.name" not in props and "ssl.keystore.location" not in props


def test_the_edge_gets_a_listener_of_its_own_advertised_where_it_reaches_it(tmp_path: Path) -> None:
    """Kafka clients connect to the address the broker advertises, not the bootstrap: the edge's listener is
    advertised at the proxy in front of it, or no blackhole of the proxy would cut the edge off."""
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:29092", local_controller_port=29093, local_edge_port=29095)
    edge = EdgeSettings(kafka_bootstrap_servers="127.0.0.1:29096")
    props = _broker_props(Settings(data_dir=tmp_path, kafka=kafka, edge=edge))
    assert props["listeners"] == "CLIENT://127.0.0.1:29092,EDGE://127.0.0.1:29095,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:29092,EDGE://127.0.0.1:29096"
    assert edge_kafka(Settings(kafka=kafka, edge=edge)).bootstrap_servers == "127.0.0.1:29096"
    assert edge_kafka(Settings(kafka=kafka)).bootstrap_servers == "127.0.0.1:29092"
    assert edge_kafka(Settings(kafka=kafka)).identity == "edge"


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
