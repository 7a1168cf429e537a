"""Anomaly verdicts in both sinks, no servers: JSON -> Arrow rows for ClickHouse, and the exact
Prometheus exposition of the Pushgateway sink (latest verdict per machine, counted once per key)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest

import jobs.pushgateway_sink as pushgateway_sink
from connectors.clickhouse import ANOMALIES_ARROW_SCHEMA, ANOMALY_MALFORMED_REASON, anomalies_to_arrow, render_schema
from detectors import score_names
from jobs.clickhouse_sink import anomalies_spec, insights_spec, table_specs, window_stats_spec
from jobs.pushgateway_sink import PushgatewaySink
from vigil.contracts import anomaly_json_schema
from vigil.settings import ClickHouseSettings, Settings

NOW = 1_700_000_100.0  # wall clock of every render (seconds)
T0 = 1_717_000_000_000  # 2024-05-29 16:26:40 UTC, in ms
SCORE_NAMES = score_names()


def verdict(equipment_id: str = "m1", start_ms: int = T0, **overrides: object) -> dict:
    base = {
        "equipment_id": equipment_id,
        "site": "plant-a",
        "equipment_type": "pump",
        "window_start_ms": start_ms,
        "window_end_ms": start_ms + 5000,
        "kind": "window",
        "is_anomaly": True,
        "severity": "critical",
        "score": 2.5,
        "scores": {"pca_t2q": 2.5, "rules": 1.25},
        "detectors": ["pca_t2q", "threshold_max"],
        "rule_hits": ["bearing_temp:threshold_max"],
        "top_sensors": ["bearing_temp", "vibration"],
        "dead_sensors": [],
        "model_versions": "isolation_forest=v0001 pca_t2q=v0002",
        "summary": "critical: pca_t2q, threshold_max (bearing_temp:threshold_max)",
        "last_seen_ms": start_ms + 5000,
        "emitted_at_ms": start_ms + 5400,
    }
    # A detector's score given by name (None: it did not score) goes into the scores object.
    scores = dict(overrides.pop("scores", base["scores"]))  # type: ignore[call-overload]
    for name in [k for k in overrides if k in SCORE_NAMES]:
        value = overrides.pop(name)
        scores.pop(name, None)
        if value is not None:
            scores[name] = value
    base.update(scores=scores, **overrides)
    return base


def encode(*records: dict) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def test_test_record_has_exactly_the_contract_fields() -> None:
    assert list(verdict()) == anomaly_json_schema(SCORE_NAMES).names


# ---------------------------------------------------------------------------------------------
# ClickHouse: JSON -> Arrow
# ---------------------------------------------------------------------------------------------


def test_verdicts_become_exact_rows_of_the_anomalies_table() -> None:
    dead = verdict(
        "m2",
        T0 + 5000,
        equipment_type="fan",
        kind="dead_machine",
        score=0.0,
        pca_t2q=None,
        rules=None,
        detectors=["dead_machine"],
        rule_hits=[],
        top_sensors=[],
        dead_sensors=["flow", "rpm"],
        model_versions="",
        summary="critical: no data from m2 for 15 s",
        last_seen_ms=T0 - 10_000,
    )
    table, malformed = anomalies_to_arrow(encode(verdict(), dead), SCORE_NAMES)
    assert malformed == []
    assert table.schema == ANOMALIES_ARROW_SCHEMA
    rows = table.to_pylist()
    assert rows[0] == {
        "equipment_id": "m1",
        "site": "plant-a",
        "equipment_type": "pump",
        "window_start": datetime(2024, 5, 29, 16, 26, 40, tzinfo=UTC),
        "window_end": datetime(2024, 5, 29, 16, 26, 45, tzinfo=UTC),
        "kind": "window",
        "is_anomaly": 1,
        "severity": "critical",
        "score": 2.5,
        "scores": [("pca_t2q", 2.5), ("rules", 1.25)],
        "detectors": ["pca_t2q", "threshold_max"],
        "rule_hits": ["bearing_temp:threshold_max"],
        "top_sensors": ["bearing_temp", "vibration"],
        "dead_sensors": [],
        "model_versions": "isolation_forest=v0001 pca_t2q=v0002",
        "summary": "critical: pca_t2q, threshold_max (bearing_temp:threshold_max)",
        "last_seen": datetime(2024, 5, 29, 16, 26, 45, tzinfo=UTC),
        "emitted_at": datetime(2024, 5, 29, 16, 26, 45, 400000, tzinfo=UTC),
    }
    assert rows[1] == {
        "equipment_id": "m2",
        "site": "plant-a",
        "equipment_type": "fan",
        "window_start": datetime(2024, 5, 29, 16, 26, 45, tzinfo=UTC),
        "window_end": datetime(2024, 5, 29, 16, 26, 50, tzinfo=UTC),
        "kind": "dead_machine",
        "is_anomaly": 1,
        "severity": "critical",
        "score": 0.0,
        "scores": [],
        "detectors": ["dead_machine"],
        "rule_hits": [],
        "top_sensors": [],
        "dead_sensors": ["flow", "rpm"],
        "model_versions": "",
        "summary": "critical: no data from m2 for 15 s",
        "last_seen": datetime(2024, 5, 29, 16, 26, 30, tzinfo=UTC),
        "emitted_at": datetime(2024, 5, 29, 16, 26, 50, 400000, tzinfo=UTC),
    }


def test_normal_verdict_and_absent_detector_scores() -> None:
    record = verdict(is_anomaly=False, severity="normal", score=0.5, pca_t2q=0.5, rules=0.25, detectors=[])
    unknown = verdict("m9", scores={"not_a_detector": 3.0, "isolation_forest": 0.75})
    no_scores = verdict("m8")
    del no_scores["scores"]  # a verdict may leave the scores out altogether
    table, malformed = anomalies_to_arrow(encode(record, unknown, no_scores), SCORE_NAMES)
    assert malformed == []
    assert table.select(["is_anomaly", "severity", "score", "scores"]).to_pylist() == [
        {"is_anomaly": 0, "severity": "normal", "score": 0.5, "scores": [("pca_t2q", 0.5), ("rules", 0.25)]},
        # a key no declared detector has is not stored (the registry names what a verdict can score)
        {"is_anomaly": 1, "severity": "critical", "score": 2.5, "scores": [("isolation_forest", 0.75)]},
        {"is_anomaly": 1, "severity": "critical", "score": 2.5, "scores": []},
    ]


def test_malformed_verdicts_are_separated_with_their_position_and_reason() -> None:
    without_score = verdict("m-3")
    del without_score["score"]
    values = encode(verdict("m-0"))
    values += [
        b"{not json",  # 1
        orjson.dumps(without_score),  # 2: the combined score is required
        orjson.dumps(verdict("m-4", kind="dead")),  # 3
        orjson.dumps(verdict("m-5", severity="high")),  # 4
        orjson.dumps(verdict("m-6", window_end_ms=T0)),  # 5
        orjson.dumps(verdict("")),  # 6
        orjson.dumps(verdict("m-8", dead_sensors=None)),  # 7: arrays are required (may be empty)
        orjson.dumps(verdict("m-9", top_sensors=["a", None])),  # 8
        orjson.dumps(verdict("m-10", is_anomaly="yes")),  # 9: wrong type
        orjson.dumps(verdict("m-11", is_anomaly=None)),  # 10
    ]
    values += encode(verdict("m-12"))
    table, malformed = anomalies_to_arrow(values, SCORE_NAMES)

    assert table.column("equipment_id").to_pylist() == ["m-0", "m-12"]
    assert [m.index for m in malformed] == list(range(1, 11))
    assert all(m.value == values[m.index] for m in malformed)  # the original bytes, for the DLQ
    reasons = {m.index: m.detail for m in malformed}
    assert reasons[2] == "missing or null field 'score'"
    assert reasons[3] == "kind is not one of window, dead_machine"
    assert reasons[4] == "severity is not one of normal, warning, critical"
    assert reasons[5] == "window_end_ms <= window_start_ms"
    assert reasons[6] == "empty equipment_id"
    assert reasons[7] == "missing or null field 'dead_sensors'"
    assert reasons[8] == "null element in 'top_sensors'"
    assert reasons[10] == "missing or null field 'is_anomaly'"
    for index in (1, 9):
        assert reasons[index].startswith("invalid JSON record")


def test_schema_renders_the_anomalies_table_and_view_under_their_configured_names() -> None:
    ddl = render_schema(
        ClickHouseSettings(
            database="db1",
            anomalies_table="verdicts",
            anomalies_view="verdicts_now",
            insights_table="findings",
            fault_labels_table="known_faults",
        )
    )
    creates = [re.search(r"^(CREATE|ALTER) [^\n(]*", s, re.MULTILINE).group(0).strip() for s in ddl]  # type: ignore[union-attr]
    assert creates == [
        "CREATE DATABASE IF NOT EXISTS db1",
        "CREATE TABLE IF NOT EXISTS db1.window_stats",
        "CREATE OR REPLACE VIEW db1.window_stats_latest AS",
        "CREATE TABLE IF NOT EXISTS db1.verdicts",
        "ALTER TABLE db1.verdicts ADD COLUMN IF NOT EXISTS scores Map",
        "CREATE OR REPLACE VIEW db1.verdicts_now AS",
        "CREATE DATABASE IF NOT EXISTS db1",
        "CREATE TABLE IF NOT EXISTS db1.alert_deliveries",
        "CREATE TABLE IF NOT EXISTS db1.machine_state",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db1.machine_state_mv TO db1.machine_state AS",
        "CREATE TABLE IF NOT EXISTS db1.findings",
        "CREATE OR REPLACE VIEW db1.findings_latest AS",
        "CREATE TABLE IF NOT EXISTS db1.known_faults",
        "ALTER TABLE db1.window_stats MODIFY SETTING non_replicated_deduplication_window = 1000",
        "ALTER TABLE db1.verdicts MODIFY SETTING non_replicated_deduplication_window = 1000",
        "ALTER TABLE db1.findings MODIFY SETTING non_replicated_deduplication_window = 1000",
    ]  # 001 before 002: the database exists before the anomalies table is created in it; 003: the relay's log
    table, view = ddl[3], ddl[5]
    assert "ENGINE = ReplacingMergeTree(emitted_at)" in table
    assert "PARTITION BY toDate(window_start)" in table
    assert "ORDER BY (equipment_id, window_start)" in table
    assert "TTL toDateTime(window_start) + INTERVAL 400 DAY" in table
    assert "is_anomaly       UInt8," in table
    assert "scores           Map(LowCardinality(String), Float64)," in table
    assert view.endswith("FROM db1.verdicts FINAL")
    assert ddl[-7].endswith("FROM db1.verdicts")  # the console's machine_state follows the configured table
    assert "ORDER BY (equipment_id, episode_id, agent, kind, closed)" in ddl[-6]
    assert "FROM db1.findings FINAL" in ddl[-5] and ddl[-5].endswith("LIMIT 1 BY equipment_id, episode_id, agent, kind")
    assert "ORDER BY (equipment_id, start, label_id)" in ddl[-4]
    with pytest.raises(ValueError, match="VIGIL_CLICKHOUSE__ANOMALIES_TABLE='bad-name'"):
        render_schema(ClickHouseSettings(anomalies_table="bad-name"))


def test_one_table_spec_per_topic_each_with_its_own_consumer_group() -> None:
    settings = Settings(clickhouse={"sink_consumer_group": "g", "anomalies_table": "verdicts"})
    assert [(s.topic, s.table, s.consumer_group, s.records.malformed_reason) for s in table_specs(settings)] == [
        ("vigil.window-stats", "window_stats", "g", "malformed_window_stats"),
        ("vigil.anomalies", "verdicts", "g-anomalies", ANOMALY_MALFORMED_REASON),
        ("vigil.insights", "insights", "g-insights", "malformed_insight"),
    ]
    assert table_specs(settings) == [window_stats_spec(settings), anomalies_spec(settings), insights_spec(settings)]


# ---------------------------------------------------------------------------------------------
# Pushgateway: exposition
# ---------------------------------------------------------------------------------------------


def live(equipment_id: str, end_s: float, **overrides: object) -> dict:
    """A verdict whose window ended at ``end_s`` (seconds), relative to the fixed render clock."""
    start_ms = int(end_s * 1000) - 5000
    return verdict(equipment_id, start_ms, last_seen_ms=start_ms + 5000, emitted_at_ms=start_ms + 5400, **overrides)


@pytest.fixture
def sink(tmp_path) -> PushgatewaySink:
    settings = Settings(data_dir=tmp_path, prometheus={"series_ttl_s": 600})
    return PushgatewaySink(settings, clock=lambda: NOW)


SCORE_HEAD = (
    "# HELP vigil_anomaly_score Combined anomaly score of the machine's latest verdict: the max of its detector "
    "scores, each normalised to its threshold (above 1 fires).\n# TYPE vigil_anomaly_score gauge\n"
)
SEVERITY_HEAD = (
    "# HELP vigil_anomaly_severity Severity of the machine's latest verdict: 0 normal, 1 warning, 2 critical.\n"
    "# TYPE vigil_anomaly_severity gauge\n"
)
DETECTOR_HEAD = (
    "# HELP vigil_detector_score Score of each detector that scored the machine's latest verdict, normalised to "
    "its threshold (1 = at the alarm limit).\n# TYPE vigil_detector_score gauge\n"
)
SILENT_HEAD = (
    "# HELP vigil_machine_silent 1 after a dead_machine verdict until the machine's next window verdict, else 0.\n"
    "# TYPE vigil_machine_silent gauge\n"
)
END_HEAD = (
    "# HELP vigil_anomaly_window_end_seconds End (event time, Unix seconds) of the window of the machine's latest "
    "verdict.\n# TYPE vigil_anomaly_window_end_seconds gauge\n"
)
COUNTER_HEAD = (
    "# HELP vigil_anomalous_windows_total Window verdicts of the site's machines that were anomalous, by severity "
    "(each window once).\n# TYPE vigil_anomalous_windows_total counter\n"
)


def test_exact_exposition_of_the_latest_verdicts_per_site(sink: PushgatewaySink) -> None:
    assert (
        sink.ingest_anomalies(
            encode(
                live("m1", NOW - 10),
                live("m1", NOW - 10),  # redelivered: counted once
                live("m1", NOW - 15, severity="warning", score=1.5, pca_t2q=1.5),  # older window: counted, not shown
                live("m2", NOW - 5, equipment_type='fan "x"', kind="dead_machine", score=0.0, pca_t2q=None, rules=None),
                live(
                    "m4",
                    NOW - 5,
                    site="south/2",
                    is_anomaly=False,
                    severity="normal",
                    score=0.5,
                    pca_t2q=0.5,
                    isolation_forest=0.25,
                    rules=None,
                ),
            )
        )
        == 5
    )
    texts = sink.render_anomalies()
    assert sorted(texts) == ["plant-a", "south/2"]
    m1 = '{equipment_id="m1",equipment_type="pump"}'
    m2 = '{equipment_id="m2",equipment_type="fan \\"x\\""}'
    assert texts["plant-a"] == (
        SCORE_HEAD
        + f"vigil_anomaly_score{m1} 2.5\nvigil_anomaly_score{m2} 0\n"
        + SEVERITY_HEAD
        + f"vigil_anomaly_severity{m1} 2\nvigil_anomaly_severity{m2} 2\n"
        + DETECTOR_HEAD
        + 'vigil_detector_score{equipment_id="m1",equipment_type="pump",detector="pca_t2q"} 2.5\n'
        + 'vigil_detector_score{equipment_id="m1",equipment_type="pump",detector="rules"} 1.25\n'
        + SILENT_HEAD
        + f"vigil_machine_silent{m1} 0\nvigil_machine_silent{m2} 1\n"
        + END_HEAD
        + f"vigil_anomaly_window_end_seconds{m1} 1700000090\n"
        + f"vigil_anomaly_window_end_seconds{m2} 1700000095\n"
        + COUNTER_HEAD
        + 'vigil_anomalous_windows_total{severity="warning"} 1\n'
        + 'vigil_anomalous_windows_total{severity="critical"} 1\n'
    )
    m4 = '{equipment_id="m4",equipment_type="pump"}'
    assert texts["south/2"] == (
        SCORE_HEAD
        + f"vigil_anomaly_score{m4} 0.5\n"
        + SEVERITY_HEAD
        + f"vigil_anomaly_severity{m4} 0\n"
        + DETECTOR_HEAD
        + 'vigil_detector_score{equipment_id="m4",equipment_type="pump",detector="pca_t2q"} 0.5\n'
        + 'vigil_detector_score{equipment_id="m4",equipment_type="pump",detector="isolation_forest"} 0.25\n'
        + SILENT_HEAD
        + f"vigil_machine_silent{m4} 0\n"
        + END_HEAD
        + f"vigil_anomaly_window_end_seconds{m4} 1700000095\n"
        + COUNTER_HEAD
        + 'vigil_anomalous_windows_total{severity="warning"} 0\n'
        + 'vigil_anomalous_windows_total{severity="critical"} 0\n'
    )
    assert sink.counters.verdicts_consumed == 5
    # Window stats and verdicts go to separate jobs; no window stats were consumed.
    assert sink.render_groups() == {
        ("vigil_anomalies", "plant-a"): texts["plant-a"],
        ("vigil_anomalies", "south/2"): texts["south/2"],
    }


def test_silent_until_the_next_window_verdict_and_redeliveries_never_count_twice(sink: PushgatewaySink) -> None:
    sink.ingest_anomalies(encode(live("m1", NOW - 20), live("m1", NOW - 10, kind="dead_machine")))
    assert 'vigil_machine_silent{equipment_id="m1",equipment_type="pump"} 1\n' in sink.render_anomalies()["plant-a"]
    # A later batch: the machine is back (normal window), plus redeliveries of already counted keys
    # and a late re-delivery of the older verdict (must not override the newest).
    sink.ingest_anomalies(
        encode(
            live("m1", NOW - 5, is_anomaly=False, severity="normal", score=0.25, pca_t2q=0.25, rules=None),
            live("m1", NOW - 20),
            live("m1", NOW - 20, severity="warning"),  # a re-emission with another verdict: same key, not counted
        )
    )
    text = sink.render_anomalies()["plant-a"]
    assert 'vigil_machine_silent{equipment_id="m1",equipment_type="pump"} 0\n' in text
    assert 'vigil_anomaly_score{equipment_id="m1",equipment_type="pump"} 0.25\n' in text
    assert 'vigil_anomaly_severity{equipment_id="m1",equipment_type="pump"} 0\n' in text
    assert text.endswith(
        'vigil_anomalous_windows_total{severity="warning"} 0\nvigil_anomalous_windows_total{severity="critical"} 1\n'
    )  # dead_machine is not a window


def test_dedup_memory_is_bounded(sink: PushgatewaySink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pushgateway_sink, "DEDUP_MAX_KEYS", 3)
    sink.ingest_anomalies(encode(*(live("m1", NOW - 100 + 5 * i) for i in range(5))))
    assert len(sink._seen_keys) == 3  # the newest three windows
    sink.ingest_anomalies(encode(live("m1", NOW - 80), live("m1", NOW - 100)))  # remembered / forgotten
    assert sink.render_anomalies()["plant-a"].endswith('{severity="critical"} 6\n')
    # Keys older than series_ttl_s (event time) before the newest are forgotten too.
    sink.ingest_anomalies(encode(live("m1", NOW + 600)))
    assert sink._seen_starts.tolist() == [int(NOW + 595) * 1000]


def test_stale_verdicts_expire_like_window_stats(sink: PushgatewaySink) -> None:
    sink.ingest_anomalies(encode(live("m1", NOW - 10), live("m2", NOW - 601, site="west")))
    assert list(sink.render_anomalies()) == ["plant-a"]  # west's only machine is past the 600 s TTL
    assert list(sink.render_anomalies(now=NOW + 590)) == ["plant-a"]
    assert sink.render_anomalies(now=NOW + 591) == {}


def test_invalid_verdicts_are_skipped_and_counted(sink: PushgatewaySink) -> None:
    values = encode(live("m1", NOW - 5), live("m2", NOW - 5, kind="dead"), live("m3", NOW - 5, severity="high"))
    values += [b"{not json", orjson.dumps({"equipment_id": "m4", "site": "x"})]
    assert sink.ingest_anomalies(values) == 1
    assert (sink.counters.verdicts_consumed, sink.counters.bad_verdicts, sink.counters.bad_records) == (1, 4, 0)
    assert 'equipment_id="m1"' in sink.render_anomalies()["plant-a"]
    pipeline = sink.render_pipeline()
    assert "vigil_sink_verdicts_consumed_total 1\n" in pipeline
    assert "vigil_sink_bad_verdicts_total 4\n" in pipeline
