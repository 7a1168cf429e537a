"""The anomaly-scoring job, run by Flink over a bounded file of window-stats records.

Same templates, rendering and UDF as the production job (jobs/anomaly_scoring.py), with the Kafka
source and sinks swapped for files, so what is checked is the job itself: which windows fire which
rule, the EWMA z-score (Java UDAF in keyed state) against a numpy reference, ONNX model scores inside
Flink against offline scoring of the same windows, dead sensors, silent machines, one verdict per window.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from detectors import score_names
from detectors.pca_t2q import PcaT2Q
from onnx_models.features import window_features
from onnx_models.registry import ModelRegistry
from vigil.rules import RulesConfig, parse_rules
from vigil.settings import ScoringSettings, Settings, WindowSettings

SIZE_MS = 5000
T0 = 1_795_000_000_000  # a window boundary
N_WINDOWS = 40
ALPHA, WARMUP = 0.1, 8
SPIKE_AT, JUMP_AT, FLAT = 30, 25, range(10, 16)  # window indices
STUCK_N = 4
COUNT_DROP = range(35, 39)  # pump-0001's flow loses 40 % of its samples (sample-count rule: > 25 %)
COUNT_PERSIST = 3  # the rule's default: that many short windows in a row
LONE_SHORT = 20  # one short window of pump-0001's flow and motor-0002's voltage: a hiccup, not a drop
MOTOR_LAST, BEARING_LAST = 30, 19  # last window with data (motor-0002 / pump-0003's bearing_temp)
DEAD_AFTER_MS = 15_000
HISTORY = 5
PUMP_SENSORS = ("flow", "discharge_pressure", "speed", "bearing_temp")


def rules_config() -> RulesConfig:
    return parse_rules(
        {
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
        },
        "test-rules",
    )


def window_stats(rng: np.random.Generator) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Window-stats records in event-time order, plus pump-0001's averages by sensor.

    pump-0001: a spike, a jump, flat windows. motor-0002: normal, silent after MOTOR_LAST.
    pump-0003: normal, its bearing_temp stops after BEARING_LAST.
    """
    i = np.arange(N_WINDOWS)
    pump = pump_series(rng)
    pump["flow"][SPIKE_AT] = 200.0  # beyond the static max
    pump["discharge_pressure"] = pump["discharge_pressure"] + 2.5 * (i >= JUMP_AT)
    other_pump = pump_series(rng)
    normal_motor = {"current": 90.0 + rng.normal(0, 0.5, N_WINDOWS), "voltage": 400.0 + rng.normal(0, 0.3, N_WINDOWS)}
    records = []
    for w in range(N_WINDOWS):
        start = T0 + w * SIZE_MS
        for machine, etype, series in (
            ("pump-0001", "pump", pump),
            ("motor-0002", "motor", normal_motor),
            ("pump-0003", "pump", other_pump),
        ):
            if machine == "motor-0002" and w > MOTOR_LAST:
                continue
            for sensor, values in series.items():
                if machine == "pump-0003" and sensor == "bearing_temp" and w > BEARING_LAST:
                    continue
                flat = machine == "pump-0001" and sensor == "speed" and w in FLAT
                records.append(
                    {
                        "equipment_id": machine,
                        "site": "site-1",
                        "equipment_type": etype,
                        "sensor": sensor,
                        "unit": "u",
                        "window_start_ms": start,
                        "window_end_ms": start + SIZE_MS,
                        "count": sample_count(machine, sensor, w),
                        "avg": float(values[w]),
                        "stddev": 0.0 if flat else 0.4,
                        "min": float(values[w]) - 1,
                        "max": float(values[w]) + 1,
                        "emitted_at_ms": start + SIZE_MS + 100,
                    }
                )
    return records, pump


def sample_count(machine: str, sensor: str, w: int) -> int:
    """10 samples a window; pump-0001's flow drops, and motor-0002's current jitters 8-12 as ~2 Hz data does."""
    if (machine, sensor) in (("pump-0001", "flow"), ("motor-0002", "voltage")) and w == LONE_SHORT:
        return 5
    if machine == "pump-0001" and sensor == "flow" and w in COUNT_DROP:
        return 6
    if machine == "motor-0002" and sensor == "current":
        return (12, 10, 8, 10)[w % 4]
    return 10


def pump_series(rng: np.random.Generator, n: int = N_WINDOWS) -> dict[str, np.ndarray]:
    return {
        "flow": 70.0 + rng.normal(0, 0.3, n),
        "discharge_pressure": 8.0 + rng.normal(0, 0.02, n),
        "speed": 1800.0 + rng.normal(0, 1.0, n),
        "bearing_temp": 50.0 + np.cumsum(rng.normal(0, 0.2, n)),
    }


