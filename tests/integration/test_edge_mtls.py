"""Mutual TLS on the edge's gRPC port, against a real edge and Kafka broker: who may send, and as whom."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2_grpc
from edge.service import serve
from edge.tls import tls_files
from operations.certs import LOCAL_GATEWAY, ensure_local_certs, issue
from tests.conftest import edge_channel, free_port
from tests.integration.test_edge_service import consume_until, make_batch, per_test_kafka
from vigil.settings import EdgeSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration

REGISTRY = f"""equipment_id,site,equipment_type,gateway_id
pump-a,site-a,pump,{LOCAL_GATEWAY}
pump-b,site-b,pump,gw-b
pump-u,site-u,pump,
"""


@pytest.fixture
def edge(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[Settings]:
    registry = tmp_path / "registry.csv"
    registry.write_text(REGISTRY)
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(port=free_port(), metrics_port=0, equipment_registry=registry),
    )
    _, shutdown = serve(settings)
    try:
        yield settings
    finally:
        shutdown(0)


def other_ca(tmp_path: Path) -> Settings:
    """A second, unrelated CA with its own edge and gateway certificates."""
    settings = Settings(data_dir=tmp_path / "other", tls_dir=tmp_path / "other-certs")
    ensure_local_certs(settings)
    return settings


def refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        telemetry_pb2_grpc.IngestionStub(channel).Ingest(make_batch("pump-a"), timeout=10)
    channel.close()
    return info.value


def test_clients_without_a_certificate_the_ca_signed_are_refused(edge: Settings, tmp_path: Path) -> None:
    target = f"{edge.edge.host}:{edge.edge.port}"
    assert refused(grpc.insecure_channel(target)).code() == grpc.StatusCode.UNAVAILABLE  # plain text
    ca_only = grpc.ssl_channel_credentials(root_certificates=tls_files(edge).ca.read_bytes())
    assert refused(grpc.secure_channel(target, ca_only)).code() == grpc.StatusCode.UNAVAILABLE  # no certificate
    stranger = tls_files(other_ca(tmp_path))
    foreign = grpc.ssl_channel_credentials(
        tls_files(edge).ca.read_bytes(), stranger.gateway_key.read_bytes(), stranger.gateway_cert.read_bytes()
    )
    assert refused(grpc.secure_channel(target, foreign)).code() == grpc.StatusCode.UNAVAILABLE  # another CA's
    ack = telemetry_pb2_grpc.IngestionStub(edge_channel(edge)).Ingest(make_batch("pump-a"), timeout=30)
    assert ack.accepted_batches == 1  # the local gateway's certificate gets in


def test_a_gateway_refuses_an_edge_its_ca_did_not_sign(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """An impostor edge (its certificate from another CA) gets nothing: the gateway keeps its batch."""
    impostor = other_ca(tmp_path).model_copy(
        update={"kafka": per_test_kafka(kafka_settings), "edge": EdgeSettings(port=free_port(), metrics_port=0)}
    )
    _, shutdown = serve(impostor)
    try:
        ours = Settings(data_dir=tmp_path, edge=impostor.edge)
        with GatewayClient(ours, gateway_id="gw-cautious", fsync=False) as client:
            assert client.send([make_batch("pump-a")]) is None  # not sent: buffered for the real edge
            assert client.buffered_batches() == 1
    finally:
        shutdown(0)


def test_the_registry_decides_the_site_and_which_gateway_may_report(edge: Settings, tmp_path: Path) -> None:
    # The local gateway reports for its own machine, claiming another gateway and site: the edge records the
    # certificate's identity and the registry's site.
    forged = make_batch("pump-a", sequence=1)
    forged.site, forged.gateway_id = "site-b", "gw-b"
    client = telemetry_pb2_grpc.IngestionStub(edge_channel(edge))
    assert client.Ingest(forged, timeout=30).accepted_batches == 1
    # ... and may not report for a machine the registry binds to gw-b.
    with pytest.raises(grpc.RpcError) as info:
        client.Ingest(make_batch("pump-b", sequence=1), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("foreign_machine: gateway 'local-gateway' may not report for 'pump-b'")
    # gw-b, with a certificate the same CA signed, may.
    cert, key = tmp_path / "gw-b.pem", tmp_path / "gw-b-key.pem"
    issue(edge, "gw-b", cert, key)
    assert (
        telemetry_pb2_grpc.IngestionStub(edge_channel(edge, cert, key))
        .Ingest(make_batch("pump-b", sequence=1), timeout=30)
        .accepted_batches
        == 1
    )

    records = consume_until(
        edge.kafka, edge.kafka.telemetry_topic, lambda v: {r["equipment_id"] for r in v} >= {"pump-a", "pump-b"}
    )
    seen = {(r["equipment_id"], r["site"], r["gateway_id"]) for r in records}
    assert seen == {("pump-a", "site-a", LOCAL_GATEWAY), ("pump-b", "site-b", "gw-b")}
    dead = consume_until(edge.kafka, edge.kafka.dead_letter_topic, lambda v: len(v) >= 1)
    assert [(d["reason"], d["equipment_id"]) for d in dead] == [("foreign_machine", "pump-b")]


def test_each_gateway_has_its_own_rate_limit(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """60 points per 3 s per gateway: the local gateway's third 30-point batch is refused with RESOURCE_EXHAUSTED
    (its gateway client keeps it on disk and it lands once the window has passed); another gateway is not held
    back by it."""
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(port=free_port(), metrics_port=0, gateway_max_points_per_s=20, gateway_rate_window_s=3),
    )
    _, shutdown = serve(settings)
    try:
        local = telemetry_pb2_grpc.IngestionStub(edge_channel(settings))
        for seq in (1, 2):
            assert local.Ingest(make_batch("pump-a", sequence=seq), timeout=30).accepted_batches == 1
        with pytest.raises(grpc.RpcError) as info:
            local.Ingest(make_batch("pump-a", sequence=3), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'local-gateway' is over edge.gateway_max_points_per_s=20" in info.value.details()
        cert, key = tmp_path / "gw-b.pem", tmp_path / "gw-b-key.pem"
        issue(settings, "gw-b", cert, key)
        other = telemetry_pb2_grpc.IngestionStub(edge_channel(settings, cert, key))
        assert other.Ingest(make_batch("pump-b", sequence=1), timeout=30).accepted_batches == 1

        with GatewayClient(settings, gateway_id="gw-throttled", fsync=False) as client:
            assert client.send([make_batch("pump-a", sequence=3)]) is None  # refused: kept on disk
            assert client.buffered_batches() == 1
            deadline = time.monotonic() + 20
            while client.buffered_batches() and time.monotonic() < deadline:
                time.sleep(1)
                client.send([])  # the gateway's next attempt drains the buffer
            assert client.buffered_batches() == 0
        records = consume_until(
            settings.kafka,
            settings.kafka.telemetry_topic,
            lambda v: len({(r["equipment_id"], r["sequence"]) for r in v}) >= 4,
        )
        assert {(r["equipment_id"], r["sequence"]) for r in records} == {
            ("pump-a", 1),
            ("pump-a", 2),
            ("pump-a", 3),
            ("pump-b", 1),
        }
    finally:
        shutdown(0)


def test_one_gateways_sequence_cannot_mute_another_gateways_batches(edge: Settings, tmp_path: Path) -> None:
    """Sequences are a gateway's own numbering: a gateway that sends a far-ahead sequence for a machine it does
    not report for (no registry binding: pump-u's gateway_id is empty) makes no "duplicate" of the machine's
    real gateway's next batches; its own next ones past the jump bound are refused as before."""
    cert, key = tmp_path / "gw-x.pem", tmp_path / "gw-x-key.pem"
    issue(edge, "gw-x", cert, key)
    real = telemetry_pb2_grpc.IngestionStub(edge_channel(edge))
    forger = telemetry_pb2_grpc.IngestionStub(edge_channel(edge, cert, key))
    assert real.Ingest(make_batch("pump-u", sequence=5), timeout=30).accepted_batches == 1
    assert forger.Ingest(make_batch("pump-u", sequence=900_000), timeout=30).accepted_batches == 1
    ack = real.Ingest(make_batch("pump-u", sequence=6), timeout=30)
    assert (ack.accepted_batches, ack.duplicate_batches) == (1, 0)
    assert real.Ingest(make_batch("pump-u", sequence=6), timeout=30).duplicate_batches == 1  # a re-send still is
    records = consume_until(
        edge.kafka,
        edge.kafka.telemetry_topic,
        lambda v: len({r["sequence"] for r in v if r["equipment_id"] == "pump-u"}) >= 3,
    )
    written = {(r["gateway_id"], r["sequence"]) for r in records if r["equipment_id"] == "pump-u"}
    assert written == {("gw-x", 900_000), (LOCAL_GATEWAY, 5), (LOCAL_GATEWAY, 6)}
