"""The SKAB evaluator on a tiny constructed folder in SKAB's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vigil.evaluate.skab import discover, evaluate_skab, leading_normal_rows, load_skab_csv

SENSORS = ["Accelerometer1RMS", "Current", "Pressure"]


def _write(path: Path, n: int, anomaly: np.ndarray | None, seed: int, shift_from: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) * [0.01, 0.1, 0.2] + [0.2, 2.0, 0.3], columns=SENSORS)
    if shift_from is not None:
        frame.iloc[shift_from:, 1] += 5.0  # a gross step in Current
    frame.insert(0, "datetime", pd.date_range("2020-03-09 10:00:00", periods=n, freq="s").astype(str))
    if anomaly is not None:
        frame["anomaly"] = anomaly.astype(float)
        frame["changepoint"] = np.r_[0, np.diff(anomaly) > 0].astype(float)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)


@pytest.fixture()
def skab_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "anomaly-free" / "anomaly-free.csv", 600, None, seed=0)
    labels = np.zeros(200)
    labels[150:180] = 1
    _write(tmp_path / "valve9" / "2.csv", 200, labels, seed=1, shift_from=150)
    labels_b = np.zeros(180)
    labels_b[60:] = 1  # labelled anomaly before row 100: training must stop at row 60
    _write(tmp_path / "valve9" / "10.csv", 180, labels_b, seed=2, shift_from=60)
    return tmp_path


def test_discover_and_load(skab_dir: Path) -> None:
    free, experiments = discover(skab_dir)
    assert free is not None and free.name == "anomaly-free.csv"
    assert [p.name for p in experiments] == ["2.csv", "10.csv"]  # numeric order, not lexical
    frame = load_skab_csv(experiments[1])
    assert leading_normal_rows(frame, 100) == 60
    assert leading_normal_rows(load_skab_csv(experiments[0]), 100) == 100


def test_counts_equal_hand_computed_when_every_point_alarms(skab_dir: Path) -> None:
    # alarm_level below any possible normalised score: every row is flagged, so TP = anomalies, FP = normals,
    # counted on the rows after the training rows only.
    # 2.csv: 200 rows, trains on 0..99; test rows 100..199 hold anomalies 150..179 -> TP 30, FP 100 - 30 = 70.
    # 10.csv: 180 rows, trains on 0..59 (anomaly from row 60); test rows 60..179 are all anomalous -> TP 120.
    result = evaluate_skab(skab_dir, "pca_t2q", train_rows=100, history=3, alarm_level=-np.inf)
    counts = {f.name: f.counts for f in result.files}
    a, b = counts[str(Path("valve9/2.csv"))], counts[str(Path("valve9/10.csv"))]
    assert (a.tp, a.fp, a.tn, a.fn) == (30, 70, 0, 0)
    assert (b.tp, b.fp, b.tn, b.fn) == (120, 0, 0, 0)
    assert [f.train_rows for f in result.files] == [100, 60]
    pooled = result.pooled
    assert (pooled.tp, pooled.fp) == (150, 70) and pooled.far == 1.0 and pooled.mar == 0.0


@pytest.mark.parametrize("detector", ["pca_t2q", "isolation_forest", "knn_distance"])
def test_evaluator_runs_and_finds_gross_steps(skab_dir: Path, detector: str) -> None:
    result = evaluate_skab(skab_dir, detector, train_rows=100, history=3, pseudo_rows=300)
    assert np.isfinite(result.alarm_level)
    assert result.pooled.total == (200 - 100) + (180 - 60)  # test rows only: after each file's training rows
    # A 25-sigma step in one sensor: PCA's Q and the k-NN distance catch nearly all of it; Isolation Forest's
    # score saturates outside the training range (its known weakness on SKAB) but must still beat chance.
    if detector in ("pca_t2q", "knn_distance"):
        assert result.pooled.recall > 0.8
    assert result.pooled.recall > 2 * result.pooled.far


def test_unknown_detector_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        evaluate_skab(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_skab(tmp_path / "missing", "pca_t2q")
