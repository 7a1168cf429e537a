"""`vigil evaluate --dataset sim`: the scorecard metrics on hand-computed cases, the offline replica of the
job's window statistics and rules on small series, and the evaluator end to end on a tiny fleet."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from detectors import job_detectors
from edge.simulator.faults import FaultLabel
from operations.evaluate.metrics import fault_scorecard, fault_window_pairs
from operations.evaluate.sim import (
    PlannedFault,
    SimEvaluation,
    SimOptions,
    build_hops,
    evaluate_sim,
    fault_category,
    print_sim_result,
    rule_results,
    summary_dict,
    window_stats,
)
from tests.unit.test_anomaly_scoring_sql import reference_zscores
from vigil.rules import parse_rules
from vigil.settings import Settings

W = 5000


# -- metrics -------------------------------------------------------------------------------------------------
def _grid(machines: list[str], flagged: set[tuple[str, int]], n: int = 10) -> pd.DataFrame:
    starts = np.arange(n) * W
    frame = pd.DataFrame({"machine": np.repeat(machines, n), "window_start_ms": np.tile(starts, len(machines))})
    frame["flagged"] = [(m, int(ws)) in flagged for m, ws in zip(frame.machine, frame.window_start_ms, strict=True)]
    return frame


FAULTS = pd.DataFrame(
    {
        "machine": ["m1", "m2", "m2"],
        "category": ["step", "spike", "drift"],
        "start_ms": [12_000, 40_000, -10_000],  # the drift started before the scored span: no event, one fault window
        "end_ms": [27_000, 41_000, 3_000],
    }
)


def test_fault_window_pairs_overlap_boundaries() -> None:
    windows = _grid(["m1"], set())
    pairs = fault_window_pairs(windows, FAULTS.iloc[:1], W)
    # [12000, 27000) overlaps windows starting 10000, 15000, 20000, 25000 (not 5000: it ends at 10000)
    assert windows.window_start_ms.to_numpy()[pairs.row.to_numpy()].tolist() == [10_000, 15_000, 20_000, 25_000]
    tail = fault_window_pairs(windows, FAULTS.iloc[:1], W, tail_ms=3_000)  # up to 30000, exclusive
    assert windows.window_start_ms.to_numpy()[tail.row.to_numpy()].tolist() == [10_000, 15_000, 20_000, 25_000]
    tail = fault_window_pairs(windows, FAULTS.iloc[:1], W, tail_ms=3_001)
    assert windows.window_start_ms.to_numpy()[tail.row.to_numpy()].max() == 30_000


def test_scorecard_hand_computed() -> None:
    flagged = {("m1", 15_000), ("m1", 20_000), ("m1", 30_000), ("m1", 0), ("m2", 45_000), ("m2", 10_000)}
    card = fault_scorecard(_grid(["m1", "m2"], flagged), FAULTS, W, grace_ms=5_000)
    # roles: m1 fault 10000-25000, grace 30000; m2 fault 0 (drift) and 40000 (spike), grace 5000 and 45000
    assert card.grace_windows == 3 and card.grace_flagged == 2
    assert card.negative_windows == 11 and card.fp_windows == 2  # m1@0, m2@10000
    assert card.fp_rate == pytest.approx(2 / 11)
    t = card.by_type
    assert list(t.index) == ["drift", "spike", "step", "all"]
    step = t.loc["step"]
    assert (step.fault_windows, step.tp, step.fn, step.fp) == (4, 2, 2, 2)
    assert (step.precision, step.recall, step.f1) == (0.5, 0.5, 0.5)  # one-vs-normal: 2 / (2 + 2 FP)
    assert (step.events, step.detected, step.delay_p50_s) == (1, 1, 8.0)  # first flagged 15000-20000, start 12000
    spike = t.loc["spike"]
    assert (spike.tp, spike.fn, spike.precision, spike.recall, spike.f1) == (0, 1, 0.0, 0.0, 0.0)
    assert (spike.events, spike.detected, spike.delay_p50_s) == (1, 1, 10.0)  # found in its grace window 45000
    drift = t.loc["drift"]
    assert (drift.fault_windows, drift.events) == (1, 0)
    assert math.isnan(drift.event_recall) and math.isnan(drift.delay_p50_s)
    everything = t.loc["all"]
    assert (everything.tp, everything.fn, everything.fp) == (2, 4, 2)
    assert everything.precision == 0.5 and everything.recall == pytest.approx(1 / 3)
    assert everything.f1 == pytest.approx(0.4)  # 2TP / (2TP + FP + FN) = 4 / 10
    assert (everything.events, everything.detected, everything.event_recall) == (2, 2, 1.0)
    assert everything.delay_p50_s == 9.0 and everything.delay_p95_s == pytest.approx(9.9)
    assert card.events.set_index("category").loc["step", "first_window_ms"] == 15_000
    assert sorted(card.window_role.tolist()).count("fault") == 6


def test_scorecard_nothing_flagged_and_missing_columns() -> None:
    card = fault_scorecard(_grid(["m1", "m2"], set()), FAULTS, W, grace_ms=0)
    assert card.fp_windows == 0 and card.grace_windows == 0
    assert card.by_type.loc["all", "detected"] == 0 and math.isnan(card.by_type.loc["all", "precision"])
    assert card.by_type.loc["all", "recall"] == 0.0
    with pytest.raises(ValueError, match="missing columns.*flagged"):
        fault_scorecard(_grid(["m1"], set()).drop(columns="flagged"), FAULTS, W, grace_ms=0)


def test_fault_category_splits_dropouts() -> None:
    def label(sensors: tuple[str, ...], fault_type: str = "dropout", p: float = 1.0) -> FaultLabel:
        return FaultLabel("fan-0001", "site-1", "fan", sensors, fault_type, 0, 1000, {"probability": p})

    every = ("speed", "air_flow", "static_pressure", "motor_current", "bearing_temp", "vibration_rms")
    assert fault_category(label(every)) == "dead_machine"
    assert fault_category(label(("speed",))) == "dead_sensor"
    assert fault_category(label(every, p=0.5)) == "dropout_partial"
    assert fault_category(label(("speed",), "step")) == "step"


# -- window statistics and rules (the job's definitions, replayed) ----------------------------------------
def test_window_stats_match_the_job_definition() -> None:
    # machine a: samples at 1000..9000 (windows 0 and 5000); machine b: one sample dropped (NaN)
    t = np.array([[1000, 2000, 3000, 4999, 5000, 6000, 9000], [100, 200, 300, 4000, 4500, 4900, 5100]])
    v = np.array([[[1.0, 2.0, 3.0, 6.0, 0.3, 0.3, 0.3]], [[5.0, np.nan, 7.0, 1.0, 1.0, 1.0, 2.0]]])
    got = window_stats("fan", ["a", "b"], ["speed"], t, v, W).set_index(["equipment_id", "window_start_ms"])
    a0 = got.loc[("a", 0)]
    assert (a0["count"], a0["avg"], a0["min"], a0["max"]) == (4, 3.0, 1.0, 6.0)
    assert a0["stddev"] == pytest.approx(np.std([1.0, 2.0, 3.0, 6.0]))
    assert got.loc[("a", 5000), "count"] == 3 and got.loc[("a", 5000), "stddev"] == 0.0  # exactly, not 5.6e-17
    b0 = got.loc[("b", 0)]
    assert (b0["count"], b0["avg"]) == (5, 3.0) and b0["stddev"] == pytest.approx(np.std([5.0, 7.0, 1.0, 1.0, 1.0]))
    assert got.loc[("b", 5000), "count"] == 1 and got.loc[("b", 5000), "stddev"] == 0.0
    assert len(got) == 4


def _series(avg: np.ndarray, stddev: np.ndarray, sensor: str = "flow", machine: str = "pump-0001") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "equipment_id": machine,
            "site": "site-1",
            "equipment_type": "pump",
            "sensor": sensor,
            "window_start_ms": np.arange(len(avg)) * W,
            "count": 10.0,
            "avg": avg,
            "stddev": stddev,
            "min": avg - 1,
            "max": avg + 1,
        }
    )


def test_rule_results_hand_computed() -> None:
    config = parse_rules(
        {
            "ewma": {"alpha": 0.2, "warmup": 3},
            "defaults": {"zscore_max": 3.0, "stuck_windows": 4},
            "equipment_types": {"pump": {"flow": {"min": 0.0, "max": 100.0, "max_step": 30.0, "stuck_windows": 3}}},
        },
        "test",
    )
    avg = np.array([50.0, 51.0, 49.0, 50.0, 120.0, 50.0, 50.5, 49.5, 50.0, -5.0])
    sd = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    other = _series(np.full(10, 7.0), np.zeros(10), sensor="speed")  # no limits listed: z-score and stuck (N=4)
    stats = pd.concat([_series(avg, sd), other], ignore_index=True)
    out = rule_results(stats, config)
    flow = out[out.sensor == "flow"].reset_index(drop=True)
    z = np.abs(reference_zscores(avg, 0.2, 3))
    np.testing.assert_allclose(flow.zratio.to_numpy(), z / 3.0, rtol=1e-12)  # NaN in warm-up on both sides
    expected = [
        "",
        "",
        "",
        "",
        "threshold_max,rate_of_change,zscore",
        "rate_of_change",
        "",
        "stuck",
        "stuck",
        "threshold_min,rate_of_change,zscore",
    ]
    got = flow.rule_hits.tolist()
    # window 4: 120 > max, step 70 > 30; window 5: step back; 7, 8: three flat windows in a row (N=3)
    assert got[:9] == expected[:9]
    assert got[9].startswith("threshold_min,rate_of_change")
    assert ("zscore" in got[9]) == (z[9] > 3.0)
    speed = out[out.sensor == "speed"].rule_hits.tolist()
    assert speed == [""] * 3 + ["stuck"] * 7  # flat from the start, N=4 by default; constant: z stays 0
    assert list(out.columns[-2:]) == ["rule_hits", "zratio"] and len(out) == len(stats)


def test_build_hops_like_the_hop_window() -> None:
    rows = pd.concat([_series(np.arange(6.0), np.ones(6)), _series(np.arange(2.0), np.ones(2), machine="pump-0002")])
    rows = rows.assign(rule_hits="", zratio=np.nan)
    long, current = build_hops(rows, first_ms=3 * W, end_ms=8 * W, history_windows=3, window_ms=W)
    keys = list(zip(current.equipment_id, current.window_start_ms // W, strict=True))
    # pump-0001: windows 0..5, hops for current 3..7 (6 and 7 still hold 4, 5); pump-0002 (windows 0, 1): only
    # current 3, whose 3-window hop still holds window 1; from current 4 on its hops are empty, so they do not exist
    assert keys == [
        ("pump-0001", 3),
        ("pump-0001", 4),
        ("pump-0001", 5),
        ("pump-0001", 6),
        ("pump-0001", 7),
        ("pump-0002", 3),
    ]
    sizes = long.groupby("group").window_start_ms.apply(lambda s: sorted(s // W)).tolist()
    assert sizes == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5], [5], [1]]
    assert (long.groupby("group").sensor.size() == [3, 3, 3, 2, 1, 1]).all()


# -- end to end --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimEvaluation]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("sim-eval"))
    options = SimOptions(
        machines=4,
        duration_s=600,
        seed=11,
        fault_rate=0.0,
        equipment_types=("pump", "fan"),
        dead_machines=0,
        dead_sensors=0,
        inject=(
            # flow far beyond its static max (140 m3/h) for a minute: threshold_max must fire
            PlannedFault("step", "pump-0001", start_s=400, duration_s=60, sensors=("flow",), magnitude=500.0),
            PlannedFault("dropout", "fan-0001", start_s=300, duration_s=90, sensors=("bearing_temp",)),
        ),
    )
    return settings, evaluate_sim(settings, options, Console(file=io.StringIO()))


def test_tiny_run_structure(tiny_run) -> None:
    settings, result = tiny_run
    info = result.info
    assert info["equipment_types"] == {"fan": 2, "pump": 2}
    assert info["train_windows"] == 48 and info["scored_windows"] == 4 * 72
    assert len(result.windows) == 4 * 72 and not result.windows.duplicated(["machine", "window_start_ms"]).any()
    emitted = result.verdicts[result.verdicts.emit]
    assert not emitted.duplicated(["equipment_id", "window_start_ms"]).any()
    assert {m["detector"] for m in info["models"]} == set(job_detectors()) and len(info["models"]) == 2 * len(
        job_detectors()
    )
    card = result.scorecard
    assert list(card.by_type.index) == ["dead_sensor", "step", "all"]
    roles = result.windows.role.value_counts()
    assert roles["fault"] == card.by_type.loc["all", "fault_windows"]
    assert roles["normal"] == card.negative_windows and roles.get("grace", 0) == card.grace_windows
    flagged_normal = int((result.windows.flagged & (result.windows.role == "normal")).sum())
    assert flagged_normal == card.fp_windows
    summary = summary_dict(result)
    assert {r["category"] for r in summary["by_type"]} == {"dead_sensor", "step", "all"}


def test_tiny_run_detects_the_gross_step_and_the_dead_sensor(tiny_run) -> None:
    _, result = tiny_run
    events = result.scorecard.events.set_index("category")
    step = events.loc["step"]
    assert step.detected and step.delay_ms <= 2 * W  # the window holding the start, or the next one at worst
    first = result.verdicts.set_index(["equipment_id", "window_start_ms"]).loc[("pump-0001", step.first_window_ms)]
    assert "threshold_max" in first.detectors and "flow:threshold_max" in first.rule_hits
    assert result.scorecard.by_type.loc["step", "recall"] >= 11 / 13  # 12-13 windows overlap, >= 11 above max
    dead = events.loc["dead_sensor"]
    assert dead.detected
    dead_sensor_windows = result.verdicts[result.verdicts.dead_sensors.map(lambda s: "bearing_temp" in s)]
    assert set(dead_sensor_windows.equipment_id) == {"fan-0001"}
    assert result.detectors.loc["threshold_max", "fault_windows"] >= 11
    assert result.detectors.loc["dead_sensor", "fault_windows"] >= 1


def test_print_sim_result(tiny_run) -> None:
    _, result = tiny_run
    console = Console(record=True, width=200)
    print_sim_result(result, console)
    text = console.export_text()
    assert "Per fault type" in text and "one-vs-normal" in text and "threshold_max" in text


def test_cli_evaluate_sim_writes_the_scorecard(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from operations.cli import app

    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--dataset", "sim", "--machines", "4", "--minutes", "8", "--seed", "3", "--output", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Per fault type" in result.output and "False positives" in result.output
    data = json.loads(out.read_text())
    assert data["options"]["machines"] == 4 and data["info"]["scored_windows"] == 4 * 58
    assert data["by_type"][-1]["category"] == "all"
