"""The sensor-residual model: PCA Q of each sensor's smoothed average, blind to everything else."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import all_detectors, job_detectors
from detectors.pca_t2q import PcaT2Q
from detectors.sensor_residual import SensorResidual

# Three sensors driven by one load, each with its window average, its 5-window mean and a stddev column.
SENSORS = ("current", "flow", "speed")
NAMES = [f"{s}.{c}" for s in SENSORS for c in ("avg", "avg__mean5", "stddev")]


def rows(load: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cols = []
    for gain in (40.0, 110.0, 1700.0):
        level = gain * load + rng.normal(scale=gain * 0.01, size=len(load))
        cols += [level + rng.normal(scale=gain * 0.01, size=len(load)), level, rng.gamma(2.0, 1.0, len(load))]
    return np.column_stack(cols)


@pytest.fixture(scope="module")
def fitted() -> SensorResidual:
    rng = np.random.default_rng(5)
    return SensorResidual().fit(rows(rng.uniform(0.1, 1.0, 3000), rng), NAMES)


def test_declared_as_a_job_model() -> None:
    assert "sensor_residual" in job_detectors() and all_detectors()["sensor_residual"].kind == "batch"


def test_onnx_matches_numpy(fitted: SensorResidual) -> None:
    probe = rows(np.random.default_rng(6).uniform(0.0, 1.2, 500), np.random.default_rng(7))
    np.testing.assert_allclose(fitted.score(probe), fitted.score_numpy(probe)["score"], rtol=1e-4, atol=1e-5)


def test_reads_only_the_smoothed_averages(fitted: SensorResidual) -> None:
    probe = rows(np.random.default_rng(8).uniform(0.1, 1.0, 200), np.random.default_rng(9))
    other = probe.copy()
    other[:, [i for i, n in enumerate(NAMES) if not n.endswith("__mean5")]] *= 50.0  # window avg, stddev: ignored
    np.testing.assert_allclose(fitted.score(other), fitted.score(probe), rtol=1e-5, atol=1e-6)
    parts = fitted.score_parts(probe)
    ignored = [i for i, n in enumerate(NAMES) if not n.endswith("__mean5")]
    assert np.abs(parts["contrib"][:, ignored]).max() == 0.0


def test_a_load_change_is_no_residual_but_one_sensor_off_is(fitted: SensorResidual) -> None:
    rng = np.random.default_rng(10)
    limit = float(np.quantile(fitted.score(rows(rng.uniform(0.1, 1.0, 3000), rng)), 0.999))
    high = rows(np.full(200, 1.0), rng)  # the top of the load range: far out along the structure, no break
    assert float(np.median(fitted.score(high))) < limit
    worn = rows(rng.uniform(0.1, 1.0, 200), rng)
    col = NAMES.index("current.avg__mean5")
    worn[:, col] += 40.0 * 0.1  # current 10 % of its range above where the others put it
    assert float(np.median(fitted.score(worn))) > 3 * limit


def test_unknown_feature_set_or_statistic_is_refused() -> None:
    with pytest.raises(ValueError, match="features must be one of"):
        PcaT2Q(features="raw")
    with pytest.raises(ValueError, match="statistic must be one of"):
        PcaT2Q(statistic="t2")


def test_without_history_columns_it_reads_the_window_averages() -> None:
    rng = np.random.default_rng(11)
    names = [f"{s}.{c}" for s in SENSORS for c in ("avg", "stddev")]
    x = rows(rng.uniform(0.1, 1.0, 1000), rng)[:, [0, 2, 3, 5, 6, 8]]
    det = SensorResidual().fit(x, names)
    moved = x.copy()
    moved[:, [1, 3, 5]] *= 10.0  # stddev columns: ignored
    np.testing.assert_allclose(det.score(moved), det.score(x), rtol=1e-5, atol=1e-6)
