"""The agents job on the real stack: verdicts on the anomalies topic -> a Flink session window closes the
episode -> RUN_AGENTS reads its evidence from ClickHouse -> insights on the insights topic -> the ClickHouse
sink stores them. The episode is a pump's frozen speed sensor, which the diagnostic decides by rule (no
model needed), so the test checks the whole path, not a classifier."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from connectors.clickhouse import INSIGHT_RECORDS, insert_rows, make_client, records_to_arrow
from connectors.kafka import make_consumer, make_producer
from edge.simulator.equipment import EQUIPMENT_TYPES
from operations.stack.services import Stack
from tests.conftest import stack_test_settings
from tests.integration.test_pipeline_e2e import poll
from vigil.settings import Settings

pytestmark = pytest.mark.integration

W = 5000
MACHINE = "agents-pump-0001"
BASELINE, EPISODE, AFTER = 40, 12, 8  # windows


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = stack_test_settings(tmp_path_factory.mktemp("agents-stack"))
    stack = Stack(settings)
    try:
        stack.up(("kafka", "clickhouse", "clickhouse-sink", "agents-job"))
        yield stack
    finally:
        stack.down()


def window_stats(
    settings: Settings, t0: int, machine: str = MACHINE, site: str = "site-1", shift: int = 0
) -> list[dict]:
    """A healthy pump whose speed reading freezes for the episode's windows (``shift`` windows later)."""
    pump = EQUIPMENT_TYPES["pump"]
    rows = []
    for k in range(BASELINE + EPISODE + AFTER):
        frozen = BASELINE + shift <= k < BASELINE + shift + EPISODE
        for i, spec in enumerate(pump.sensors):
            avg = spec.base + spec.load_gain * 0.5 + 0.01 * spec.span * ((k * 7 + i) % 5 - 2)
            sd = 0.0 if frozen and spec.name == "speed" else max(spec.noise, 1e-3)
            rows.append(
                {
                    "equipment_id": machine,
                    "site": site,
                    "equipment_type": "pump",
                    "sensor": spec.name,
                    "unit": spec.unit,
                    "window_start_ms": t0 + k * W,
                    "window_end_ms": t0 + (k + 1) * W,
                    "count": 10,
                    "avg": avg,
                    "stddev": sd,
                    "min": avg - 2 * sd,
                    "max": avg + 2 * sd,
                    "emitted_at_ms": t0 + (k + 1) * W,
                }
            )
    return rows


def verdicts(t0: int, machine: str = MACHINE, site: str = "site-1", shift: int = 0) -> list[dict]:
    out = []
    for k in range(BASELINE + EPISODE + AFTER):
        anomalous = BASELINE + shift <= k < BASELINE + shift + EPISODE
        out.append(
            {
                "equipment_id": machine,
                "site": site,
                "equipment_type": "pump",
                "window_start_ms": t0 + k * W,
                "window_end_ms": t0 + (k + 1) * W,
                "kind": "window",
                "is_anomaly": anomalous,
                "severity": "warning" if anomalous else "normal",
                "score": 1.5 if anomalous else 0.2,
                "scores": {"rules": 1.5 if anomalous else 0.0},
                "detectors": ["stuck"] if anomalous else [],
                "rule_hits": ["speed:stuck"] if anomalous else [],
                "top_sensors": ["speed"] if anomalous else [],
                "dead_sensors": [],
                "model_versions": "",
                "summary": "speed stuck" if anomalous else "",
                "last_seen_ms": t0 + (k + 1) * W,
                "emitted_at_ms": t0 + (k + 1) * W,
            }
        )
    return out


def produce(settings: Settings, topic: str, records: list[dict], every_partition: bool = False) -> None:
    """Keyed by machine, as the jobs write; ``every_partition``: a copy to each partition."""
    producer = make_producer(settings.kafka.as_identity("admin"))
    for record in records:
        if every_partition:
            for partition in range(settings.kafka.partitions):
                producer.produce(topic, value=orjson.dumps(record), partition=partition)
        else:
            producer.produce(topic, key=record["equipment_id"].encode(), value=orjson.dumps(record))
    assert producer.flush(30) == 0


