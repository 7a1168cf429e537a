"""The edge ingestion service against a real Apache Kafka broker."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import requests

from connectors.kafka import make_consumer, make_producer
from edge.chunking import batch_to_records
from edge.gateway import GatewayClient
from edge.proto import telemetry_pb2, telemetry_pb2_grpc
from edge.service import serve
from edge.state import batch_headers, load_snapshot, mark_key
from edge.validation import BatchValidator
from operations.certs import LOCAL_GATEWAY
from tests.conftest import edge_channel, free_port
from vigil.contracts import MARKER_GATEWAY
from vigil.settings import EdgeSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration
INGEST = "/vigil.edge.v1.Ingestion/Ingest"
GATEWAY = LOCAL_GATEWAY  # the certificate tests/conftest.py gives every gateway client (mTLS is on)


def per_test_kafka(kafka: KafkaSettings, **update: object) -> KafkaSettings:
    """Own topic names per test, so tests never see each other's records."""
    suffix = uuid.uuid4().hex[:10]
    return kafka.model_copy(
        update={
            "telemetry_topic": f"telemetry-{suffix}",
            "window_stats_topic": f"window-stats-{suffix}",
            "dead_letter_topic": f"dead-letter-{suffix}",
            "partitions": 2,
            **update,
        }
    )


def make_batch(
    equipment_id: str = "pump-001", sequence: int = 1, sensors: int = 3, samples: int = 10, offset_ms: int = 0
) -> telemetry_pb2.ReadingBatch:
    now = int(time.time() * 1000) + offset_ms
    batch = telemetry_pb2.ReadingBatch(
        equipment_id=equipment_id,
        site="site-a",
        equipment_type="pump",
        gateway_id="gw-test",
        sequence=sequence,
        sent_at_ms=now,
    )
    for s in range(sensors):
        series = batch.sensors.add(sensor=f"sensor_{s}", unit="bar")
        series.timestamps_ms.extend(now - 4500 + 500 * i for i in range(samples))
        series.values.extend(sequence * 1000 + s * 100 + i + 0.25 for i in range(samples))
    return batch


def consume_until(kafka: KafkaSettings, topic: str, done, timeout: float = 40.0, markers: bool = False) -> list[dict]:
    """Read ``topic`` from the beginning with a fresh group until ``done(values)`` (never end offsets).

    Progress markers (edge/progress.py) are left out unless ``markers``; each value gets its ``_partition``.
    """
    consumer = make_consumer(kafka.as_identity("admin"), group_id=f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    values: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(values):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}; got {len(values)} records: {values[-3:]}")
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    value = orjson.loads(message.value())
                    if value.get("gateway_id") == MARKER_GATEWAY and not markers:
                        continue
                    value["_key"] = message.key().decode() if message.key() is not None else None
                    value["_partition"] = message.partition()
                    values.append(value)
    finally:
        consumer.close()
    return values


@pytest.fixture
def edge(kafka_settings: KafkaSettings, tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        # Markers start after progress_active_ms (every machine had time to report): short here.
        edge=EdgeSettings(
            port=free_port(), metrics_port=free_port(), max_points_per_batch=500, progress_active_ms=1000
        ),
    )
    _, shutdown = serve(settings)
    try:
        yield settings
    finally:
        shutdown(0)


def stub(settings: Settings) -> tuple[grpc.Channel, telemetry_pb2_grpc.IngestionStub]:
    channel = edge_channel(settings, compression=grpc.Compression.Gzip)
    return channel, telemetry_pb2_grpc.IngestionStub(channel)


def samples_of(records: list[dict], sequence: int) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record["sequence"] == sequence:
            for s in record["sensors"]:
                out.setdefault(s["sensor"], []).extend(zip(s["ts"], s["v"], strict=True))
    return {k: sorted(v) for k, v in out.items()}


def expected_samples(batch: telemetry_pb2.ReadingBatch) -> dict[str, list[tuple[int, float]]]:
    return {s.sensor: sorted(zip(s.timestamps_ms, s.values, strict=True)) for s in batch.sensors}


