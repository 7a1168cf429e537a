"""Batch detectors: shapes, ONNX path == sklearn/numpy reference, outliers flagged, clear width errors."""

from __future__ import annotations

import numpy as np
import pytest

import detectors as detector_registry
from detectors.isolation_forest import IsolationForestDetector
from detectors.pca_t2q import PcaT2Q
from onnx_models.runtime import OnnxModel

NAMES = [f"s{i}" for i in range(6)]


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 6))
    x[:, 1] = x[:, 0] * 2 + rng.normal(scale=0.1, size=1500)  # correlated pair: Q sees a broken correlation
    return x * [1, 1, 5, 100, 0.01, 1] + [0, 0, 50, 230, 1, 0]


def _detectors() -> list:
    return [PcaT2Q(variance=0.95), IsolationForestDetector(n_estimators=50)]


@pytest.mark.parametrize("index", [0, 1])
def test_fit_score_shapes_and_onnx_matches_reference(normal: np.ndarray, index: int) -> None:
    det = _detectors()[index].fit(normal, NAMES)
    probe = normal[:300] + np.random.default_rng(2).normal(scale=3, size=(300, 6))
    scores = det.score(probe)
    ref = det.score_numpy(probe)
    ref = ref["score"] if isinstance(ref, dict) else ref
    assert scores.shape == (300,) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
    assert det.threshold is not None and det.predict(probe).dtype == bool


def test_pca_parts_match_numpy_and_combined_score(normal: np.ndarray) -> None:
    det = PcaT2Q(variance=0.95).fit(normal, NAMES)
    assert 1 <= det.n_components < 6
    parts, ref = det.score_parts(normal), det.score_numpy(normal)
    for key in ("t2", "q", "score"):
        np.testing.assert_allclose(parts[key], ref[key], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        parts["score"], np.maximum(parts["t2"] / det.t2_limit, parts["q"] / det.q_limit), rtol=1e-5
    )
    # Limits are the 99 % quantiles of the training rows: about 1 % of them exceed each.
    assert 0.002 < np.mean(parts["t2"] > det.t2_limit) < 0.02


def test_pca_contributions_sum_to_the_ratios_and_name_the_broken_feature(normal: np.ndarray) -> None:
    det = PcaT2Q(variance=0.95).fit(normal, NAMES)
    probe = normal[:50].copy()
    probe[:, 3] += 40 * normal[:, 3].std()  # one feature far off on every row
    parts, ref = det.score_parts(probe), det.score_numpy(probe)
    assert parts["contrib"].shape == (50, 6)
    np.testing.assert_allclose(parts["contrib"], ref["contrib"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        parts["contrib"].sum(axis=1), parts["t2"] / det.t2_limit + parts["q"] / det.q_limit, rtol=1e-3
    )
    assert (parts["contrib"].argmax(axis=1) == 3).all()


def test_clear_outliers_score_above_threshold(normal: np.ndarray) -> None:
    mean = normal.mean(axis=0)
    broken = mean.copy()
    broken[1] = mean[0] * 2 + 8  # each value ordinary-ish, the correlation broken
    far_out = mean + 12 * normal.std(axis=0)
    pca = PcaT2Q().fit(normal, NAMES)
    parts = pca.score_parts(np.vstack([broken, mean]))
    assert parts["q"][0] > pca.q_limit and parts["score"][1] < pca.threshold
    forest = IsolationForestDetector(n_estimators=50).fit(normal, NAMES)
    for det in (pca, forest):
        assert det.predict(far_out[None, :])[0], det.name
        assert det.score(far_out[None, :])[0] > det.score(mean[None, :])[0]


@pytest.mark.parametrize("index", [0, 1])
def test_wrong_width_is_refused_clearly(normal: np.ndarray, index: int) -> None:
    det = _detectors()[index].fit(normal, NAMES)
    with pytest.raises(ValueError, match=r"expected a \(rows x 6\) feature matrix"):
        det.score(normal[:, :5])
    with pytest.raises(RuntimeError, match="not fitted"):
        _detectors()[index].score(normal)


def test_isolation_forest_direct_export_equals_skl2onnx(normal: np.ndarray) -> None:
    det = IsolationForestDetector(n_estimators=10).fit(normal, NAMES)
    stock = OnnxModel(det.to_onnx("skl2onnx")).run(normal)["score"]
    np.testing.assert_allclose(det.score(normal), stock, rtol=1e-5, atol=1e-6)


def test_onnx_model_cached_per_content_and_metadata(normal: np.ndarray) -> None:
    det = PcaT2Q().fit(normal, NAMES)
    a, b = OnnxModel(det.to_onnx()), OnnxModel(det.to_onnx())
    assert a.session is b.session
    assert a.metadata["feature_names"] == ",".join(NAMES)
    with pytest.raises(ValueError, match="expects 6 features"):
        a.run(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxModel(b"not a model")


def test_fit_refuses_nan(normal: np.ndarray) -> None:
    bad = normal.copy()
    bad[3, 2] = np.nan
    for det in _detectors():
        with pytest.raises(ValueError, match="NaN"):
            det.fit(bad, NAMES)


def test_an_installed_detector_plug_in_is_not_imported_unless_allow_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package declaring a vigil.detectors entry point does not get its code run by merely being installed."""
    loaded: list[str] = []

    class Point:
        name, value = "rogue", "rogue_pkg:Detector"

        def load(self) -> type:
            loaded.append(self.name)
            raise AssertionError("a plug-in that is not allow-listed was imported")

    monkeypatch.setattr(detector_registry, "entry_points", lambda group: [Point()])
    detector_registry.all_detectors.cache_clear()
    try:
        assert "rogue" not in detector_registry.all_detectors() and loaded == []
    finally:
        detector_registry.all_detectors.cache_clear()
