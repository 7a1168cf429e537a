"""The job's window SQL, run by Flink over a bounded file of telemetry records, against numpy.

Same templates as the production job (sql/flink/), with the Kafka source and sink swapped for
files, so the statistics themselves are what is checked: counts, avg, population stddev, min,
max, window boundaries, and the numerically awkward cases (constant values, large offsets with
tiny variance, values split over several records of one window).
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from vigil.contracts import WINDOW_STATS_MARKER_PREFIX
from vigil.settings import Settings, WindowSettings

SIZE_MS = 5000
T0 = 1_795_000_000_000  # a window boundary


def telemetry_records(rng: np.random.Generator) -> tuple[list[dict], pd.DataFrame]:
    """Records as the edge writes them (one per machine and window chunk) plus the flat samples."""
    sensors = {
        "noisy": lambda n: rng.normal(50.0, 3.0, n),
        "constant": lambda n: np.full(n, 7.25),
        "offset_tiny_var": lambda n: 1.0e6 + rng.normal(0.0, 1e-3, n),
        "negative": lambda n: rng.uniform(-40.0, -10.0, n),
    }
    records: list[dict] = []
    flat: list[pd.DataFrame] = []
    for machine in ("pump-0001", "motor-0002"):
        for window in range(4):
            start = T0 + window * SIZE_MS
            # Two records per window (a batch straddling the boundary arrives as two chunks).
            for part in range(2):
                series = []
                for name, make in sensors.items():
                    n = int(rng.integers(1, 12))
                    ts = np.sort(rng.integers(start, start + SIZE_MS, n))
                    values = make(n)
                    series.append({"sensor": name, "unit": "u", "ts": ts, "v": values})
                    flat.append(pd.DataFrame({"equipment_id": machine, "sensor": name, "ts": ts, "v": values}))
                records.append(
                    {
                        "equipment_id": machine,
                        "site": "site-1",
                        "equipment_type": machine.split("-")[0],
                        "gateway_id": "gw",
                        "sequence": window * 2 + part,
                        "chunk_start_ms": start,
                        "event_time_ms": int(max(s["ts"].max() for s in series)),
                        "ingested_at_ms": 0,
                        "kafka_partition": 0,
                        "kafka_offset": len(records),
                        "sensors": series,
                    }
                )
    return records, pd.concat(flat, ignore_index=True)


@pytest.fixture(scope="module")
def flink_windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from jobs.flink_env import render_sql

    tmp = tmp_path_factory.mktemp("window-math")
    records, samples = telemetry_records(np.random.default_rng(5))
    source = tmp / "in"
    source.mkdir()
    (source / "telemetry.json").write_bytes(
        b"\n".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in records)
    )
    out = tmp / "out"
    settings = Settings(data_dir=tmp, window=WindowSettings(size_ms=SIZE_MS, allowed_lateness_ms=60_000))
    overrides = {
        "source_metadata_columns": "kafka_partition INT, kafka_offset BIGINT,",
        "source_options": f"'connector' = 'filesystem', 'path' = '{source}', 'format' = 'json'",
        "window_stats_sink_options": f"'connector' = 'filesystem', 'path' = '{out}', 'format' = 'json'",
    }
    from jobs.flink_jars import job_jars

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.get_config().set("table.local-time-zone", "UTC")
    env.get_config().set("pipeline.jars", ";".join(jar.as_uri() for jar in job_jars(tmp / "jars")))
    for name in (
        "functions",
        "telemetry_source",
        "window_stats_sink",
        "classify_lateness",
        "samples_on_time",
        "windows",
        "partition_keys_function",
        "progress_markers",
    ):
        env.execute_sql(render_sql(f"window_stats/{name}", settings, **overrides))
    env.execute_sql(render_sql("window_stats/insert_window_stats", settings, **overrides)).wait()
    lines = [
        json.loads(line)
        for path in out.rglob("*")
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    frame = pd.DataFrame(lines)
    markers = frame.equipment_id.str.startswith(WINDOW_STATS_MARKER_PREFIX)
    return frame[~markers].reset_index(drop=True), samples, frame[markers].reset_index(drop=True)


def expected(samples: pd.DataFrame) -> pd.DataFrame:
    samples = samples.assign(window_start_ms=samples.ts - samples.ts % SIZE_MS)
    grouped = samples.groupby(["equipment_id", "sensor", "window_start_ms"]).v
    return grouped.agg(
        count="count", avg="mean", stddev=lambda v: float(np.std(v.to_numpy())), min="min", max="max"
    ).reset_index()


def test_one_row_per_machine_sensor_window(flink_windows) -> None:
    got, samples, _ = flink_windows
    want = expected(samples)
    assert len(got) == len(want) == 2 * 4 * 4
    assert not got.duplicated(["equipment_id", "sensor", "window_start_ms"]).any()
    assert (got.window_end_ms - got.window_start_ms == SIZE_MS).all()


def test_statistics_match_numpy(flink_windows) -> None:
    got, samples, _ = flink_windows
    merged = expected(samples).merge(got, on=["equipment_id", "sensor", "window_start_ms"], suffixes=("", "_f"))
    assert (merged["count"] == merged["count_f"]).all()
    for stat in ("avg", "min", "max"):
        np.testing.assert_allclose(merged[f"{stat}_f"], merged[stat], rtol=1e-12, err_msg=stat)
    # Including 1e6 +- 1e-3, where sums of squares (Flink's STDDEV_POP) would lose every digit.
    np.testing.assert_allclose(merged["stddev_f"], merged["stddev"], rtol=1e-6, atol=1e-12)


def test_constant_sensor_has_zero_stddev_not_nan(flink_windows) -> None:
    got, _, _ = flink_windows
    constant = got[got.sensor == "constant"]
    assert constant["stddev"].notna().all()
    assert (constant["stddev"] == 0.0).all()
    assert (constant["avg"] == 7.25).all()


def test_one_progress_marker_per_partition_and_window(flink_windows) -> None:
    got, _, markers = flink_windows
    partitions = Settings().kafka.partitions
    per_window = markers.groupby("window_start_ms").equipment_id.agg(["nunique", "size"])
    assert set(per_window.index) == set(got.window_start_ms), "a marker set for every window the watermark closed"
    assert (per_window["nunique"] == partitions).all() and (per_window["size"] == partitions).all()
    assert (markers["count"] == 0).all() and (markers[["site", "sensor", "unit"]] == "").all().all()
    assert (markers.window_end_ms - markers.window_start_ms == SIZE_MS).all()
