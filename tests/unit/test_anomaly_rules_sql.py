"""The anomaly-rules job's SQL, run by Flink over a bounded file of window-stats records.

Same templates and rendering as the production job (jobs/anomaly_rules.py), with the Kafka source
and sink swapped for files, so the rules themselves are what is checked: which windows fire which
rule, the severity, and the EWMA z-score (Java UDAF in keyed state) against a numpy reference of the
same recurrences scored against the baseline before each value.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from udfs.rules import RulesConfig, parse_rules
from vigil.settings import Settings, WindowSettings

SIZE_MS = 5000
T0 = 1_795_000_000_000  # a window boundary
N_WINDOWS = 40
ALPHA, WARMUP = 0.1, 8
SPIKE_AT, JUMP_AT, FLAT = 30, 25, range(10, 16)  # window indices
STUCK_N = 4


def rules_config() -> RulesConfig:
    return parse_rules({
        "ewma": {"alpha": ALPHA, "warmup": WARMUP},
        "defaults": {"zscore_max": 50.0, "stuck_windows": 6},
        "equipment_types": {
            "pump": {
                "flow": {"min": 0.0, "max": 140.0, "max_step": 35.0},
                "discharge_pressure": {"min": 5.5, "max": 11.5, "max_step": 1.5},
                "speed": {"stuck_windows": STUCK_N},
                # A tiny limit makes nearly every post-warm-up window fire, exposing its z-score.
                "bearing_temp": {"zscore_max": 0.05},
            },
        },
    }, "test-rules")


def window_stats(rng: np.random.Generator) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Window-stats records in event-time order, plus each pump series' averages by sensor."""
    i = np.arange(N_WINDOWS)
    pump = {
        "flow": 70.0 + rng.normal(0, 0.3, N_WINDOWS),
        "discharge_pressure": 8.0 + rng.normal(0, 0.02, N_WINDOWS) + 2.5 * (i >= JUMP_AT),
        "speed": 1800.0 + rng.normal(0, 1.0, N_WINDOWS),
        "bearing_temp": 50.0 + np.cumsum(rng.normal(0, 0.2, N_WINDOWS)),
    }
    pump["flow"][SPIKE_AT] = 200.0  # beyond the static max
    normal_motor = {"current": 90.0 + rng.normal(0, 0.5, N_WINDOWS), "voltage": 400.0 + rng.normal(0, 0.3, N_WINDOWS)}
    records = []
    for w in range(N_WINDOWS):
        start = T0 + w * SIZE_MS
        for machine, etype, series in (("pump-0001", "pump", pump), ("motor-0002", "motor", normal_motor)):
            for sensor, values in series.items():
                flat = sensor == "speed" and w in FLAT
                records.append({
                    "equipment_id": machine, "site": "site-1", "equipment_type": etype, "sensor": sensor,
                    "unit": "u", "window_start_ms": start, "window_end_ms": start + SIZE_MS, "count": 10,
                    "avg": float(values[w]), "stddev": 0.0 if flat else 0.4, "min": float(values[w]) - 1,
                    "max": float(values[w]) + 1, "emitted_at_ms": start + SIZE_MS + 100,
                })
    return records, pump


def reference_zscores(x: np.ndarray, alpha: float, warmup: int, eps: float = 1e-9) -> np.ndarray:
    """Per-value loop of the EWMA recurrences: score against the baseline, then absorb. NaN in warm-up."""
    out = np.full(len(x), np.nan)
    mean = var = 0.0
    for count, v in enumerate(x):
        if count == 0:
            mean, var = v, 0.0
        d = v - mean
        if count >= warmup:
            out[count] = d / np.sqrt(var + eps)
        mean += alpha * d
        var = (1 - alpha) * (var + alpha * d * d)
    return out


def file_overrides(source, out) -> dict[str, str]:
    return {
        "window_stats_source_options": f"'connector' = 'filesystem', 'path' = '{source}', 'format' = 'json'",
        "anomalies_sink_options": f"'connector' = 'filesystem', 'path' = '{out}', 'format' = 'json'",
    }


def table_env(jars_dir):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from vigil.flink_jars import udf_jar

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.get_config().set("table.local-time-zone", "UTC")
    env.get_config().set("pipeline.jars", udf_jar(jars_dir).as_uri())
    return env


