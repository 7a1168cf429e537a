"""SKAB experiments as the agents see them: 5-s window statistics, labelled verdicts, one episode per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.root_cause import RootCauseAgent
from operations.evaluate.agents_skab import (
    SKAB_SENSORS,
    diagnose_skab,
    labelled_verdicts,
    skab_episodes,
    window_stats,
)
from operations.evaluate.skab import load_skab_csv


def write_experiment(path: Path, rows: int = 600, anomaly: tuple[int, int] = (450, 540), seed: int = 0) -> None:
    """A SKAB-format file whose flow drops by 30 % while labelled (an inlet valve closing), 1-s rows."""
    rng = np.random.default_rng(seed)
    levels = {
        "Accelerometer1RMS": 0.2,
        "Accelerometer2RMS": 0.27,
        "Current": 1.8,
        "Pressure": 0.3,
        "Temperature": 80.0,
        "Thermocouple": 25.0,
        "Voltage": 230.0,
        "Volume Flow RateRMS": 32.0,
    }
    frame = pd.DataFrame({c: v * (1 + 0.01 * rng.standard_normal(rows)) for c, v in levels.items()})
    start, end = anomaly
    frame.loc[start : end - 1, "Volume Flow RateRMS"] *= 0.7
    frame.insert(0, "datetime", pd.date_range("2020-03-09 10:14:33", periods=rows, freq="s").astype(str))
    frame["anomaly"] = ((frame.index >= start) & (frame.index < end)).astype(float)
    frame["changepoint"] = (frame.index == start).astype(float)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)


def test_window_stats_are_the_hand_computed_five_second_aggregates(tmp_path: Path) -> None:
    write_experiment(tmp_path / "valve1" / "0.csv")
    frame = load_skab_csv(tmp_path / "valve1" / "0.csv")
    stats = window_stats(frame, "m")
    assert set(stats["sensor"]) == set(SKAB_SENSORS.values())
    # 10:14:33 is 3 s into a 5-s window: the first window holds 2 rows, the next ones 5.
    flow = stats[stats["sensor"] == "flow"].reset_index(drop=True)
    assert list(flow["count"][:3]) == [2, 5, 5]
    rows = frame["Volume Flow RateRMS"].to_numpy()
    assert flow["avg"][1] == pytest.approx(rows[2:7].mean())
    assert flow["stddev"][1] == pytest.approx(rows[2:7].std(ddof=1))
    assert (flow["min"][1], flow["max"][1]) == (rows[2:7].min(), rows[2:7].max())
    assert flow["count"].sum() == len(frame)


def test_labelled_windows_make_one_episode_per_file(tmp_path: Path) -> None:
    write_experiment(tmp_path / "valve1" / "0.csv")
    write_experiment(tmp_path / "valve1" / "1.csv", anomaly=(0, 0))  # nothing labelled: not diagnosed
    frame = load_skab_csv(tmp_path / "valve1" / "0.csv")
    verdicts = labelled_verdicts(frame, "m")
    # rows 450..539 are 10:22:03..10:23:32 -> windows 10:22:00 .. 10:23:30 (19 windows)
    assert int(verdicts["is_anomaly"].sum()) == 19
    pairs, skipped = skab_episodes(tmp_path)
    assert skipped == [str(Path("valve1/1.csv"))]
    [(name, episode)] = pairs
    assert name == str(Path("valve1/0.csv")) and episode.equipment_type == "pump" and episode.windows == 19
    assert not episode.baseline.empty  # the 5 minutes before the closure


def test_root_cause_ranks_the_flow_first_when_only_the_flow_moved(tmp_path: Path) -> None:
    write_experiment(tmp_path / "valve1" / "0.csv")
    report = diagnose_skab(tmp_path, [RootCauseAgent()])
    [row] = report.rows
    assert row.root_cause[0] == "flow" and row.first_to_move == "flow"
    assert report.flow_ranked(1) == 1.0 and row.diagnosis == "none"  # no diagnostic agent in this run
