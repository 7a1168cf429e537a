"""Alarm levels from the tail of normal scores (detectors/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.calibration import MAX_SHAPE, MIN_EXCEEDANCES, tail_level
from detectors.pca_t2q import PcaT2Q


def test_exponential_tail_extrapolates_to_the_true_quantile() -> None:
    # Exponential scores: P(X > x) = exp(-x), so the level for p is -ln(p); the data hold p = 1e-5 zero times.
    x = np.random.default_rng(1).exponential(size=20_000)
    found = tail_level(x, 1e-5)
    assert found.method == "pot" and found.exceedances == 1000
    assert found.level == pytest.approx(-np.log(1e-5), rel=0.12)
    assert found.level > x.max() * 0.9  # beyond what a quantile of the data can say


def test_bounded_scores_keep_a_finite_level() -> None:
    x = np.random.default_rng(2).uniform(0.0, 1.0, 20_000)  # a bounded score (xi < 0): endpoint 1
    found = tail_level(x, 1e-6)
    assert found.method == "pot" and found.shape_xi < 0
    assert 0.99 < found.level <= 1.05


def test_heavy_tail_shape_is_capped() -> None:
    x = np.random.default_rng(3).pareto(0.8, 20_000)  # xi = 1.25: infinite mean
    capped = tail_level(x, 1e-5)
    assert capped.shape_xi == MAX_SHAPE
    assert capped.level >= np.quantile(x, 1 - 1e-4)  # never below what the data show


def test_too_few_rows_fall_back_to_the_empirical_level() -> None:
    x = np.arange(100, dtype=np.float64)  # 5 % of 100 rows is fewer than MIN_EXCEEDANCES
    assert 0.05 * len(x) < MIN_EXCEEDANCES
    found = tail_level(x, 1e-4)
    assert found.method == "quantile" and found.level == 99.0
    assert tail_level(x, 0.1).level == pytest.approx(np.quantile(x, 0.9))


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError, match="exceed_prob"):
        tail_level(np.ones(10), 0.0)
    with pytest.raises(ValueError, match="no finite scores"):
        tail_level(np.array([np.nan, np.inf]), 1e-3)


def test_detector_threshold_set_for_a_rate() -> None:
    rng = np.random.default_rng(4)
    names = [f"s{i}.avg" for i in range(6)]
    normal = rng.normal(size=(6000, 6))
    det = PcaT2Q(variance=0.9).fit(normal, names)
    found = det.calibrate_rate(normal, 1e-4)
    assert det.threshold == found.level
    fresh = rng.normal(size=(60_000, 6))
    rate = float(np.mean(det.score(fresh) > det.threshold))
    assert rate < 1e-3  # about 1e-4 asked; well below the 0.5 % a q0.995 limit gives
    assert float(np.mean(det.score(fresh) > np.quantile(det.score(normal), 0.995))) > 2e-3