def pump_stats_frame(series: dict[str, np.ndarray], machine: str = "pump-train") -> pd.DataFrame:
    """Long window-stats rows (as ClickHouse holds them) for one pump, to train and to score offline."""
    n = len(next(iter(series.values())))
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "equipment_id": machine,
                    "sensor": sensor,
                    "window_start": T0 + np.arange(n) * SIZE_MS,
                    "count": 10.0,
                    "avg": values,
                    "stddev": 0.4,
                    "min": values - 1,
                    "max": values + 1,
                }
            )
            for sensor, values in series.items()
        ],
        ignore_index=True,
    )


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


def file_overrides(source, out, dead_letters) -> dict[str, str]:
    def files(path) -> str:
        return f"'connector' = 'filesystem', 'path' = '{path}', 'format' = 'json'"

    return {
        "window_stats_source_options": files(source),
        "anomalies_sink_options": files(out),
        "dead_letter_sink_options": files(dead_letters),
    }


def table_env(jars_dir):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from jobs.flink_jars import job_jars

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.get_config().set("table.local-time-zone", "UTC")
    env.get_config().set("pipeline.jars", ";".join(jar.as_uri() for jar in job_jars(jars_dir)))
    return env


def read_json_dir(path) -> pd.DataFrame:
    """The job's JSON output; a verdict's ``scores`` map becomes one column per known score (NaN: absent)."""
    lines = [
        json.loads(line)
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".")
        for line in p.read_text().splitlines()
        if line.strip()
    ]
    frame = pd.DataFrame(lines)
    if "scores" in frame:
        assert all(isinstance(v, dict) for v in frame["scores"]), "scores must be a JSON object in every verdict"
        columns = {name: frame["scores"].map(lambda d, n=name: d.get(n, np.nan)) for name in score_names()}
        frame = frame.assign(**columns)
    return frame


def train_pump_model(registry: ModelRegistry) -> PcaT2Q:
    """A PCA model for the pump type on normal windows, registered (and so live) like `vigil train` does."""
    frame = pump_stats_frame(pump_series(np.random.default_rng(5), n=400))
    x, names, _ = window_features(frame, history=HISTORY)
    model = PcaT2Q(variance=0.95).fit(x, names)
    registry.register(
        "pump",
        "pca_t2q",
        model.to_onnx(),
        {
            "feature_names": names,
            "threshold": model.threshold,
            "threshold_method": "t2/q limits",
            "history": HISTORY,
            "window_size_ms": SIZE_MS,
            "sensors": sorted(PUMP_SENSORS),
        },
    )
    return model


@pytest.fixture(scope="module")
def flink_anomalies(tmp_path_factory: pytest.TempPathFactory):
    from jobs.anomaly_scoring import JOB

    tmp = tmp_path_factory.mktemp("anomaly-scoring")
    records, pump = window_stats(np.random.default_rng(11))
    source, out, dead_letters = tmp / "in", tmp / "out", tmp / "dead-letters"
    source.mkdir()
    (source / "window_stats.json").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    settings = Settings(
        data_dir=tmp,
        window=WindowSettings(size_ms=SIZE_MS),
        scoring=ScoringSettings(history_windows=HISTORY, dead_after_ms=DEAD_AFTER_MS),
    )
    model = train_pump_model(ModelRegistry(settings.models_dir))
    env = table_env(tmp / "jars")
    JOB.build(env, settings, rules_config(), **file_overrides(source, out, dead_letters)).execute().wait()
    got = read_json_dir(out)
    got["window"] = (got.window_start_ms - T0) // SIZE_MS
    return got, pump, model


def of(got: pd.DataFrame, machine: str) -> pd.DataFrame:
    return got[(got.equipment_id == machine) & (got.kind == "window")].set_index("window").sort_index()


def fired(got: pd.DataFrame, sensor: str, rule: str, machine: str = "pump-0001") -> list[int]:
    rows = of(got, machine)
    return sorted(rows.index[rows.rule_hits.map(lambda hits: f"{sensor}:{rule}" in hits)].tolist())


