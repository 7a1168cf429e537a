"""Window stats from a real Kafka-protocol broker into the chDB-backed ClickHouse, end to end."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import TopicPartition

from connectors.clickhouse import MALFORMED_REASON, WINDOW_STATS_TABLE, WINDOW_STATS_VIEW, make_client
from connectors.kafka import ensure_topics, make_consumer, make_producer
from jobs.clickhouse_sink import ClickHouseSink
from operations.stack.clickhouse.server import stop_clickhouse_server_process
from tests.conftest import clickhouse_server, free_port, start_clickhouse_with_schema
from vigil.settings import ClickHouseSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    with clickhouse_server(tmp_path_factory, "sink_test") as server:
        yield server


@pytest.fixture
def settings(kafka_settings: KafkaSettings, ch_server: ClickHouseSettings, tmp_path) -> Settings:
    """Fresh topics and consumer group per test, so tests never see each other's records."""
    tag = uuid.uuid4().hex[:8]
    kafka = kafka_settings.model_copy(
        update={
            "telemetry_topic": f"telemetry-{tag}",
            "window_stats_topic": f"window-stats-{tag}",
            "dead_letter_topic": f"dead-letter-{tag}",
            "partitions": 2,
        }
    )
    ch = ch_server.model_copy(update={"sink_consumer_group": f"ch-sink-{tag}", "flush_interval_s": 0.2})
    settings = Settings(data_dir=tmp_path, kafka=kafka, clickhouse=ch)
    ensure_topics(settings.kafka.as_identity("admin"))
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    client = make_client(settings.clickhouse, "admin")
    yield client
    client.close()


@pytest.fixture
def running_sink(settings: Settings) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="clickhouse-sink", daemon=True)
    thread.start()
    yield sink
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "sink did not stop within 30 s"
    assert not errors, errors


def window_record(equipment: str, sensor: str, start_ms: int, avg: float, emitted_ms: int) -> dict:
    return {
        "equipment_id": equipment,
        "site": "site-1",
        "equipment_type": "press",
        "sensor": sensor,
        "unit": "bar",
        "window_start_ms": start_ms,
        "window_end_ms": start_ms + 5000,
        "count": 50,
        "avg": avg,
        "stddev": 0.125,
        "min": avg - 1.0,
        "max": avg + 1.0,
        "emitted_at_ms": emitted_ms,
    }