def test_valid_batches_via_unary_and_stream_land_as_contract_records(edge: Settings) -> None:
    channel, client = stub(edge)
    unary_batch = make_batch("pump-001", sequence=1)
    ack = client.Ingest(unary_batch, timeout=30)
    assert (ack.accepted_batches, ack.accepted_points, ack.rejected_batches) == (1, 30, 0)

    stream_batches = [make_batch("pump-002", sequence=i) for i in (1, 2, 3)]
    ack = client.IngestStream(iter(stream_batches), timeout=30)
    assert (ack.accepted_batches, ack.accepted_points, ack.duplicate_batches) == (3, 90, 0)
    channel.close()

    def complete(values: list[dict]) -> bool:
        seen = {(r["equipment_id"], r["sequence"]) for r in values}
        return (
            seen >= {("pump-001", 1), ("pump-002", 1), ("pump-002", 2), ("pump-002", 3)}
            and sum(len(s["ts"]) for r in values for s in r["sensors"]) >= 120
        )

    records = consume_until(edge.kafka, edge.kafka.telemetry_topic, complete)
    size = edge.window.size_ms
    for record in records:
        assert record["_key"] == record["equipment_id"]
        assert set(record) - {"_key", "_partition"} == {
            "equipment_id",
            "site",
            "equipment_type",
            "gateway_id",
            "sequence",
            "chunk_start_ms",
            "event_time_ms",
            "ingested_at_ms",
            "sensors",
        }
        # The gateway is who its certificate says, not what the batch claims ("gw-test").
        assert (record["site"], record["equipment_type"], record["gateway_id"]) == ("site-a", "pump", LOCAL_GATEWAY)
        assert record["chunk_start_ms"] % size == 0
        assert record["event_time_ms"] == max(max(s["ts"]) for s in record["sensors"])
        for s in record["sensors"]:
            assert s["unit"] == "bar"
            assert all(t - t % size == record["chunk_start_ms"] for t in s["ts"])
    pump1 = [r for r in records if r["equipment_id"] == "pump-001"]
    assert samples_of(pump1, 1) == expected_samples(unary_batch)
    pump2 = [r for r in records if r["equipment_id"] == "pump-002"]
    for batch in stream_batches:
        assert samples_of(pump2, batch.sequence) == expected_samples(batch)


def bad_batches() -> list[tuple[str, telemetry_pb2.ReadingBatch]]:
    nan = make_batch("pump-nan", sequence=1)
    nan.sensors[1].values[4] = float("nan")
    return [
        ("empty_equipment_id", make_batch("", sequence=1)),
        ("nan_or_inf", nan),
        ("timestamp_in_future", make_batch("pump-future", sequence=1, offset_ms=10 * 60 * 1000)),
        ("timestamp_too_old", make_batch("pump-old", sequence=1, offset_ms=-3 * 3600 * 1000)),
        ("oversized_batch", make_batch("pump-big", sequence=1, sensors=6, samples=100)),  # 600 > 500
    ]