def test_one_verdict_per_window_with_data(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    windows = got[got.kind == "window"]
    assert not windows.duplicated(["equipment_id", "window_start_ms"]).any()
    counts = windows.groupby("equipment_id").size().to_dict()
    assert counts == {"pump-0001": N_WINDOWS, "pump-0003": N_WINDOWS, "motor-0002": MOTOR_LAST + 1}
    assert (windows.window_end_ms - windows.window_start_ms == SIZE_MS).all()
    assert set(got.severity) <= {"normal", "warning", "critical"}


def test_spike_beyond_static_max_fires_threshold_max(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    assert fired(got, "flow", "threshold_max") == [SPIKE_AT]
    row = of(got, "pump-0001").loc[SPIKE_AT]
    assert row.severity == "critical" and row.is_anomaly and "threshold_max" in row.detectors
    assert row.top_sensors[0] == "flow"
    assert (row.site, row.equipment_type) == ("site-1", "pump")
    assert "flow:threshold_max" in row.summary


def test_jump_fires_rate_of_change_once(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    # The spike is also a jump up and back down; the pressure step only where it happens.
    assert fired(got, "discharge_pressure", "rate_of_change") == [JUMP_AT]
    assert fired(got, "flow", "rate_of_change") == [SPIKE_AT, SPIKE_AT + 1]
    assert fired(got, "discharge_pressure", "threshold_max") == []


def test_consecutive_flat_windows_fire_stuck(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    # Six flat windows from 10: the per-sensor N=4 is reached at the 4th and holds while flat.
    assert fired(got, "speed", "stuck") == list(range(FLAT.start + STUCK_N - 1, FLAT.stop))


def test_missing_samples_fire_count_drop(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    # From the third short window in a row; the lone short window and motor-0002's jitter never fire.
    assert fired(got, "flow", "count_drop") == list(COUNT_DROP)[COUNT_PERSIST - 1 :]
    assert all(fired(got, s, "count_drop") == [] for s in ("speed", "bearing_temp", "discharge_pressure"))
    # Hard evidence ranks first, even though the PCA model finds discharge_pressure far off since its jump.
    top = of(got, "pump-0001").loc[COUNT_DROP[COUNT_PERSIST - 1], "top_sensors"]
    assert top[0] == "flow" and "discharge_pressure" in top


def test_rules_score_is_the_zscore_over_its_limit(flink_anomalies) -> None:
    got, pump, _ = flink_anomalies
    want = np.abs(reference_zscores(pump["bearing_temp"], ALPHA, WARMUP)) / 0.05
    rows = of(got, "pump-0001")
    assert rows.loc[: WARMUP - 1, "rules"].isna().all()  # warm-up: no z-score, no rules score
    # bearing_temp's limit is tiny (0.05) and the others' 50, so its ratio is the maximum.
    np.testing.assert_allclose(rows.loc[WARMUP:, "rules"].to_numpy(float), want[WARMUP:], rtol=1e-9)
    expected = np.flatnonzero(np.nan_to_num(want) > 1.0).tolist()
    assert len(expected) >= N_WINDOWS - WARMUP - 5 and fired(got, "bearing_temp", "zscore") == expected


def test_model_scores_equal_offline_scoring_of_the_same_windows(flink_anomalies) -> None:
    got, pump, model = flink_anomalies
    x, _, _ = window_features(pump_stats_frame(pump, "pump-0001"), history=HISTORY)
    offline = model.score(x) / model.threshold
    rows = of(got, "pump-0001")
    np.testing.assert_allclose(rows["pca_t2q"].to_numpy(float), offline, rtol=2e-4)
    assert (rows.model_versions == "pca_t2q=v0001").all()
    assert rows.loc[SPIKE_AT, "pca_t2q"] > 1.0 and "pca_t2q" in rows.loc[SPIKE_AT, "detectors"]
    assert of(got, "motor-0002")["pca_t2q"].isna().all()  # no motor model: rules only


def test_dead_sensor_after_dead_after_ms(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    rows = of(got, "pump-0003")
    dead = rows.index[rows.dead_sensors.map(lambda s: list(s) == ["bearing_temp"])].tolist()
    first = BEARING_LAST + DEAD_AFTER_MS // SIZE_MS  # silence counted from the end of its last window
    assert dead == list(range(first, N_WINDOWS))
    assert rows.loc[first, "severity"] == "warning" and rows.loc[first, "top_sensors"][0] == "bearing_temp"
    assert rows.loc[:BEARING_LAST, "pca_t2q"].notna().all() and rows.loc[BEARING_LAST + 1 :, "pca_t2q"].isna().all()


def test_one_dead_machine_record_per_silence(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    dead = got[got.kind == "dead_machine"].set_index("equipment_id")
    # motor-0002 fell silent after MOTOR_LAST; at the end of the file every machine falls silent.
    assert dead.loc["motor-0002", "window"] == MOTOR_LAST + DEAD_AFTER_MS // SIZE_MS
    assert dead.loc["motor-0002", "last_seen_ms"] == T0 + (MOTOR_LAST + 1) * SIZE_MS
    assert dead.loc["motor-0002", "severity"] == "critical"
    assert list(dead.loc["motor-0002", "detectors"]) == ["dead_machine"]
    assert sorted(dead.index) == ["motor-0002", "pump-0001", "pump-0003"]


def test_normal_machine_windows_are_normal(flink_anomalies) -> None:
    got, _, _ = flink_anomalies
    motor = of(got, "motor-0002")
    assert (motor.severity == "normal").all() and not motor.is_anomaly.any()
    assert (motor.summary == "").all() and motor.detectors.map(len).eq(0).all()


def test_repo_rules_config_plans(tmp_path) -> None:
    """The shipped flink-conf/rules.yaml renders into SQL Flink accepts (with every CASE filled in)."""
    from jobs.anomaly_scoring import JOB

    settings = Settings(data_dir=tmp_path)
    env = table_env(tmp_path / "jars")
    (tmp_path / "in").mkdir()
    overrides = file_overrides(tmp_path / "in", tmp_path / "out", tmp_path / "dl")
    plan = JOB.build(env, settings, None, **overrides).explain()
    assert "EWMA_ZSCORE" in plan and "pump/flow" in plan and "SCORE_HOPS" in plan
