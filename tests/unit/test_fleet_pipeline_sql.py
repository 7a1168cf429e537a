"""The combined job (jobs/fleet_pipeline.py) equals the split pair of jobs on the same telemetry.

The same bounded file of raw telemetry goes (a) through the window-stats job into a file, and that file
through the anomaly-scoring job, and (b) through the combined job, whose scoring reads the windows in-job.
Window statistics and verdicts must be identical: the combined job only removes the wait for the next
window, it must not change a single verdict. Slow (~1.5 min: three Flink jobs).
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from onnx_models.registry import ModelRegistry
from tests.unit.test_anomaly_scoring_sql import (
    DEAD_AFTER_MS,
    HISTORY,
    SIZE_MS,
    T0,
    pump_series,
    read_json_dir,
    rules_config,
    table_env,
    train_pump_model,
)
from vigil.contracts import WINDOW_STATS_MARKER_PREFIX
from vigil.settings import ScoringSettings, Settings, WindowSettings

N_WINDOWS = 36
SAMPLES = 8
SPIKE_AT, MOTOR_LAST = 24, 20
KEY = ["equipment_id", "window_start_ms"]


def telemetry(rng: np.random.Generator) -> list[dict]:
    """Edge-style records (one per machine and window): two normal pumps (one spikes), a motor that goes silent."""
    machines = {
        "pump-0001": ("pump", pump_series(rng, N_WINDOWS)),
        "pump-0003": ("pump", pump_series(rng, N_WINDOWS)),
        "motor-0002": (
            "motor",
            {"current": 90.0 + rng.normal(0, 0.5, N_WINDOWS), "voltage": 400.0 + rng.normal(0, 0.3, N_WINDOWS)},
        ),
    }
    machines["pump-0001"][1]["flow"][SPIKE_AT] = 200.0  # beyond the static max
    records = []
    for w in range(N_WINDOWS):
        start = T0 + w * SIZE_MS
        ts = start + np.sort(rng.choice(SIZE_MS, SAMPLES, replace=False))
        for machine, (etype, series) in machines.items():
            if machine == "motor-0002" and w > MOTOR_LAST:
                continue
            sensors = [
                {"sensor": s, "unit": "u", "ts": ts, "v": mean[w] + rng.normal(0, 0.3, SAMPLES)}
                for s, mean in series.items()
            ]
            records.append(
                {
                    "equipment_id": machine,
                    "site": "site-1",
                    "equipment_type": etype,
                    "gateway_id": "gw",
                    "sequence": w,
                    "chunk_start_ms": start,
                    "event_time_ms": int(ts.max()),
                    "ingested_at_ms": 0,
                    "kafka_partition": 0,
                    "kafka_offset": len(records),
                    "sensors": sensors,
                }
            )
    return records


def files(path) -> str:
    return f"'connector' = 'filesystem', 'path' = '{path}', 'format' = 'json'"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    from jobs import anomaly_scoring, fleet_pipeline, window_stats

    tmp = tmp_path_factory.mktemp("fleet-pipeline")
    source = tmp / "telemetry"
    source.mkdir()
    (source / "telemetry.json").write_bytes(
        b"\n".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in telemetry(np.random.default_rng(3)))
    )
    settings = Settings(
        data_dir=tmp,
        window=WindowSettings(size_ms=SIZE_MS, allowed_lateness_ms=60_000),
        scoring=ScoringSettings(history_windows=HISTORY, dead_after_ms=DEAD_AFTER_MS),
    )
    train_pump_model(ModelRegistry(settings.models_dir))
    config = rules_config()
    telemetry_in = {
        "source_metadata_columns": "kafka_partition INT, kafka_offset BIGINT,",
        "source_options": files(source),
    }

    # (a) split: window-stats job -> file -> anomaly-scoring job
    split_stats, split_out = tmp / "split-stats", tmp / "split-out"
    overrides = telemetry_in | {
        "window_stats_sink_options": files(split_stats),
        "dead_letter_sink_options": files(tmp / "split-late"),
    }
    window_stats.JOB.build(table_env(tmp / "jars"), settings, **overrides).execute().wait()
    anomaly_scoring.JOB.build(
        table_env(tmp / "jars"),
        settings,
        config,
        window_stats_source_options=files(split_stats),
        anomalies_sink_options=files(split_out),
        dead_letter_sink_options=files(tmp / "split-scoring-late"),
    ).execute().wait()

    # (b) combined
    combined_stats, combined_out = tmp / "combined-stats", tmp / "combined-out"
    fleet_pipeline.JOB.build(
        table_env(tmp / "jars"),
        settings,
        config,
        **telemetry_in,
        window_stats_sink_options=files(combined_stats),
        anomalies_sink_options=files(combined_out),
        dead_letter_sink_options=files(tmp / "combined-late"),
    ).execute().wait()
    return {
        "split_stats": read_json_dir(split_stats),
        "split": read_json_dir(split_out),
        "combined_stats": read_json_dir(combined_stats),
        "combined": read_json_dir(combined_out),
    }


def test_same_window_statistics(runs) -> None:
    key = [*KEY, "sensor"]
    split, combined = runs["split_stats"], runs["combined_stats"]
    # Both write the same progress markers beside the windows (the split scoring job read them and skipped them).
    markers = [frame[frame.equipment_id.str.startswith(WINDOW_STATS_MARKER_PREFIX)] for frame in (split, combined)]
    assert len(markers[0]) == len(markers[1]) > 0
    split = split.drop(markers[0].index).sort_values(key).reset_index(drop=True)
    combined = combined.drop(markers[1].index).sort_values(key).reset_index(drop=True)
    assert len(split) == len(combined) == (2 * 4 + 2) * (MOTOR_LAST + 1) + 2 * 4 * (N_WINDOWS - MOTOR_LAST - 1)
    pd.testing.assert_frame_equal(split.drop(columns="emitted_at_ms"), combined.drop(columns="emitted_at_ms"))


def test_same_verdicts(runs) -> None:
    split, combined = runs["split"], runs["combined"]
    merged = split.merge(combined, on=KEY, how="outer", suffixes=("_split", "_combined"), indicator=True)
    assert (merged._merge == "both").all(), merged[merged._merge != "both"][KEY + ["_merge"]]
    assert len(merged) >= 3 * MOTOR_LAST
    for col in ("kind", "is_anomaly", "severity"):
        assert (merged[f"{col}_split"] == merged[f"{col}_combined"]).all(), col
    for col in ("detectors", "dead_sensors"):
        assert (merged[f"{col}_split"].map(list) == merged[f"{col}_combined"].map(list)).all(), col
    assert (merged["rule_hits_split"].map(sorted) == merged["rule_hits_combined"].map(sorted)).all()
    for col in ("score", "pca_t2q", "rules"):
        np.testing.assert_allclose(
            merged[f"{col}_split"].astype(float), merged[f"{col}_combined"].astype(float), rtol=1e-9, err_msg=col
        )


def test_the_comparison_covers_a_spike_a_model_and_a_silence(runs) -> None:
    combined = runs["combined"]
    spike = combined[(combined.equipment_id == "pump-0001") & (combined.window_start_ms == T0 + SPIKE_AT * SIZE_MS)]
    assert spike.detectors.map(list).iloc[0].count("threshold_max") == 1
    assert combined.pca_t2q.notna().any()  # the pump model scored in-job
    assert (combined[combined.equipment_id == "motor-0002"].kind == "dead_machine").sum() == 1