def produce(settings: Settings, values: list[tuple[str, bytes]]) -> None:
    producer = make_producer(settings.kafka.as_identity("admin"))
    for key, value in values:
        producer.produce(settings.kafka.window_stats_topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def recent_window_ms() -> int:
    """A window an hour ago: recent enough that the table TTL keeps it."""
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % 5000 - 3_600_000


def view_rows(client: Client, machines: list[str]) -> list[tuple]:
    return client.query(
        f"SELECT equipment_id, sensor, toUnixTimestamp64Milli(window_start), avg, count, "
        f"toUnixTimestamp64Milli(emitted_at) FROM {WINDOW_STATS_VIEW} "
        "WHERE equipment_id IN {ids:Array(String)} ORDER BY equipment_id, sensor, window_start",
        parameters={"ids": machines},
    ).result_rows


def test_sink_writes_exact_rows_and_deduplicates_replays(
    settings: Settings, client: Client, running_sink: ClickHouseSink
) -> None:
    start = recent_window_ms()
    machines = [f"sink-m{i}" for i in range(20)]
    records = [
        window_record(m, sensor, start + 5000 * w, float(i * 10 + w), start + 5000 * w + 6000)
        for i, m in enumerate(machines)
        for sensor in ("pressure", "temp")
        for w in range(3)
    ]
    produce(settings, [(r["equipment_id"], orjson.dumps(r)) for r in records])
    expected = sorted(
        (r["equipment_id"], r["sensor"], r["window_start_ms"], r["avg"], r["count"], r["emitted_at_ms"])
        for r in records
    )
    wait_for(lambda: len(view_rows(client, machines)) == len(expected), what="all rows in ClickHouse")
    assert view_rows(client, machines) == expected

    # Replays: the same windows again (an at-least-once re-delivery), plus a re-emission of one
    # window with a newer emitted_at, plus a malformed record.
    replay = records[:10]
    reemitted = window_record(machines[0], "pressure", start, 99.5, start + 60_000)
    produce(
        settings,
        [(r["equipment_id"], orjson.dumps(r)) for r in replay]
        + [(machines[0], orjson.dumps(reemitted)), ("sink-bad", b'{"equipment_id": "sink-bad", "count": ')],
    )
    wait_for(lambda: running_sink.stats().malformed == 1, what="the malformed record")
    wait_for(
        lambda: (
            client.command(f"SELECT count() FROM {WINDOW_STATS_TABLE} WHERE equipment_id LIKE 'sink-m%'")
            >= len(records) + len(replay) + 1
        ),
        what="replayed rows inserted",
    )
    expected_after = sorted(
        [row for row in expected if row[:3] != (machines[0], "pressure", start)]
        + [(machines[0], "pressure", start, 99.5, 50, start + 60_000)]
    )
    assert view_rows(client, machines) == expected_after  # one row per key, newest emission wins
    final_count = client.command(
        f"SELECT count() FROM {WINDOW_STATS_TABLE} FINAL WHERE equipment_id IN {{ids:Array(String)}}",
        parameters={"ids": machines},
    )
    assert final_count == len(records)

    stats = running_sink.stats()
    assert stats.rows_written == len(records) + len(replay) + 1
    assert stats.batches >= 2
    assert stats.last_insert_latency_s > 0

    # The malformed record is on the dead-letter topic, with its reason and original bytes.
    dead = read_one(settings, settings.kafka.dead_letter_topic)
    assert dead["reason"] == MALFORMED_REASON
    assert dead["equipment_id"] == "sink-bad"
    assert "payload_b64" in dead

    # Offsets were committed only for what is stored: everything produced, on every partition.
    produced = len(records) + len(replay) + 2
    wait_for(lambda: committed_total(settings) == produced, what="committed offsets")


def read_one(settings: Settings, topic: str) -> dict:
    consumer = make_consumer(settings.kafka.as_identity("admin"), f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return orjson.loads(message.value())
        raise AssertionError(f"no record on {topic}")
    finally:
        consumer.close()


def committed_total(settings: Settings) -> int:
    consumer = make_consumer(settings.kafka.as_identity("admin"), settings.clickhouse.sink_consumer_group)
    try:
        partitions = [TopicPartition(settings.kafka.window_stats_topic, p) for p in range(settings.kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def test_offsets_not_committed_while_clickhouse_is_down(kafka_settings: KafkaSettings, tmp_path) -> None:
    """An outage stalls the sink without losing or skipping anything; it resumes on restart."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp_path,
        kafka=kafka_settings.model_copy(
            update={
                "telemetry_topic": f"telemetry-{tag}",
                "window_stats_topic": f"window-stats-{tag}",
                "dead_letter_topic": f"dead-letter-{tag}",
                "partitions": 2,
            }
        ),
        clickhouse=ClickHouseSettings(port=free_port(), database="outage", sink_consumer_group=f"ch-sink-{tag}"),
    )
    ensure_topics(settings.kafka.as_identity("admin"))
    log_path = tmp_path / "clickhouse.log"
    proc = start_clickhouse_with_schema(settings, log_path)
    sink = ClickHouseSink(settings)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    start = recent_window_ms()
    try:
        first = [window_record("out-1", "temp", start + 5000 * w, float(w), start + 6000 * w) for w in range(5)]
        produce(settings, [("out-1", orjson.dumps(r)) for r in first])
        wait_for(lambda: committed_total(settings) == len(first), what="first batch committed")

        stop_clickhouse_server_process(proc)
        second = [window_record("out-2", "temp", start + 5000 * w, float(w), start + 6000 * w) for w in range(7)]
        produce(settings, [("out-2", orjson.dumps(r)) for r in second])
        wait_for(lambda: sink.stats().errors >= 2, what="failed insert attempts")
        assert committed_total(settings) == len(first)  # nothing committed past unwritten data

        proc = start_clickhouse_with_schema(settings, log_path)
        wait_for(lambda: committed_total(settings) == len(first) + len(second), what="second batch committed")
        client = make_client(settings.clickhouse, "admin")
        assert [row[:3] for row in view_rows(client, ["out-1", "out-2"])] == sorted(
            (r["equipment_id"], r["sensor"], r["window_start_ms"]) for r in first + second
        )
        client.close()
    finally:
        stop.set()
        thread.join(30)
        stop_clickhouse_server_process(proc)
    assert not thread.is_alive()
