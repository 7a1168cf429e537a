"""k-NN distance detector: hand-checkable distances, leave-one-out limit, ONNX == numpy."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.knn_distance import KnnDistance
from onnx_models.runtime import OnnxModel

NAMES = ["a", "b"]


def grid_detector(k: int) -> KnnDistance:
    # Training rows: the 4 corners of a square of side 2 around (0, 0) -> mean 0, std 1 per column, so the
    # standardised memory is the same 4 points (+-1, +-1).
    x = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    return KnnDistance(k=k, max_memory=10, limit_quantile=1.0).fit(x, NAMES)


def test_distances_by_hand() -> None:
    det = grid_detector(k=1)
    # Leave-one-out: every corner's nearest other corner is 2 away -> limit = 2, training scores all 1.
    assert det.limit == pytest.approx(2.0)
    np.testing.assert_allclose(det.training_scores, 1.0)
    # (0, 0) is sqrt(2) from every corner -> 0.707; (4, 1) is 3 from (1, 1) -> 1.5; a corner itself -> 0.
    rows = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(det.score_numpy(rows), [np.sqrt(2) / 2, 1.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(det.score(rows), [np.sqrt(2) / 2, 1.5, 0.0], atol=1e-3)


def test_k_nearest_are_averaged_in_squared_distance() -> None:
    det = grid_detector(k=2)
    # LOO for a corner: the two adjacent corners, both at squared distance 4 -> sqrt(4) = 2 -> limit 2.
    assert det.limit == pytest.approx(2.0)
    # (3, 1): squared distances 4 (to (1,1)) and 8 (to (1,-1)) -> sqrt(6) / 2.
    np.testing.assert_allclose(det.score_numpy(np.array([[3.0, 1.0]])), [np.sqrt(6) / 2])


def test_constant_column_is_ignored() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=200), np.full(200, 7.0)])
    det = KnnDistance(k=3).fit(x, NAMES)
    probe = np.array([[0.1, 7.0], [0.1, 1e6]])
    s = det.score_numpy(probe)
    assert s[0] == pytest.approx(s[1])


def test_onnx_matches_numpy_and_flags_outliers() -> None:
    rng = np.random.default_rng(1)
    cov = [[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.5]]
    train = rng.multivariate_normal([10.0, 5.0, -2.0], cov, size=600)
    test = rng.multivariate_normal([10.0, 5.0, -2.0], cov, size=300)
    test[:20, 0] += 6.0  # breaks the a~b correlation
    det = KnnDistance(k=5, max_memory=400).fit(train, ["a", "b", "c"])
    assert det._memory.shape == (400, 3)  # sub-sampled evenly
    ref = det.score_numpy(test)
    got = det.score(test)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    assert got[:20].min() > 1.5 > np.median(got[20:])
    model = OnnxModel(det.to_onnx())
    assert model.metadata["detector"] == "knn_distance" and model.metadata["k"] == "5"


def test_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        KnnDistance(k=0)
    with pytest.raises(ValueError, match="need > k"):
        KnnDistance(k=5).fit(np.zeros((5, 2)), NAMES)
    with pytest.raises(ValueError, match="NaN"):
        KnnDistance(k=1).fit(np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), NAMES)
    det = grid_detector(k=1)
    with pytest.raises(ValueError, match="expected a"):
        det.score(np.zeros((2, 3)))
