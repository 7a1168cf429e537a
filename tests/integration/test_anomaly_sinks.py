"""Anomaly verdicts from a real Apache Kafka broker into the chDB-backed ClickHouse and a real
Pushgateway: one row / one gauge set per key even when Kafka delivers a verdict twice, and malformed
verdicts dead-lettered with their reason."""

from __future__ import annotations

import base64
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.clickhouse import ANOMALY_MALFORMED_REASON, WINDOW_STATS_VIEW, make_client
from connectors.kafka import ensure_topics, make_consumer, make_producer
from connectors.monitoring import monitoring_session
from detectors import score_names
from jobs.clickhouse_sink import anomalies_spec, run_sinks
from jobs.pushgateway_sink import PushgatewaySink
from operations.stack.clickhouse.server import stop_clickhouse_server_process
from operations.stack.prometheus_configs import config_dir, is_ready, pushgateway_argv, render_configs
from operations.training.detectors import _flagged_windows
from tests.conftest import RunLoop, free_port, start_clickhouse_with_schema
from vigil.settings import ClickHouseSettings, KafkaSettings, Settings

SCORE_NAMES = score_names()

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def fresh_kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    """Topics of this test only, so tests never see each other's records."""
    tag = uuid.uuid4().hex[:8]
    kafka = kafka_settings.model_copy(
        update={
            "telemetry_topic": f"telemetry-{tag}",
            "window_stats_topic": f"window-stats-{tag}",
            "dead_letter_topic": f"dead-letter-{tag}",
            "anomalies_topic": f"anomalies-{tag}",
            "partitions": 2,
        }
    )
    ensure_topics(kafka, topics=[kafka.window_stats_topic, kafka.dead_letter_topic, kafka.anomalies_topic])
    return kafka


def recent_window_ms() -> int:
    """A window 10 minutes ago: inside the table TTL and the Pushgateway sink's series TTL."""
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % 5000 - 600_000


def verdict(equipment_id: str, start_ms: int, *, site: str = "plant-a", **overrides: object) -> dict:
    """A normal window verdict, shaped exactly like vigil.contracts.ANOMALY_JSON_SCHEMA."""
    record = {
        "equipment_id": equipment_id,
        "site": site,
        "equipment_type": "pump",
        "window_start_ms": start_ms,
        "window_end_ms": start_ms + 5000,
        "kind": "window",
        "is_anomaly": False,
        "severity": "normal",
        "score": 0.5,
        "scores": {"pca_t2q": 0.5, "isolation_forest": 0.25},
        "detectors": [],
        "rule_hits": [],
        "top_sensors": [],
        "dead_sensors": [],
        "model_versions": "isolation_forest=v0001 pca_t2q=v0001",
        "summary": "",
        "last_seen_ms": start_ms + 5000,
        "emitted_at_ms": start_ms + 5300,
    }
    scores = dict(record["scores"])  # type: ignore[call-overload]
    for name in [k for k in overrides if k in SCORE_NAMES]:  # a score by name (None: it did not score)
        value = overrides.pop(name)
        scores.pop(name, None)
        if value is not None:
            scores[name] = value
    record.update(scores=scores, **overrides)
    return record


def critical(equipment_id: str, start_ms: int, **overrides: object) -> dict:
    fields = {
        "is_anomaly": True,
        "severity": "critical",
        "score": 3.0,
        "pca_t2q": 3.0,
        "rules": 1.5,
        "detectors": ["pca_t2q", "threshold_max"],
        "rule_hits": ["temp:threshold_max"],
        "top_sensors": ["temp", "flow"],
        "summary": "critical: pca_t2q, threshold_max (temp:threshold_max)",
    }
    return verdict(equipment_id, start_ms, **(fields | overrides))


def dead(equipment_id: str, start_ms: int, **overrides: object) -> dict:
    fields = {
        "kind": "dead_machine",
        "is_anomaly": True,
        "severity": "critical",
        "score": 0.0,
        "pca_t2q": None,
        "isolation_forest": None,
        "detectors": ["dead_machine"],
        "dead_sensors": ["flow", "temp"],
        "model_versions": "",
        "summary": f"critical: no data from {equipment_id} for 15 s",
        "last_seen_ms": start_ms - 10_000,
    }
    return verdict(equipment_id, start_ms, **(fields | overrides))


