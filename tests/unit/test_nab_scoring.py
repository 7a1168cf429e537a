"""NAB scoring rules on small constructed files, against values computed by hand.

Notation: NAB's scaled sigmoid S(p) = 2*sigmoid(-5p) - 1 = tanh(-5p/2), so S(-1) = tanh(2.5) = 0.986614.
Standard profile: A_TP = 1, A_FP = 0.11, A_FN = 1. A file of n rows has min(floor(0.15 n), 750) probationary
rows; n = 20 -> rows 0..2 are probationary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from operations.evaluate.nab import (
    DEFAULT_PROFILES,
    NabFile,
    get_profile,
    load_nab,
    load_profiles,
    nab_score,
    scaled_sigmoid,
    score_detections,
)
from operations.evaluate.nab_eval import evaluate_nab, evaluate_nab_profiles

STANDARD = DEFAULT_PROFILES["standard"]
LOW_FP = DEFAULT_PROFILES["reward_low_FP_rate"]
LOW_FN = DEFAULT_PROFILES["reward_low_FN_rate"]
T0 = np.datetime64("2014-01-01T00:00:00", "ns")
STEP = np.timedelta64(5, "m")


def make_file(n: int, windows: list[tuple[int, int]], name: str = "cat/f.csv") -> NabFile:
    ts = T0 + STEP * np.arange(n)
    return NabFile(name=name, timestamps=ts, values=np.zeros(n), windows=windows)


def alarms_at(n: int, *rows: int) -> np.ndarray:
    a = np.zeros(n, dtype=bool)
    a[list(rows)] = True
    return a


# One file: 20 rows, probation rows 0..2, one window at rows 10..14 (width 5).
N = 20
F = make_file(N, [(10, 14)])


def test_scaled_sigmoid_reference_points() -> None:
    # S(-1) = tanh(2.5); S(0) = 0; S(1) = -tanh(2.5); S(p > 3) = -1 exactly (not tanh(-7.5)).
    got = scaled_sigmoid(np.array([-1.0, 0.0, 1.0, 3.5]))
    np.testing.assert_allclose(got, [0.9866142981514303, 0.0, -0.9866142981514303, -1.0], rtol=1e-12)


def test_probationary_length() -> None:
    assert make_file(20, []).probation == 3  # floor(0.15 * 20)
    assert make_file(1000, []).probation == 150  # floor(0.15 * 1000)
    assert make_file(10_000, []).probation == 750  # capped at 0.15 * 5000


def test_detection_at_window_start_scores_a_tp() -> None:
    # Row 10: p = -(14 - 10 + 1) / 5 = -1 -> A_TP * S(-1) / S(-1) = 1.0
    assert score_detections(F, alarms_at(N, 10), STANDARD) == pytest.approx(1.0, abs=1e-12)


def test_detection_at_window_end_scores_less() -> None:
    # Row 14: p = -(14 - 14 + 1) / 5 = -0.2 -> S(-0.2) / S(-1) = tanh(0.5) / tanh(2.5) = 0.4621172 / 0.9866143
    assert score_detections(F, alarms_at(N, 14), STANDARD) == pytest.approx(0.4683868439022782, abs=1e-12)


def test_only_the_first_detection_in_a_window_counts() -> None:
    # Rows 12 and 14: only row 12 counts, p = -(14 - 12 + 1)/5 = -0.6 -> tanh(1.5) / tanh(2.5) = 0.9174287;
    # the later one neither adds nor costs.
    assert score_detections(F, alarms_at(N, 12, 14), STANDARD) == pytest.approx(0.9174286804284078, abs=1e-12)
    # Rows 10..14 all flagged -> still exactly 1.0 (row 10 only).
    assert score_detections(F, alarms_at(N, 10, 11, 12, 13, 14), STANDARD) == pytest.approx(1.0, abs=1e-12)


def test_fp_right_after_a_window_costs_little() -> None:
    # Row 10 (TP, +1.0) and row 15: p = (15 - 14) / (5 - 1) = 0.25 -> A_FP * S(0.25) = 0.11 * tanh(-0.625)
    # = 0.11 * -0.5545997 = -0.0610060. Total 1 - 0.0610060 = 0.9389940.
    assert score_detections(F, alarms_at(N, 10, 15), STANDARD) == pytest.approx(1 - 0.06100596945843205, abs=1e-12)
    # reward_low_FP doubles the FP weight: 1 - 0.22 * 0.5545997 = 0.8779881
    assert score_detections(F, alarms_at(N, 10, 15), LOW_FP) == pytest.approx(1 - 2 * 0.06100596945843205, abs=1e-12)


def test_fp_far_after_a_window_and_before_any_window_cost_full_weight() -> None:
    f = make_file(40, [(10, 14)])
    # Row 30: p = (30 - 14) / 4 = 4 > 3 -> S = -1 -> -0.11; plus the missed window -1 -> -1.11
    assert score_detections(f, alarms_at(40, 30), STANDARD) == pytest.approx(-1.11, abs=1e-12)
    # 40 rows -> probation rows 0..5 (floor(6.0)); row 6 has no preceding window -> -0.11, plus the miss -> -1.11
    assert score_detections(f, alarms_at(40, 6), STANDARD) == pytest.approx(-1.11, abs=1e-12)


def test_missed_window_costs_a_fn() -> None:
    # No detection: -A_FN = -1 (standard), -2 (reward_low_FN).
    assert score_detections(F, alarms_at(N), STANDARD) == -1.0
    assert score_detections(F, alarms_at(N), LOW_FN) == -2.0


def test_probationary_period_is_ignored() -> None:
    # Row 2 is probationary: ignored entirely -> only the missed window: -1.
    assert score_detections(F, alarms_at(N, 2), STANDARD) == -1.0
    # Row 3 is the first scored row, before any window -> -0.11 - 1 = -1.11.
    assert score_detections(F, alarms_at(N, 3), STANDARD) == pytest.approx(-1.11, abs=1e-12)
    # A window on rows 1..5: rows 1, 2 are probationary, so a detection at row 2 does not count (-1);
    # one at row 3 does: p = -(5 - 3 + 1) / 5 = -0.6 -> 0.9174287.
    g = make_file(N, [(1, 5)])
    assert score_detections(g, alarms_at(N, 2), STANDARD) == -1.0
    assert score_detections(g, alarms_at(N, 3), STANDARD) == pytest.approx(0.9174286804284078, abs=1e-12)
    # A window wholly inside the probation (rows 0..2) is not scored at all.
    h = make_file(N, [(0, 2)])
    assert score_detections(h, alarms_at(N), STANDARD) == 0.0


def test_null_and_perfect_normalisation() -> None:
    # Two files: A has windows 10..14 and 16..18 (2 windows), B has none. 2 windows in all:
    # null = -1 * 2 = -2, perfect = +1 * 2 = 2 (standard); reward_low_FN: null = -4, perfect = 2.
    a = make_file(N, [(10, 14), (16, 18)], "cat/a.csv")
    b = make_file(N, [], "cat/b.csv")
    files = [a, b]
    null = nab_score(files, {"cat/a.csv": alarms_at(N), "cat/b.csv": alarms_at(N)}, STANDARD)
    assert (null.normalized, null.raw, null.null, null.perfect) == (0.0, -2.0, -2.0, 2.0)
    assert (null.tp, null.fn, null.fp) == (0, 2, 0)
    perfect = nab_score(files, {"cat/a.csv": alarms_at(N, 10, 16), "cat/b.csv": alarms_at(N)}, STANDARD)
    assert perfect.normalized == pytest.approx(100.0, abs=1e-9)
    # Mixed: A flags row 14 (0.4683868) and misses 16..18 (-1); B flags row 5 (no window: -0.11).
    # raw = 0.4683868 - 1 - 0.11 = -0.6416132; normalised = 100 * (raw + 2) / 4 = 33.95967
    mixed = nab_score(files, {"cat/a.csv": alarms_at(N, 14), "cat/b.csv": alarms_at(N, 5)}, STANDARD)
    assert mixed.raw == pytest.approx(0.4683868439022782 - 1.11, abs=1e-12)
    assert mixed.normalized == pytest.approx(100 * (0.4683868439022782 - 1.11 + 2) / 4, abs=1e-9)
    assert (mixed.tp, mixed.fn, mixed.fp) == (1, 1, 1)
    # reward_low_FN: raw = 0.4683868 - 2 - 0.11 = -1.6416132; 100 * (raw + 4) / 6 = 39.30645
    low_fn = nab_score(files, {"cat/a.csv": alarms_at(N, 14), "cat/b.csv": alarms_at(N, 5)}, LOW_FN)
    assert low_fn.normalized == pytest.approx(100 * (0.4683868439022782 - 2.11 + 4) / 6, abs=1e-9)


def test_no_windows_cannot_be_normalised() -> None:
    f = make_file(N, [])
    with pytest.raises(ValueError, match="no anomaly window"):
        nab_score([f], {f.name: alarms_at(N)}, STANDARD)


def test_alarm_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="one per row"):
        score_detections(F, np.zeros(N - 1, dtype=bool), STANDARD)


def write_nab_folder(root: Path, series: dict[str, np.ndarray], windows: dict[str, list[list[str]]]) -> None:
    for rel, values in series.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ts = pd.date_range("2014-01-01", periods=len(values), freq="5min").strftime("%Y-%m-%d %H:%M:%S")
        pd.DataFrame({"timestamp": ts, "value": values}).to_csv(path, index=False)
    (root / "combined_windows.json").write_text(json.dumps(windows))
    (root / "profiles.json").write_text(
        json.dumps(
            {
                "standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}},
                "reward_low_FP_rate": {
                    "CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0}
                },
                "reward_low_FN_rate": {
                    "CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}
                },
            }
        )
    )


def test_load_nab_maps_windows_to_rows(tmp_path: Path) -> None:
    # 100 rows at 5-min steps from 2014-01-01 00:00: row 60 = 05:00, row 70 = 05:50.
    write_nab_folder(
        tmp_path,
        {"catA/x.csv": np.arange(100.0), "catB/y.csv": np.ones(100)},
        {
            "catA/x.csv": [["2014-01-01 05:00:00.000000", "2014-01-01 05:50:00.000000"]],
            "catB/y.csv": [],
            "catC/not_here.csv": [],
        },
    )
    files = {f.name: f for f in load_nab(tmp_path)}
    assert sorted(files) == ["catA/x.csv", "catB/y.csv"]
    assert files["catA/x.csv"].windows == [(60, 70)]
    assert files["catA/x.csv"].labels.sum() == 11
    assert files["catA/x.csv"].raw_timestamps[0] == "2014-01-01 00:00:00"
    profiles = load_profiles(tmp_path)
    assert get_profile(profiles, "reward_low_FN").fn == 2.0
    assert get_profile(profiles, "reward_low_FP_rate").fp == 0.22


def test_load_nab_refuses_unlabelled_csv(tmp_path: Path) -> None:
    write_nab_folder(tmp_path, {"catA/x.csv": np.arange(10.0)}, {})
    with pytest.raises(KeyError, match="no entry"):
        load_nab(tmp_path)


def test_evaluate_nab_end_to_end(tmp_path: Path) -> None:
    # Constant series with one large step at row 60 = the first row of the window 60..70, and an
    # anomaly-free constant file. The EWMA z-score flags row 60 only (z of the return to normal is
    # sqrt(alpha) < 1), so: one TP at the window start, no FP -> raw 1, null -1, perfect 1 -> 100.
    x = np.full(100, 5.0)
    x[60] = 50.0
    write_nab_folder(
        tmp_path,
        {"catA/x.csv": x, "catB/y.csv": np.full(100, 3.0)},
        {"catA/x.csv": [["2014-01-01 05:00:00", "2014-01-01 05:50:00"]], "catB/y.csv": []},
    )
    score = evaluate_nab(tmp_path, "ewma_zscore", threshold=5.0)
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert score.normalized == pytest.approx(100.0)
    # Threshold above every score: the null detector -> 0 under every profile.
    nulls = evaluate_nab_profiles(tmp_path, "ewma_zscore", threshold=math.inf)
    assert {p: s.normalized for p, s in nulls.items()} == {"standard": 0.0, "reward_low_FP": 0.0, "reward_low_FN": 0.0}


def test_rearm_keeps_the_first_alarm_of_each_burst() -> None:
    from operations.evaluate.nab_eval import rearm

    # Alarms at 2, 3, 5, 9, 10 with gap 3: keep 2; 3 and 5 are within 3 rows of 2; 9 kept; 10 dropped.
    a = alarms_at(12, 2, 3, 5, 9, 10)
    assert np.flatnonzero(rearm(a, 3)).tolist() == [2, 9]
    assert np.array_equal(rearm(a, 0), a)
