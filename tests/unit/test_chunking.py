"""Window-aligned chunking: boundaries, exact round trip, nothing lost."""

from __future__ import annotations

import numpy as np
import orjson

from edge.chunking import batch_to_records
from edge.proto import telemetry_pb2
from edge.validation import BatchValidator
from vigil.settings import EdgeSettings

WINDOW = 5000
NOW = 1_750_000_002_500  # not window-aligned on purpose


def build(series: dict[str, tuple[list[int], list[float]]]) -> telemetry_pb2.ReadingBatch:
    batch = telemetry_pb2.ReadingBatch(
        equipment_id="motor-7", site="plant-2", equipment_type="motor", gateway_id="gw-2", sequence=42
    )
    for name, (ts, vals) in series.items():
        batch.sensors.add(sensor=name, unit="mm/s", timestamps_ms=ts, values=vals)
    return batch


def chunk(batch: telemetry_pb2.ReadingBatch) -> list[dict]:
    result = BatchValidator(EdgeSettings()).validate(batch, now_ms=NOW + 60_000)
    assert result.ok, result.detail
    records = batch_to_records(batch, result.arrays, WINDOW, ingested_at_ms=NOW + 123)
    assert all(key == b"motor-7" for key, _ in records)
    return [orjson.loads(value) for _, value in records]


def test_one_record_per_window_with_all_sensors() -> None:
    start = NOW - NOW % WINDOW  # window boundary
    ts = [start - 1000, start - 1, start, start + 4999, start + 5000]
    batch = build({"a": (ts, [1.0, 2.0, 3.0, 4.0, 5.0]), "b": (ts[2:4], [30.0, 40.0])})
    records = chunk(batch)
    assert [r["chunk_start_ms"] for r in records] == [start - WINDOW, start, start + WINDOW]
    first, middle, last = records
    assert [s["sensor"] for s in first["sensors"]] == ["a"]
    assert first["sensors"][0]["ts"] == [start - 1000, start - 1]
    assert [s["sensor"] for s in middle["sensors"]] == ["a", "b"]
    assert middle["sensors"][0] == {
        "sensor": "a",
        "unit": "mm/s",
        "ts": [start, start + 4999],
        "v": [3.0, 4.0],
    }
    assert middle["sensors"][1]["v"] == [30.0, 40.0]
    assert last["sensors"][0]["ts"] == [start + 5000] and last["event_time_ms"] == start + 5000
    for record in records:
        assert record["event_time_ms"] == max(max(s["ts"]) for s in record["sensors"])
        assert record["chunk_start_ms"] <= record["event_time_ms"] < record["chunk_start_ms"] + WINDOW
        for s in record["sensors"]:
            assert all(t - t % WINDOW == record["chunk_start_ms"] for t in s["ts"])
        header = ("equipment_id", "site", "equipment_type", "gateway_id", "sequence")
        assert {k: record[k] for k in header} == {
            "equipment_id": "motor-7",
            "site": "plant-2",
            "equipment_type": "motor",
            "gateway_id": "gw-2",
            "sequence": 42,
        }
        assert record["ingested_at_ms"] == NOW + 123


def test_values_and_timestamps_round_trip_exactly_and_nothing_is_lost() -> None:
    rng = np.random.default_rng(3)
    series = {}
    for name in ("vib_x", "vib_y", "temp"):
        ts = np.sort(rng.integers(NOW - 20_000, NOW, size=200))
        vals = rng.normal(0, 1e6, size=200) * rng.choice([1e-300, 1.0, 1e300], size=200)
        vals[:3] = [0.1 + 0.2, -0.0, 5e-324]  # classic float traps
        series[name] = (ts.tolist(), vals.tolist())
    records = chunk(build(series))
    assert len(records) >= 4
    for name, (ts, vals) in series.items():
        got_ts = [t for r in records for s in r["sensors"] if s["sensor"] == name for t in s["ts"]]
        got_v = [x for r in records for s in r["sensors"] if s["sensor"] == name for x in s["v"]]
        assert got_ts == ts
        assert np.array_equal(np.array(got_v, dtype=np.float64), np.array(vals, dtype=np.float64))
        assert [float(x).hex() for x in got_v] == [float(x).hex() for x in vals]  # bit-exact, incl. -0.0


def test_unsorted_samples_are_grouped_by_window_keeping_their_order() -> None:
    start = NOW - NOW % WINDOW
    ts = [start + 10, start - 10, start + 20, start - 20]
    records = chunk(build({"a": (ts, [1.0, 2.0, 3.0, 4.0])}))
    assert [r["chunk_start_ms"] for r in records] == [start - WINDOW, start]
    assert records[0]["sensors"][0] == {
        "sensor": "a",
        "unit": "mm/s",
        "ts": [start - 10, start - 20],
        "v": [2.0, 4.0],
    }
    assert records[0]["event_time_ms"] == start - 10
    assert records[1]["sensors"][0]["v"] == [1.0, 3.0]


def test_empty_series_is_skipped() -> None:
    start = NOW - NOW % WINDOW
    records = chunk(build({"a": ([start + 1], [1.5]), "idle": ([], [])}))
    assert len(records) == 1 and [s["sensor"] for s in records[0]["sensors"]] == ["a"]