@pytest.fixture(scope="module")
def flink_anomalies(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    from jobs.anomaly_rules import build

    tmp = tmp_path_factory.mktemp("anomaly-rules")
    records, pump = window_stats(np.random.default_rng(11))
    source, out = tmp / "in", tmp / "out"
    source.mkdir()
    (source / "window_stats.json").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    settings = Settings(data_dir=tmp, window=WindowSettings(size_ms=SIZE_MS))
    env = table_env(tmp / "jars")
    build(env, settings, rules_config(), **file_overrides(source, out)).execute().wait()
    lines = [json.loads(line) for path in out.rglob("*") if path.is_file() and not path.name.startswith(".")
             for line in path.read_text().splitlines() if line.strip()]
    got = pd.DataFrame(lines)
    got["window"] = (got.window_start_ms - T0) // SIZE_MS
    return got, pump


def fired(got: pd.DataFrame, sensor: str, rule: str) -> list[int]:
    rows = got[(got.sensor == sensor) & got.rules.map(lambda rules: rule in rules)]
    return sorted(rows.window.tolist())


def test_spike_beyond_static_max_fires_threshold_max(flink_anomalies) -> None:
    got, _ = flink_anomalies
    assert fired(got, "flow", "threshold_max") == [SPIKE_AT]
    row = got[(got.sensor == "flow") & (got.window == SPIKE_AT)].iloc[0]
    assert row.severity == "critical" and row.detector == "rules" and row["avg"] == 200.0
    assert (row.equipment_id, row.site, row.equipment_type) == ("pump-0001", "site-1", "pump")
    assert row.window_end_ms - row.window_start_ms == SIZE_MS


def test_jump_fires_rate_of_change_once(flink_anomalies) -> None:
    got, _ = flink_anomalies
    # The spike is also a jump up and back down; the pressure step only where it happens.
    assert fired(got, "discharge_pressure", "rate_of_change") == [JUMP_AT]
    assert fired(got, "flow", "rate_of_change") == [SPIKE_AT, SPIKE_AT + 1]
    assert fired(got, "discharge_pressure", "threshold_max") == []


def test_consecutive_flat_windows_fire_stuck(flink_anomalies) -> None:
    got, _ = flink_anomalies
    # Six flat windows from 10: the per-sensor N=4 is reached at the 4th and holds while flat.
    assert fired(got, "speed", "stuck") == list(range(FLAT.start + STUCK_N - 1, FLAT.stop))
    stuck_only = got[(got.sensor == "speed") & (got.window == FLAT.start + STUCK_N - 1)].iloc[0]
    assert list(stuck_only.rules) == ["stuck"] and stuck_only.severity == "warning"


def test_zscore_matches_numpy_pre_update_baseline(flink_anomalies) -> None:
    got, pump = flink_anomalies
    want = reference_zscores(pump["bearing_temp"], ALPHA, WARMUP)
    expected_windows = np.flatnonzero(np.abs(np.nan_to_num(want)) > 0.05).tolist()
    assert len(expected_windows) >= N_WINDOWS - WARMUP - 5  # the test really compares many values
    assert fired(got, "bearing_temp", "zscore") == expected_windows
    rows = got[got.sensor == "bearing_temp"].sort_values("window")
    np.testing.assert_allclose(rows.zscore.to_numpy(), want[rows.window.to_numpy()], rtol=1e-12)
    # Warm-up windows carry no z-score at all (and so never fire).
    assert rows.window.min() >= WARMUP


def test_normal_rows_produce_nothing(flink_anomalies) -> None:
    got, _ = flink_anomalies
    assert "motor-0002" not in set(got.equipment_id)
    expected = {("flow", SPIKE_AT), ("flow", SPIKE_AT + 1), ("discharge_pressure", JUMP_AT)}
    expected |= {("speed", w) for w in range(FLAT.start + STUCK_N - 1, FLAT.stop)}
    pump_rows = {(s, w) for s, w in zip(got.sensor, got.window, strict=True) if s != "bearing_temp"}
    assert pump_rows == expected
    assert not got.duplicated(["equipment_id", "sensor", "window_start_ms"]).any()


def test_repo_rules_config_plans(tmp_path) -> None:
    """The shipped flink-conf/rules.yaml renders into SQL Flink accepts (with every CASE filled in)."""
    from jobs.anomaly_rules import build

    settings = Settings(data_dir=tmp_path)
    env = table_env(tmp_path / "jars")
    (tmp_path / "in").mkdir()
    plan = build(env, settings, None, **file_overrides(tmp_path / "in", tmp_path / "out")).explain()
    assert "EWMA_ZSCORE" in plan and "pump/flow" in plan