def test_a_closed_episode_becomes_insights_in_kafka_and_clickhouse(stack: Stack) -> None:
    settings = stack.settings
    client = make_client(settings.clickhouse, "admin")
    t0 = (int(time.time() * 1000) // W - (BASELINE + EPISODE + AFTER)) * W
    produce(settings, settings.kafka.window_stats_topic, window_stats(settings, t0))
    total = (BASELINE + EPISODE + AFTER) * len(EQUIPMENT_TYPES["pump"].sensors)
    poll(
        lambda: (
            client.query(
                "SELECT count() FROM window_stats_latest WHERE equipment_id = {e:String}", parameters={"e": MACHINE}
            ).result_rows[0][0]
            == total
        ),
        60,
        "the window statistics in ClickHouse",
    )
    produce(settings, settings.kafka.anomalies_topic, verdicts(t0))
    # The other machines' verdicts: every partition's watermark passes the episode, as with a real fleet
    # (the test stack turns source idleness off, so a silent partition would hold the episode open).
    healthy = [
        dict(
            v,
            equipment_id="agents-pump-0002",
            is_anomaly=False,
            severity="normal",
            detectors=[],
            rule_hits=[],
            top_sensors=[],
            summary="",
        )
        for v in verdicts(t0)
    ]
    produce(settings, settings.kafka.anomalies_topic, healthy, every_partition=True)

    def insights() -> dict | None:
        rows = client.query(
            "SELECT agent, kind, fault_type, sensors, severity, confidence, details, episode_id, window_start, "
            "window_end FROM insights_latest WHERE equipment_id = {e:String}",
            parameters={"e": MACHINE},
        ).named_results()
        found = {(r["agent"], r["kind"]): r for r in rows}
        return (
            found
            if {("diagnostic", "diagnosis"), ("root_cause", "root_cause"), ("maintenance", "maintenance")} <= set(found)
            else None
        )

    found = poll(insights, 180, "the agents' insights in ClickHouse", interval=1.0)
    diagnosis = found[("diagnostic", "diagnosis")]
    assert diagnosis["fault_type"] == "sensor_stuck" and diagnosis["sensors"][0] == "speed"
    assert diagnosis["episode_id"] == f"{MACHINE}@{t0 + BASELINE * W}"
    assert int(diagnosis["window_end"].timestamp() * 1000) == t0 + (BASELINE + EPISODE) * W
    assert orjson.loads(diagnosis["details"])["by"] == "rule"
    assert found[("root_cause", "root_cause")]["sensors"][0] == "speed"
    maintenance = orjson.loads(found[("maintenance", "maintenance")]["details"])
    assert maintenance["actions"] and "sensor" in maintenance["actions"][0].lower()
    assert 0 < maintenance["health_index"] <= 100
    assert orjson.loads(diagnosis["details"])["open"] is False, "the closed episode's analysis is the one kept"

    # On the topic, the episode was also analysed as it stood at its 3rd anomalous window (preliminary: 9
    # windows shorter). Replayed at once here, the two may arrive in either order; ClickHouse kept the closed one.
    consumer = make_consumer(settings.kafka.as_identity("admin"), "agents-test-reader")
    consumer.subscribe([settings.kafka.insights_topic])
    seen: list[dict] = []

    def both() -> bool:
        for message in consumer.consume(500, timeout=1.0):
            if message.error() is None:
                seen.append(orjson.loads(message.value()))
        kinds = [(r["kind"], orjson.loads(r["details"]).get("open")) for r in seen if r["agent"] == "diagnostic"]
        return ("diagnosis", True) in kinds and ("diagnosis", False) in kinds

    try:
        poll(both, 60, "a preliminary and a final diagnosis on the insights topic", interval=0.0)
    finally:
        consumer.close()
    diagnoses = {r["closed"]: r for r in seen if r["agent"] == "diagnostic"}
    early, final = diagnoses[False], diagnoses[True]
    assert early["title"].startswith("Preliminary: Sensor stuck (speed)") and early["fault_type"] == "sensor_stuck"
    assert early["episode_id"] == final["episode_id"]
    assert final["window_end_ms"] - early["window_end_ms"] == (EPISODE - 3) * W

    # A preliminary analysis arriving after the closed one (a catch-up emits both at once) does not replace it.
    late = dict(early, emitted_at_ms=final["emitted_at_ms"] + 60_000, title="Preliminary: something else")
    table, malformed = records_to_arrow([orjson.dumps(late)], INSIGHT_RECORDS)
    assert not malformed
    insert_rows(client, settings.clickhouse.insights_table, table)
    kept = client.query(
        "SELECT title, closed FROM insights_latest WHERE episode_id = {e:String} AND agent = 'diagnostic'",
        parameters={"e": final["episode_id"]},
    ).result_rows
    assert kept == [(final["title"], 1)]


def test_machines_of_a_site_going_wrong_together_are_one_shared_cause(stack: Stack) -> None:
    """Three pumps of site-2 whose speed readings freeze within 15 s of each other: each closed episode looks up
    its site's neighbours; all three name the event the same, so ClickHouse holds ONE shared-cause row."""
    settings = stack.settings
    client = make_client(settings.clickhouse, "admin")
    # From now on: the other test's replay already moved the job's watermark to about now, and windows
    # behind a watermark are late (dropped by the session windows), as they would be in production.
    t0 = (int(time.time() * 1000) // W + 1) * W
    pumps = {f"agents-line-000{i}": shift for i, shift in ((1, 0), (2, 1), (3, 3))}
    for machine, shift in pumps.items():
        produce(settings, settings.kafka.window_stats_topic, window_stats(settings, t0, machine, "site-2", shift))
    produce(
        settings,
        settings.kafka.anomalies_topic,
        [v for machine, shift in pumps.items() for v in verdicts(t0, machine, "site-2", shift)],
    )
    # The verdicts reach ClickHouse seconds after their windows, long before an episode closes; here the
    # closing watermark (below) is held back until they are there.
    ready = (
        "SELECT (SELECT uniqExact(equipment_id) FROM anomalies WHERE site = 'site-2' AND is_anomaly = 1), "
        "(SELECT count() FROM window_stats_latest WHERE site = 'site-2')"
    )
    total = 3 * (BASELINE + EPISODE + AFTER) * len(EQUIPMENT_TYPES["pump"].sensors)
    poll(lambda: client.query(ready).result_rows[0] == (3, total), 60, "the three pumps' statistics and verdicts")
    healthy = [
        dict(
            v,
            equipment_id="agents-pump-0002",
            is_anomaly=False,
            severity="normal",
            detectors=[],
            rule_hits=[],
            top_sensors=[],
            summary="",
        )
        for v in verdicts(t0)
    ]
    produce(settings, settings.kafka.anomalies_topic, healthy, every_partition=True)

    def shared() -> list[dict] | None:
        rows = client.query(
            "SELECT episode_id, title, details FROM insights_latest WHERE kind = 'shared_cause' AND site = 'site-2'"
        ).named_results()
        rows = list(rows)
        stated = [orjson.loads(r["details"]) for r in rows]
        return rows if stated and all(len(d["machines"]) == 3 for d in stated) else None

    rows = poll(shared, 180, "the shared cause in ClickHouse", interval=1.0)
    reporters = client.query(
        "SELECT uniqExact(equipment_id) FROM insights_latest WHERE site = 'site-2' AND kind = 'root_cause'"
    ).result_rows[0][0]
    assert reporters == 3  # every pump's episode was analysed
    client.command(f"OPTIMIZE TABLE {settings.clickhouse.insights_table} FINAL")
    rows = shared()
    assert rows is not None and len(rows) == 1, rows  # one cause, one insight
    details = orjson.loads(rows[0]["details"])
    assert details["machines"] == sorted(pumps) and details["role"] == "speed"
    assert rows[0]["episode_id"] == f"shared:site-2::speed:{t0 + BASELINE * W}"
    assert rows[0]["title"].startswith("3 machines on site-2 deviated together (speed)")
