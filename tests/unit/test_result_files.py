"""Benchmark-format result writers: layout, row count and order, verbatim timestamps, value ranges, and that
the written files re-score to exactly the numbers the evaluator printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from operations.evaluate.metrics import Confusion
from operations.evaluate.nab_eval import rescore_own_results, run_nab, write_results
from operations.evaluate.result_files import NAB_COLUMNS, check_detector_name, nab_anomaly_score
from operations.evaluate.skab import SKAB_COLUMNS, AlarmRule, evaluate_skab, write_skab_results
from tests.unit.skab_files import write_skab_file


def test_nab_anomaly_score_is_hand_computed_and_half_separates_alarms() -> None:
    # threshold 4: r = score / 4, u = r / (1 + r); alarms 0.5 + u / 2, others u / 2.
    scores = np.array([0.0, 2.0, 4.0, 12.0, 12.0, -3.0, np.nan, np.inf])
    alarms = np.array([0, 0, 1, 1, 0, 0, 0, 1], dtype=bool)  # row 4: above, but suppressed by a re-arm
    out = nab_anomaly_score(scores, alarms, 4.0)
    np.testing.assert_allclose(out[:6], [0.0, 1 / 6, 0.75, 0.875, 0.375, 0.0])
    assert out[6] == 0.0 and 0.5 <= out[7] < 1.0
    assert ((out >= 0.5) == alarms).all() and (out >= 0).all() and (out < 1).all()
    huge = nab_anomaly_score(np.array([1e300]), np.array([False]), 1e-3)
    assert float(f"{huge[0]:.10g}") < 0.5  # still below NAB's threshold once written with 10 digits
    with pytest.raises(ValueError, match="threshold must be > 0"):
        nab_anomaly_score(scores, alarms, 0.0)


def test_nab_detector_names_refuse_underscores() -> None:
    assert check_detector_name("vigil") == "vigil"
    for bad in ("", "knn_cad", "a/b"):
        with pytest.raises(ValueError, match="without '_'"):
            check_detector_name(bad)


@pytest.fixture()
def nab_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    root = tmp_path / "nab"
    windows = {}
    for category, name, n, spike in (("catA", "a.csv", 400, 300), ("catB", "b_c.csv", 300, None)):
        values = rng.normal(10, 1, n)
        if spike is not None:
            values[spike : spike + 5] += 40
        # no seconds: a writer that re-formatted parsed times would write "2015-03-01 00:15:00"
        stamps = pd.date_range("2015-03-01", periods=n, freq="5min").strftime("%Y-%m-%d %H:%M").tolist()
        (root / category).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": stamps, "value": values}).to_csv(root / category / name, index=False)
        windows[f"{category}/{name}"] = (
            [[pd.Timestamp(stamps[spike - 10]).isoformat(), pd.Timestamp(stamps[spike + 20]).isoformat()]]
            if spike is not None
            else []
        )
    (root / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_nab_results_have_one_row_per_data_row_in_order_and_rescore_identically(nab_dir: Path, tmp_path: Path) -> None:
    run = run_nab(nab_dir, "ewma_zscore", 4.0, rearm_rows=20)
    out = tmp_path / "results"
    paths = write_results(run, out, "vigil", "ewma_zscore", 4.0, 20)
    assert sorted(p.relative_to(out).as_posix() for p in paths) == [
        "vigil/catA/vigil_a.csv",
        "vigil/catB/vigil_b_c.csv",
    ]
    for f in run.files:
        category, _, fname = f.name.rpartition("/")
        written = pd.read_csv(out / "vigil" / category / f"vigil_{fname}", dtype={"timestamp": str})
        data = pd.read_csv(nab_dir / f.name, dtype={"timestamp": str})
        assert tuple(written.columns) == NAB_COLUMNS
        assert len(written) == len(data)  # probationary rows included
        assert written["timestamp"].tolist() == data["timestamp"].tolist()  # verbatim, same order
        np.testing.assert_allclose(written["value"], data["value"])
        score = written["anomaly_score"].to_numpy()
        assert not np.isnan(score).any() and (score >= 0).all() and (score <= 1).all()
        np.testing.assert_array_equal(score >= 0.5, run.alarms[f.name])
        np.testing.assert_array_equal(written["label"].to_numpy(), f.labels)
    assert written["timestamp"][3] == "2015-03-01 00:15"
    labels_a = pd.read_csv(out / "vigil" / "catA" / "vigil_a.csv")["label"]
    assert labels_a.sum() == 31 and labels_a[290:321].eq(1).all()  # rows 290..320 inclusive
    thresholds = json.loads((out / "thresholds.json").read_text())["vigil"]
    assert set(thresholds) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert all(v["threshold"] == 0.5 for v in thresholds.values())
    notes = json.loads((out / "threshold-notes.json").read_text())["vigil"]
    assert notes["raw_threshold"] == 4.0 and "never optimises" in notes["how_chosen"]
    rescored = rescore_own_results(nab_dir, out, "vigil")
    for short, nab_name in (
        ("standard", "standard"),
        ("reward_low_FP", "reward_low_FP_rate"),
        ("reward_low_FN", "reward_low_FN_rate"),
    ):
        assert rescored[nab_name].raw == pytest.approx(run.profile_scores[short].raw, abs=1e-12)
        assert rescored[nab_name].normalized == pytest.approx(run.profile_scores[short].normalized, abs=1e-9)


def test_skab_results_keep_file_order_verbatim_and_mark_training_rows(tmp_path: Path) -> None:
    data = tmp_path / "skab"
    write_skab_file(data / "valve7" / "1.csv", 220, 150, seed=1, swap=(30, 160))
    write_skab_file(data / "other" / "4.csv", 180, 120, seed=2)
    result = evaluate_skab(data, "pca_t2q", train_rows=100, history=3, rule=AlarmRule(limit="train-quantile"))
    out = tmp_path / "results"
    paths = write_skab_results(result, out)
    assert sorted(p.relative_to(out).as_posix() for p in paths) == ["skab/other/4.csv", "skab/valve7/1.csv"]
    for f in result.files:
        written = pd.read_csv(out / "skab" / f.name, sep=";", dtype={"datetime": str})
        source = pd.read_csv(data / f.name, sep=";", dtype={"datetime": str})
        assert tuple(written.columns) == SKAB_COLUMNS
        assert written["datetime"].tolist() == source["datetime"].tolist()
        np.testing.assert_array_equal(written["anomaly"], source["anomaly"].astype(int))
        assert written["train"].sum() == 100 and set(written["anomaly_pred"]) <= {0, 1}
        assert np.isfinite(written["anomaly_score"]).all()
        test_rows = written[written["train"] == 0]
        assert Confusion.from_labels(test_rows["anomaly"], test_rows["anomaly_pred"]) == f.counts
    swapped = pd.read_csv(out / "skab" / "valve7" / "1.csv", sep=";", dtype={"datetime": str})
    # Row 30 of the file holds the time of row 160 (anomalous, after training): it is not a training row,
    # while file row 160 (time of row 30) is.
    assert swapped.loc[30, "train"] == 0 and swapped.loc[30, "anomaly"] == 1 and swapped.loc[160, "train"] == 1
    assert (swapped.loc[:99, "train"].drop(index=30) == 1).all()
    meta = json.loads((out / "skab" / "thresholds.json").read_text())
    assert meta["protocol"] == "skab" and meta["limit"] == "train-quantile" and meta["alarm_level"] == 1.0
    assert "training rows only" in meta["how_chosen"] and meta["pooled"]["f1"] == pytest.approx(result.pooled.f1)