def test_bad_batches_are_rejected_and_dead_lettered(edge: Settings) -> None:
    channel, client = stub(edge)
    malformed = b"\x0a\x05ab"  # field 1 claims 5 bytes, only 2 follow
    raw_ingest = channel.unary_unary(
        INGEST, request_serializer=None, response_deserializer=telemetry_pb2.IngestAck.FromString
    )
    with pytest.raises(grpc.RpcError) as info:
        raw_ingest(malformed, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("malformed_protobuf: request is not a valid vigil.edge.v1.ReadingBatch")

    details = {}
    for reason, batch in bad_batches():
        with pytest.raises(grpc.RpcError) as info:
            client.Ingest(batch, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
        assert info.value.details().startswith(f"{reason}: "), info.value.details()
        details[reason] = info.value.details()
    assert "sensor 'sensor_1' value[4] is NaN" in details["nan_or_inf"]
    assert "600 points" in details["oversized_batch"]

    # The same bad batches over a stream: not fatal, listed in the ack next to a good one.
    good = make_batch("pump-good", sequence=1)
    ack = client.IngestStream(iter([b for _, b in bad_batches()] + [good]), timeout=30)
    assert ack.accepted_batches == 1 and ack.rejected_batches == 5
    assert [r.reason for r in ack.rejections] == [reason for reason, _ in bad_batches()]
    assert ack.rejections[1].equipment_id == "pump-nan" and "value[4] is NaN" in ack.rejections[1].detail
    channel.close()

    expected = {reason for reason, _ in bad_batches()} | {"malformed_protobuf"}
    dead = consume_until(
        edge.kafka,
        edge.kafka.dead_letter_topic,
        lambda values: len(values) >= 11 and {v["reason"] for v in values} >= expected,
    )
    by_reason: dict[str, list[dict]] = {}
    for record in dead:
        assert record["source"] == "edge" and record["detail"] and record["received_at_ms"] > 0
        by_reason.setdefault(record["reason"], []).append(record)
    assert base64.b64decode(by_reason["malformed_protobuf"][0]["payload_b64"]) == malformed
    assert by_reason["malformed_protobuf"][0]["_key"] == ""
    for reason, batch in bad_batches():
        assert len(by_reason[reason]) == 2, reason  # once via unary, once via stream
        record = by_reason[reason][0]
        assert record["equipment_id"] == batch.equipment_id == record["_key"]
        original = telemetry_pb2.ReadingBatch.FromString(base64.b64decode(record["payload_b64"]))
        assert original.equipment_id == batch.equipment_id and len(original.sensors) == len(batch.sensors)

    metrics = requests.get(f"http://{edge.edge.host}:{edge.edge.metrics_port}/metrics", timeout=10).text
    assert 'vigil_edge_batches_rejected_total{reason="nan_or_inf"} 2.0' in metrics
    assert 'vigil_edge_batches_rejected_total{reason="malformed_protobuf"} 1.0' in metrics
    assert "vigil_edge_batches_accepted_total 1.0" in metrics


def test_the_edge_bounds_what_one_client_can_make_it_hold(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Rejections listed per acknowledgement, bytes per stream and the payload a dead letter keeps are bounded;
    every rejection is still counted and dead-lettered."""
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(
            port=free_port(), metrics_port=0, max_points_per_batch=500, max_stream_bytes=64 * 1024, max_ack_rejections=2
        ),
    )
    _, shutdown = serve(settings)
    try:
        channel, client = stub(settings)
        bad = []
        for i in range(4):
            batch = make_batch(f"pump-nan{i}", sequence=1)
            batch.sensors[0].values[0] = float("nan")
            bad.append(batch)
        ack = client.IngestStream(iter([*bad, make_batch("pump-ok", sequence=1)]), timeout=30)
        assert (ack.accepted_batches, ack.rejected_batches, len(ack.rejections)) == (1, 4, 2)
        many = [make_batch("pump-long", sequence=i) for i in range(1, 400)]  # ~120 KiB in one stream
        assert sum(len(b.SerializeToString()) for b in many) > 64 * 1024
        with pytest.raises(grpc.RpcError) as info:
            client.IngestStream(iter(many), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "edge.max_stream_bytes=65536" in info.value.details()
        huge = make_batch("pump-huge", sequence=1, sensors=4, samples=20_000)  # 80,000 points > 500: rejected
        raw = huge.SerializeToString()
        with pytest.raises(grpc.RpcError):
            client.Ingest(huge, timeout=30)
        channel.close()
        dead = consume_until(
            settings.kafka,
            settings.kafka.dead_letter_topic,
            lambda values: any(v["equipment_id"] == "pump-huge" for v in values) and len(values) >= 5,
        )
        assert sum(v["reason"] == "nan_or_inf" for v in dead) == 4  # all dead-lettered, 2 listed in the ack
        (record,) = [v for v in dead if v["equipment_id"] == "pump-huge"]
        assert record["reason"] == "oversized_batch" and record["payload_truncated"] is True
        assert record["payload_size"] == len(raw) and record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
        assert base64.b64decode(record["payload_b64"]) == raw[: len(base64.b64decode(record["payload_b64"]))]
        assert len(base64.b64decode(record["payload_b64"])) == 256 * 1024
    finally:
        shutdown(0)


def test_duplicate_sequence_is_acknowledged_but_not_rewritten(edge: Settings) -> None:
    channel, client = stub(edge)
    first = make_batch("pump-dup", sequence=5)
    assert client.Ingest(first, timeout=30).accepted_batches == 1
    again = client.Ingest(first, timeout=30)
    assert (again.accepted_batches, again.duplicate_batches) == (0, 1)
    older = client.IngestStream(iter([make_batch("pump-dup", sequence=4), first]), timeout=30)
    assert (older.accepted_batches, older.duplicate_batches) == (0, 2)
    # A forged sequence far past the mark is refused (taken, it would make every later real batch a
    # "duplicate"): dead-lettered with its reason, and the mark does not move.
    forged = make_batch("pump-dup", sequence=2**64 - 1)
    with pytest.raises(grpc.RpcError) as info:
        client.Ingest(forged, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("sequence_jump: sequence 18446744073709551615 is ")
    assert "edge.max_sequence_jump=1000000" in info.value.details()
    # Within one stream, a repeated sequence is a duplicate too.
    sentinel = make_batch("pump-dup", sequence=6)
    ack = client.IngestStream(iter([sentinel, sentinel]), timeout=30)
    assert (ack.accepted_batches, ack.duplicate_batches) == (1, 1)
    channel.close()

    # Same key -> same partition -> in order: once sequence 6 is read, any re-write of 5 was read too.
    records = consume_until(
        edge.kafka,
        edge.kafka.telemetry_topic,
        lambda values: sum(len(s["ts"]) for r in values if r["sequence"] == 6 for s in r["sensors"]) >= 30,
    )
    assert sorted({r["sequence"] for r in records}) == [5, 6]
    assert sum(len(s["ts"]) for r in records if r["sequence"] == 5 for s in r["sensors"]) == 30
    assert sum(len(s["ts"]) for r in records if r["sequence"] == 6 for s in r["sensors"]) == 30


def test_kafka_not_acknowledging_gives_unavailable(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """No broker listening: the service must not answer OK, so the gateway keeps and retries the batch."""
    nowhere = kafka_settings.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{free_port()}", "extra": {"message.timeout.ms": "1500"}}
    )
    settings = Settings(data_dir=tmp_path, kafka=nowhere, edge=EdgeSettings(port=free_port(), metrics_port=0))
    _, shutdown = serve(settings, create_topics=False, ready_wait_s=0)
    try:
        channel, client = stub(settings)
        with pytest.raises(grpc.RpcError) as info:
            client.Ingest(make_batch("pump-x", sequence=1), timeout=30)
        # It cannot even read which batches it wrote before a restart: it takes none.
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "recovering from Kafka" in info.value.details()
        channel.close()
    finally:
        shutdown(0)


def test_progress_markers_follow_the_data_on_every_partition(edge: Settings) -> None:
    """Two machines reporting: every partition gets a marker whose watermark is the OLDER newest promise.

    Markers start once the first machine was heard from ``progress_active_ms`` (1 s here) ago, and a machine
    silent for that long stops counting: so both keep reporting (every 0.3 s) for longer than that.
    """
    channel, client = stub(edge)
    for sequence in range(1, 6):
        early = make_batch("pump-m1", sequence=sequence, offset_ms=-2000)
        late = make_batch("pump-m2", sequence=sequence)
        client.IngestStream(iter([early, late]), timeout=30)
        time.sleep(0.3)
    channel.close()
    lateness = edge.window.allowed_lateness_ms
    oldest = min(early.sent_at_ms, late.sent_at_ms)

    def marked_everywhere(values: list[dict]) -> bool:
        data = {r["equipment_id"] for r in values if r["gateway_id"] != MARKER_GATEWAY}
        covered = {
            r["_partition"]
            for r in values
            if r["gateway_id"] == MARKER_GATEWAY and r["event_time_ms"] - lateness >= oldest
        }
        return data >= {"pump-m1", "pump-m2"} and covered == set(range(edge.kafka.partitions))

    records = consume_until(edge.kafka, edge.kafka.telemetry_topic, marked_everywhere, markers=True)
    markers = [r for r in records if r["gateway_id"] == MARKER_GATEWAY]
    # The watermark a marker carries never passes the slower machine's promise...
    assert max(r["event_time_ms"] - lateness for r in markers) == oldest
    assert all(r["sensors"] == [] and r["equipment_id"] == "" and r["_key"] is None for r in markers)
    # ...and in each partition, the data of that promise comes before the first marker reaching it.
    for partition in {r["_partition"] for r in records if r["gateway_id"] != MARKER_GATEWAY}:
        in_order = [r for r in records if r["_partition"] == partition]
        first_full = next(
            i
            for i, r in enumerate(in_order)
            if r["gateway_id"] == MARKER_GATEWAY and r["event_time_ms"] - lateness >= oldest
        )
        assert all(i < first_full for i, r in enumerate(in_order) if r["gateway_id"] != MARKER_GATEWAY)


def restartable_edge(kafka: KafkaSettings, data_dir: Path, **edge: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        kafka=kafka,
        edge=EdgeSettings(port=free_port(), metrics_port=0, progress_active_ms=1000, **edge),
    )


def write_as_the_edge_does(settings: Settings, batch: telemetry_pb2.ReadingBatch, parts: int | None = None) -> int:
    """Write ``batch``'s records (the first ``parts`` of them) straight to Kafka; returns how many it has."""
    result = BatchValidator(settings.edge).validate(batch, int(time.time() * 1000))
    records = batch_to_records(batch, result.arrays, settings.window.size_ms, int(time.time() * 1000))
    producer = make_producer(settings.kafka.as_identity("admin"))
    for key, value in records[:parts]:
        producer.produce(
            settings.kafka.telemetry_topic, value, key, headers=batch_headers(batch.sequence, len(records), GATEWAY)
        )
    assert producer.flush(10) == 0
    return len(records)


def samples_per_sequence(records: list[dict], equipment_id: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        if r["equipment_id"] == equipment_id:
            out[r["sequence"]] = out.get(r["sequence"], 0) + sum(len(s["ts"]) for s in r["sensors"])
    return out


@pytest.mark.parametrize("snapshot", ["kept", "lost"])
def test_a_restarted_edge_recognises_re_sends_of_what_kafka_already_has(
    kafka_settings: KafkaSettings, tmp_path: Path, snapshot: str
) -> None:
    """A crash swallows the answer to a batch Kafka acknowledged; the gateway re-sends it to the new process.

    A snapshot is up to a second old at a crash, so the marks are completed from the topic's tail (with the
    snapshot lost, from the tail alone): a re-send of what Kafka has whole is a duplicate, the rest is written.
    """
    settings = restartable_edge(per_test_kafka(kafka_settings), tmp_path)
    state = settings.edge_state_dir / "edge-state.json"
    _, shutdown = serve(settings)
    channel, client = stub(settings)
    try:
        assert client.Ingest(make_batch("pump-r", sequence=1), timeout=30).accepted_batches == 1
    finally:
        channel.close()
        shutdown(0)
    saved = load_snapshot(state)
    assert saved is not None and saved.marks == {mark_key(GATEWAY, "pump-r"): 1}
    # What the crashed run wrote after its last snapshot: batch 2 whole, batch 3 cut short (1 of 2 records).
    now = int(time.time() * 1000)
    # Batch 3's samples straddle a window boundary (the last one before now): two records; none is ahead of the
    # edge's clock by more than its 2-s future limit.
    across = (now // 5000) * 5000 + 2000 - now
    second, third = make_batch("pump-r", sequence=2), make_batch("pump-r", sequence=3, offset_ms=across)
    write_as_the_edge_does(settings, second)
    assert write_as_the_edge_does(settings, third, parts=1) == 2
    if snapshot == "lost":
        state.unlink()

    _, shutdown = serve(settings)
    channel, client = stub(settings)
    try:
        again = client.IngestStream(iter([make_batch("pump-r", sequence=1), second, third]), timeout=30)
        assert (again.duplicate_batches, again.accepted_batches) == (2, 1)
        fourth = client.Ingest(make_batch("pump-r", sequence=4), timeout=30)
        assert (fourth.duplicate_batches, fourth.accepted_batches) == (0, 1)
    finally:
        channel.close()
        shutdown(0)
    records = consume_until(
        settings.kafka, settings.kafka.telemetry_topic, lambda values: 4 in samples_per_sequence(values, "pump-r")
    )
    # 30 samples per batch; batch 3's first record twice (the cut-short write and the re-send): seen, not lost.
    counts = samples_per_sequence(records, "pump-r")
    assert (counts[1], counts[2], counts[4]) == (30, 30, 30)
    assert counts[3] > 30


def test_a_restarted_edge_holds_the_windows_for_a_machine_it_was_serving_until_it_is_back(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """After a restart the markers stay at the promise of a machine the previous run served and that has not
    reported again (its replay may be queued behind a thousand others); with no grace they pass it."""

    def markers_after_restart(grace_ms: int) -> tuple[int, list[int]]:
        kafka = per_test_kafka(kafka_settings)
        settings = restartable_edge(kafka, tmp_path / str(grace_ms), progress_return_grace_ms=grace_ms)
        _, shutdown = serve(settings)
        channel, client = stub(settings)
        try:
            for sequence in range(1, 6):  # both report for longer than the warm-up (progress_active_ms)
                away = make_batch("pump-away", sequence=sequence, offset_ms=-3000)
                client.IngestStream(iter([away, make_batch("pump-here", sequence=sequence)]), timeout=30)
                time.sleep(0.3)
        finally:
            channel.close()
            shutdown(0)
        restarted_ms = int(time.time() * 1000)
        _, shutdown = serve(settings)
        channel, client = stub(settings)
        try:
            for sequence in range(6, 16):  # only one machine is back, for longer than the warm-up
                client.Ingest(make_batch("pump-here", sequence=sequence), timeout=30)
                time.sleep(0.3)
        finally:
            channel.close()
            shutdown(0)

        def after_restart(values: list[dict]) -> list[dict]:
            return [r for r in values if r["gateway_id"] == MARKER_GATEWAY and r["ingested_at_ms"] >= restarted_ms]

        def done(values: list[dict]) -> bool:
            here = {r["sequence"] for r in values if r["equipment_id"] == "pump-here"}
            return 15 in here and {r["_partition"] for r in after_restart(values)} == set(range(kafka.partitions))

        records = consume_until(kafka, kafka.telemetry_topic, done, markers=True)
        lateness = settings.window.allowed_lateness_ms
        return away.sent_at_ms, [r["event_time_ms"] - lateness for r in after_restart(records)]

    promise, held = markers_after_restart(grace_ms=20_000)
    assert held and max(held) == promise  # the machine that is away holds every window it may still send
    promise, released = markers_after_restart(grace_ms=0)
    assert max(released) > promise  # without the grace the restarted edge forgets it at once


def shifted(batch: telemetry_pb2.ReadingBatch, ms: int) -> telemetry_pb2.ReadingBatch:
    """``batch`` as a gateway whose clock is ``ms`` off stamps it."""
    copy = telemetry_pb2.ReadingBatch()
    copy.CopyFrom(batch)
    copy.sent_at_ms += ms
    for series in copy.sensors:
        moved = [t + ms for t in series.timestamps_ms]
        del series.timestamps_ms[:]
        series.timestamps_ms.extend(moved)
    return copy


def test_a_gateway_clock_is_measured_two_ways_so_a_slow_edge_moves_no_data(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A gateway 30 s behind is corrected to the true times; a gateway with a right clock whose calls wait 3 s
    behind a busy worker is not moved (a one-way comparison saw that wait as a clock 3 s behind). The gateway
    measures its offset from the edge's time in each answer, uncertain by half the round trip."""
    settings = Settings(
        data_dir=tmp_path,
        kafka=per_test_kafka(kafka_settings),
        edge=EdgeSettings(port=free_port(), metrics_port=free_port(), max_workers=1),
    )
    _, shutdown = serve(settings)
    channel, client = stub(settings)
    behind = GatewayClient(settings, "gw-behind", clock=lambda: int(time.time() * 1000) - 30_000)
    right = GatewayClient(settings, "gw-right")
    skewed, waiting = make_batch("pump-behind", sequence=1), make_batch("pump-waits", sequence=1)
    try:
        assert behind.send([shifted(skewed, -30_000)]).accepted_batches == 1
        assert behind.clock_offset is not None and abs(behind.clock_offset.offset_ms - 30_000) < 500

        def slow_stream() -> Iterator[telemetry_pb2.ReadingBatch]:
            yield make_batch("pump-busy", sequence=1)
            time.sleep(3)  # holds the only worker

        busy = client.IngestStream.future(slow_stream(), timeout=30)
        time.sleep(0.5)
        started = time.monotonic()
        assert right.send([waiting]).accepted_batches == 1
        assert time.monotonic() - started > 2, "the call did not wait for the worker: the test proves nothing"
        assert busy.result().accepted_batches == 1
    finally:
        behind.close()
        right.close()
        channel.close()
        shutdown(0)
    records = consume_until(
        settings.kafka,
        settings.kafka.telemetry_topic,
        lambda values: {"pump-behind", "pump-waits"} <= {r["equipment_id"] for r in values},
    )
    for batch in (skewed, waiting):
        mine = [r for r in records if r["equipment_id"] == batch.equipment_id]
        assert samples_of(mine, 1) == expected_samples(batch), batch.equipment_id
