"""The sim evaluator's offline replay equals the streaming job: same window stats in, same verdicts out.

`vigil evaluate --dataset sim` recomputes the job's per-sensor rules in pandas (the JVM part of the job)
and calls the job's scorer on hops it builds itself. This runs the real anomaly-scoring job (PyFlink
local mode, the production SQL and UDFs, files instead of Kafka, as tests/unit/test_anomaly_scoring_sql.py
does) on the simulated run's window statistics and compares every verdict. Slow (~1 min: a Flink job).
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from detectors import job_detectors
from onnx_models.registry import ModelRegistry
from operations.evaluate.sim import PlannedFault, SimOptions, rule_results, score_run, simulate, train_models
from tests.unit.test_anomaly_scoring_sql import file_overrides, read_json_dir, table_env
from udfs.model_set import ModelSet
from udfs.scoring import ScoringConfig, WindowScorer
from vigil.rules import load_rules
from vigil.settings import Settings

W = 5000
OPTIONS = SimOptions(
    machines=8,
    duration_s=1200,
    seed=3,
    fault_rate=3.0,
    dead_machines=1,
    dead_sensors=1,
    inject=(
        PlannedFault("stuck", "pump-0001", 700, 240, ("flow",)),
        PlannedFault("step", "fan-0001", 800, 120, ("speed",), 2000.0),
    ),
)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    from jobs.anomaly_scoring import JOB

    tmp = tmp_path_factory.mktemp("sim-vs-flink")
    settings = Settings(data_dir=tmp)
    train_end = OPTIONS.start_ms + 96 * W
    run = simulate(settings, OPTIONS, train_end)
    config = load_rules(settings.scoring.rules_path)
    rules = rule_results(run.stats, config)
    registry = ModelRegistry(settings.models_dir)  # where the job reads models
    train_models(run, train_end, registry, history=settings.scoring.history_windows)
    expected = {etype: sorted(sensors) for etype, sensors in config.equipment_types.items()}
    scoring = settings.scoring
    scorer = WindowScorer(
        expected,
        ModelSet(registry, expected.get, poll_s=float("inf")),
        ScoringConfig(model_persistence=scoring.model_persistence_windows),
    )
    # every window from the first on, as the job scores them (models trained on the first 96 windows)
    offline = score_run(run, rules, run.start_ms, scorer, scoring.hop_windows, 10_000)

    st = run.stats
    records = pd.DataFrame(
        {
            "equipment_id": st.equipment_id,
            "site": st.site,
            "equipment_type": st.equipment_type,
            "sensor": st.sensor,
            "unit": "u",
            "window_start_ms": st.window_start_ms,
            "window_end_ms": st.window_start_ms + W,
            "count": st["count"].astype(np.int64),
            "avg": st.avg,
            "stddev": st.stddev,
            "min": st["min"],
            "max": st["max"],
            "emitted_at_ms": st.window_start_ms + W + 100,
        }
    ).sort_values(["window_start_ms", "equipment_id", "sensor"])
    source, out, dead_letters = tmp / "in", tmp / "out", tmp / "dead-letters"
    source.mkdir()
    (source / "window_stats.json").write_bytes(b"\n".join(orjson.dumps(r) for r in records.to_dict("records")))
    env = table_env(tmp / "jars")
    JOB.build(env, settings, config, **file_overrides(source, out, dead_letters)).execute().wait()
    flink = read_json_dir(out)
    return offline[offline.emit], flink, train_end, run.end_ms


def test_same_verdicts_as_the_flink_job(both) -> None:
    offline, flink, _, end_ms = both
    merged = offline.merge(
        flink, on=["equipment_id", "window_start_ms"], how="outer", suffixes=("_py", "_fl"), indicator=True
    )
    # Flink also judges the hops after the file ends (every machine falls silent): past the run, not scored.
    extra = merged[merged._merge == "right_only"]
    assert (extra.window_start_ms >= end_ms).all() and (extra.kind_fl == "dead_machine").all()
    assert (merged._merge != "left_only").all()
    same = merged[merged._merge == "both"]
    assert len(same) == len(offline) > 8 * 230  # 240 windows per machine, minus the dead machine's silence
    for col in ("kind", "is_anomaly", "severity"):
        assert (same[f"{col}_py"] == same[f"{col}_fl"]).all(), col
    for col in ("detectors", "dead_sensors"):
        assert (same[f"{col}_py"].map(list) == same[f"{col}_fl"].map(list)).all(), col
    # rule_hits: same set; the order follows the hop's row order (ARRAY_AGG arrival order in Flink)
    assert (same["rule_hits_py"].map(sorted) == same["rule_hits_fl"].map(sorted)).all()
    for col in (*job_detectors(), "rules"):
        np.testing.assert_allclose(
            same[f"{col}_py"].astype(float), same[f"{col}_fl"].astype(float), rtol=1e-4, err_msg=col
        )


def test_the_comparison_covers_every_rule_and_silence(both) -> None:
    offline, _, _, _ = both
    fired = set(offline.detectors.explode().dropna())
    assert {
        "threshold_max",
        "stuck",
        "zscore",
        "rate_of_change",
        "dead_sensor",
        "dead_machine",
        "pca_t2q",
        "isolation_forest",
    } <= fired