def produce(kafka: KafkaSettings, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = make_producer(kafka)
    for key, value in values:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def encoded(records: list[dict]) -> list[tuple[str, bytes]]:
    return [(r["equipment_id"], orjson.dumps(r)) for r in records]


MALFORMED = b'{"equipment_id": "an-bad", "site": "plant-a", "kind": "window", "score": }'


# ---------------------------------------------------------------------------------------------
# Cold path: ClickHouse
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    """A ClickHouse server (chDB) on a free port with a fresh data directory, for this module."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("vigil"),
        clickhouse=ClickHouseSettings(port=free_port(), database="anomaly_test", flush_interval_s=0.2),
    )
    proc = start_clickhouse_with_schema(settings, settings.logs_dir / "clickhouse.log")
    try:
        yield settings.clickhouse
    finally:
        stop_clickhouse_server_process(proc)


def latest_rows(client: Client, machines: list[str]) -> list[tuple]:
    return client.query(
        "SELECT equipment_id, toUnixTimestamp64Milli(window_start), kind, is_anomaly, severity, score, scores, "
        "detectors, rule_hits, top_sensors, dead_sensors, summary, "
        "toUnixTimestamp64Milli(last_seen), toUnixTimestamp64Milli(emitted_at) FROM anomalies_latest "
        "WHERE equipment_id IN {ids:Array(String)} ORDER BY equipment_id, window_start",
        parameters={"ids": machines},
    ).result_rows


def as_row(r: dict) -> tuple:
    return (
        r["equipment_id"],
        r["window_start_ms"],
        r["kind"],
        int(r["is_anomaly"]),
        r["severity"],
        r["score"],
        r["scores"],
        r["detectors"],
        r["rule_hits"],
        r["top_sensors"],
        r["dead_sensors"],
        r["summary"],
        r["last_seen_ms"],
        r["emitted_at_ms"],
    )


def read_one(kafka: KafkaSettings, topic: str) -> dict:
    consumer = make_consumer(kafka, f"reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return orjson.loads(message.value())
        raise AssertionError(f"no record on {topic}")
    finally:
        consumer.close()


def committed_total(kafka: KafkaSettings, group: str, topic: str) -> int:
    consumer = make_consumer(kafka, group)
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def test_clickhouse_sink_stores_each_verdict_once_and_dead_letters_the_malformed(
    kafka_settings: KafkaSettings, ch_server: ClickHouseSettings, tmp_path: Path
) -> None:
    kafka = fresh_kafka(kafka_settings)
    ch = ch_server.model_copy(update={"sink_consumer_group": f"ch-sink-{uuid.uuid4().hex[:8]}"})
    settings = Settings(data_dir=tmp_path, kafka=kafka, clickhouse=ch)
    start = recent_window_ms()
    records = [
        verdict("an-1", start),
        critical("an-1", start + 5000),
        verdict("an-2", start),
        dead("an-2", start + 15_000),
        verdict("an-3", start + 5000, rules=0.75),
    ]
    duplicate = records[1]  # an at-least-once re-delivery: the same record again
    reemitted = critical("an-3", start + 5000, severity="warning", score=1.2, pca_t2q=1.2, emitted_at_ms=start + 60_000)
    produce(kafka, kafka.anomalies_topic, encoded(records) + encoded([duplicate, reemitted]) + [("an-bad", MALFORMED)])
    window_stat = {
        "equipment_id": "an-1",
        "site": "plant-a",
        "equipment_type": "pump",
        "sensor": "temp",
        "unit": "C",
        "window_start_ms": start,
        "window_end_ms": start + 5000,
        "count": 5,
        "avg": 1.5,
        "stddev": 0.5,
        "min": 1.0,
        "max": 2.0,
        "emitted_at_ms": start + 5300,
    }
    produce(kafka, kafka.window_stats_topic, encoded([window_stat]))

    stop = threading.Event()
    errors: list[BaseException] = []
    sinks: list = []

    def run() -> None:
        try:
            sinks.extend(run_sinks(settings, stop))  # every topic, as `python -m jobs.clickhouse_sink`
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client = make_client(ch, "admin")
    group, produced = anomalies_spec(settings).consumer_group, len(records) + 3
    try:
        wait_for(
            lambda: committed_total(kafka, group, kafka.anomalies_topic) == produced,
            what="every verdict stored or dead-lettered, and committed",
        )
        # All 7 good records were inserted (the duplicate and the re-emission too) ...
        raw = client.command("SELECT count() FROM anomalies WHERE equipment_id LIKE 'an-%'")
        assert raw == len(records) + 2
        # ... yet the view holds exactly one row per (equipment_id, window_start), the newest emission.
        expected = sorted(as_row(r) for r in [*records[:4], reemitted])
        assert latest_rows(client, ["an-1", "an-2", "an-3"]) == expected
        assert client.command("SELECT count() FROM anomalies FINAL WHERE equipment_id LIKE 'an-%'") == len(records)

        # The malformed verdict is on the dead-letter topic with its reason and original bytes.
        letter = read_one(kafka, kafka.dead_letter_topic)
        assert letter["reason"] == ANOMALY_MALFORMED_REASON
        assert letter["detail"].startswith("invalid JSON record")
        assert letter["equipment_id"] == "an-bad"
        assert base64.b64decode(letter["payload_b64"]) == MALFORMED

        # The same process stored the window-stats topic.
        wait_for(
            lambda: client.command(f"SELECT count() FROM {WINDOW_STATS_VIEW} WHERE equipment_id = 'an-1'") == 1,
            what="the window-stats row",
        )

        # Training excludes the windows flagged anomalous (here: an-1's second window, an-2's dead machine,
        # an-3's re-emitted verdict), reading the table the way operations/training/detectors.py does.
        flagged = _flagged_windows(client, settings, start - 60_000, start + 60_000)
        assert sorted(map(tuple, flagged[["equipment_id", "window_start_ms"]].to_numpy().tolist())) == [
            ("an-1", start + 5000),
            ("an-2", start + 15_000),
            ("an-3", start + 5000),
        ]
    finally:
        stop.set()
        thread.join(30)
        client.close()
    assert not thread.is_alive(), "sinks did not stop within 30 s"
    assert not errors, errors
    window_sink, anomaly_sink, insight_sink = sinks  # one per topic, the insights topic's idle here
    assert (window_sink.stats().rows_written, window_sink.stats().malformed) == (1, 0)
    assert (anomaly_sink.stats().rows_written, anomaly_sink.stats().malformed) == (len(records) + 2, 1)
    assert (insight_sink.stats().rows_written, insight_sink.stats().malformed) == (0, 0)


# ---------------------------------------------------------------------------------------------
# Hot path: Pushgateway
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real Pushgateway on a free port, for this module (no Prometheus needed to read /metrics)."""
    data_dir = tmp_path_factory.mktemp("hot")
    (data_dir / "pushgateway").mkdir()
    settings = Settings(
        data_dir=data_dir,
        # Explicit, so that the copies with another data dir below keep the credentials of this server.
        prometheus={
            "pushgateway_port": free_port(),
            "push_interval_s": 0.5,
            "password_file": data_dir / "monitoring.password",
        },
    )
    cfg = config_dir(settings)
    render_configs(settings, cfg)  # its web config: TLS and the password
    with (data_dir / "pushgateway.log").open("wb") as out:
        proc = subprocess.Popen(pushgateway_argv(settings, cfg), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: is_ready(settings, "pushgateway"), what="the Pushgateway")
        yield settings
    finally:
        proc.terminate()
        proc.wait(10)


def gateway_samples(settings: Settings) -> dict[tuple, float]:
    """{(metric, site, equipment_id, detector or severity): value} of the verdict series in /metrics."""
    text = monitoring_session(settings).get(f"{settings.prometheus.pushgateway_url}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # (the Pushgateway adds push_time_seconds / push_failure_time_seconds to every group)
            if sample.labels.get("job") == "vigil_anomalies" and sample.name.startswith("vigil_"):
                labels = sample.labels
                extra = labels.get("detector", labels.get("severity", ""))
                out[(sample.name, labels["site"], labels.get("equipment_id", ""), extra)] = sample.value
    return out


def test_pushgateway_shows_latest_verdicts_and_counts_each_anomalous_window_once(
    kafka_settings: KafkaSettings, pushgateway: Settings, tmp_path: Path
) -> None:
    kafka = fresh_kafka(kafka_settings)
    settings = pushgateway.model_copy(
        update={
            "data_dir": tmp_path,
            "kafka": kafka,
            "prometheus": pushgateway.prometheus.model_copy(
                update={"sink_consumer_group": f"pg-{uuid.uuid4().hex[:8]}"}
            ),
        }
    )
    start = recent_window_ms()
    first = critical("pg-1", start)
    produce(
        kafka,
        kafka.anomalies_topic,
        encoded(
            [
                verdict("pg-1", start - 5000),
                first,
                first,  # redelivered: one anomalous window, not two
                dead("pg-2", start),
                critical("pg-3", start, site="south/2", severity="warning", score=1.5, pca_t2q=1.5, rules=None),
            ]
        )
        + [("pg-bad", MALFORMED)],
    )
    sink = RunLoop(PushgatewaySink(settings), join_s=20)
    gauges = {
        ("vigil_anomaly_score", "plant-a", "pg-1", ""): 3.0,
        ("vigil_anomaly_severity", "plant-a", "pg-1", ""): 2.0,
        ("vigil_detector_score", "plant-a", "pg-1", "pca_t2q"): 3.0,
        ("vigil_detector_score", "plant-a", "pg-1", "isolation_forest"): 0.25,
        ("vigil_detector_score", "plant-a", "pg-1", "rules"): 1.5,
        ("vigil_machine_silent", "plant-a", "pg-1", ""): 0.0,
        ("vigil_anomaly_window_end_seconds", "plant-a", "pg-1", ""): (start + 5000) / 1000,
        ("vigil_anomaly_score", "plant-a", "pg-2", ""): 0.0,
        ("vigil_anomaly_severity", "plant-a", "pg-2", ""): 2.0,
        ("vigil_machine_silent", "plant-a", "pg-2", ""): 1.0,
        ("vigil_anomaly_window_end_seconds", "plant-a", "pg-2", ""): (start + 5000) / 1000,
        ("vigil_anomaly_score", "south/2", "pg-3", ""): 1.5,
        ("vigil_anomaly_severity", "south/2", "pg-3", ""): 1.0,
        ("vigil_detector_score", "south/2", "pg-3", "pca_t2q"): 1.5,
        ("vigil_detector_score", "south/2", "pg-3", "isolation_forest"): 0.25,
        ("vigil_machine_silent", "south/2", "pg-3", ""): 0.0,
        ("vigil_anomaly_window_end_seconds", "south/2", "pg-3", ""): (start + 5000) / 1000,
        ("vigil_anomalous_windows_total", "plant-a", "", "warning"): 0.0,
        ("vigil_anomalous_windows_total", "plant-a", "", "critical"): 1.0,
        ("vigil_anomalous_windows_total", "south/2", "", "warning"): 1.0,
        ("vigil_anomalous_windows_total", "south/2", "", "critical"): 0.0,
    }
    try:
        wait_for(lambda: gateway_samples(settings) == gauges, what="the verdict gauges in the Pushgateway")
        wait_for(lambda: sink.service.counters.bad_verdicts == 1, what="the malformed verdict counted")
    finally:
        sink.close()
    assert sink.service.counters.verdicts_consumed == 5

    # Restart: the state and the counters are seeded from the Pushgateway; pg-2 comes back to life and
    # pg-1 has another critical window, both delivered twice.
    again = RunLoop(PushgatewaySink(settings), join_s=20)
    try:
        newer = [verdict("pg-2", start + 5000), critical("pg-1", start + 5000), critical("pg-1", start + 5000)]
        produce(kafka, kafka.anomalies_topic, encoded(newer))
        after = gauges | {
            ("vigil_anomaly_score", "plant-a", "pg-2", ""): 0.5,
            ("vigil_anomaly_severity", "plant-a", "pg-2", ""): 0.0,
            ("vigil_detector_score", "plant-a", "pg-2", "pca_t2q"): 0.5,
            ("vigil_detector_score", "plant-a", "pg-2", "isolation_forest"): 0.25,
            ("vigil_machine_silent", "plant-a", "pg-2", ""): 0.0,
            ("vigil_anomaly_window_end_seconds", "plant-a", "pg-2", ""): (start + 10_000) / 1000,
            ("vigil_anomaly_window_end_seconds", "plant-a", "pg-1", ""): (start + 10_000) / 1000,
            ("vigil_anomalous_windows_total", "plant-a", "", "critical"): 2.0,
        }
        wait_for(lambda: gateway_samples(settings) == after, what="the new verdicts on top of the seeded state")
    finally:
        again.close()
    assert again.service.counters.verdicts_consumed == 3  # nothing re-read: the offsets were committed
