"""Gateway client: buffers on disk while the edge service is down, replays in order once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.gateway import GatewayClient, read_records
from edge.proto import telemetry_pb2
from edge.service import serve
from tests.conftest import free_port
from tests.integration.test_edge_service import consume_until, make_batch, per_test_kafka
from vigil.settings import EdgeSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration


def settings_for(kafka_settings: KafkaSettings, tmp_path: Path, **edge: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(port=free_port(), metrics_port=0, gateway_deadline_s=10, **edge),
    )


def wait_until_reachable(client: GatewayClient) -> telemetry_pb2.IngestAck:
    """``send([])`` only replays the buffer; retry while the channel reconnects to the restarted service."""
    deadline = time.monotonic() + 30
    while (ack := client.send([])) is None:
        assert time.monotonic() < deadline, "service is up but the gateway still cannot reach it"
        time.sleep(0.2)
    return ack


def test_buffer_while_down_then_replay_in_order(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path)
    client = GatewayClient(settings, gateway_id="gw-1")
    assert client.dir == settings.gateway_buffer_dir / "gw-1"

    # Service down: each send is buffered, nothing raises.
    for seq in range(1, 7, 2):
        assert client.send([make_batch("pump-a", seq), make_batch("pump-a", seq + 1)]) is None
    assert client.buffered_batches() == 6 and client.counters["buffered"] == 6
    assert list(client.dir.glob("segment-*.log"))
    client.close()  # the buffer survives the client (e.g. a gateway restart)

    _, shutdown = serve(settings)
    try:
        client = GatewayClient(settings, gateway_id="gw-1")
        assert client.buffered_batches() == 6
        wait_until_reachable(client)  # drains the buffer
        assert client.counters["replayed"] == 6
        ack = client.send([make_batch("pump-a", 7)])
        assert ack is not None
        assert ack.accepted_batches == 1 and ack.rejected_batches == 0
        assert client.buffered_batches() == 0 and not list(client.dir.glob("segment-*.log"))
        assert client.counters["replayed"] == 6 and client.counters["expired"] == 0
        client.close()
    finally:
        shutdown(0)

    records = consume_until(
        settings.kafka,
        settings.kafka.telemetry_topic,
        lambda values: {r["sequence"] for r in values} >= set(range(1, 8)),
    )
    sequences = [r["sequence"] for r in records if r["equipment_id"] == "pump-a"]
    assert sequences == sorted(sequences), f"replayed out of order: {sequences}"
    assert sorted(set(sequences)) == list(range(1, 8))


def test_old_entries_are_moved_to_expired_not_sent(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(kafka_settings, tmp_path, gateway_buffer_max_age_s=1.0)
    _, shutdown = serve(settings)
    try:
        # Buffer through a target where nothing listens (the service's link is "down").
        down = GatewayClient(settings, gateway_id="gw-2", target=f"127.0.0.1:{free_port()}")
        stale = [make_batch("pump-b", 1), make_batch("pump-b", 2)]
        assert down.send(stale) is None
        time.sleep(1.1)  # 1 and 2 are now older than the 1 s limit
        assert down.send([make_batch("pump-b", 3)]) is None  # 3 is fresh; the drain attempt expired 1 and 2
        assert down.counters == {"sent": 0, "buffered": 3, "replayed": 0, "expired": 2, "quarantined": 0}
        assert down.buffered_batches() == 1
        down.close()

        client = GatewayClient(settings, gateway_id="gw-2")  # link is back: same buffer, real target
        ack = client.send([make_batch("pump-b", 4)])
        assert ack is not None
        assert ack.accepted_batches == 2  # 3 (replayed) and 4; 1 and 2 expired
        assert client.counters == {"sent": 1, "buffered": 0, "replayed": 1, "expired": 0, "quarantined": 0}
        assert client.buffered_batches() == 0
        client.close()
    finally:
        shutdown(0)

    expired_files = list((client.dir / "expired").glob("expired-*.log"))
    assert len(expired_files) == 1
    kept = [telemetry_pb2.ReadingBatch.FromString(p) for _, p in read_records(expired_files[0])]
    assert kept == stale  # moved aside byte for byte, not dropped

    records = consume_until(
        settings.kafka, settings.kafka.telemetry_topic, lambda values: {r["sequence"] for r in values} >= {3, 4}
    )
    assert {r["sequence"] for r in records} == {3, 4}  # 3 and 4 are the last; 1 and 2 would come before


def test_one_client_per_buffer_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, edge=EdgeSettings(port=free_port()))
    with GatewayClient(settings, gateway_id="gw-3"), pytest.raises(RuntimeError, match="in use by another"):
        GatewayClient(settings, gateway_id="gw-3")
    GatewayClient(settings, gateway_id="gw-3").close()  # released on close


def test_torn_tail_is_skipped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, edge=EdgeSettings(port=free_port()))
    with GatewayClient(settings, gateway_id="gw-4") as client:
        assert client.send([make_batch("pump-c", 1), make_batch("pump-c", 2)]) is None
        segment = next(client.dir.glob("segment-*.log"))
        with segment.open("ab") as handle:
            handle.write(b"\x00\x00\x01\x00partial")  # crash in the middle of an append
        assert client.buffered_batches() == 2
