"""EWMA z-score detector: vectorised recurrences equal the textbook per-value loop, across block splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.ewma_zscore import EwmaZScore


def reference_scores(x: np.ndarray, alpha: float, warmup: int, eps: float) -> np.ndarray:
    """Per-value loop of the same recurrences (slow, obviously right): score, then absorb."""
    out = np.zeros(len(x))
    mean = var = 0.0
    count = 0
    for i, v in enumerate(x):
        if not np.isfinite(v):
            continue
        if count == 0:
            mean, var = v, 0.0
        d = v - mean
        out[i] = abs(d) / np.sqrt(var + eps) if count >= warmup else 0.0
        mean += alpha * d
        var = (1 - alpha) * (var + alpha * d * d)
        count += 1
    return out


def series(n: int = 2000, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 100.0 + np.cumsum(rng.normal(0, 0.1, n)) + rng.normal(0, 1.0, n)
    x[n * 3 // 4] += 25.0
    return x


def test_matches_the_per_value_loop() -> None:
    x = series()
    det = EwmaZScore(alpha=0.02, warmup=50, eps=1e-9)
    got = det.update(det.initial_state(), x, np.arange(len(x)))
    np.testing.assert_allclose(got, reference_scores(x, 0.02, 50, 1e-9), rtol=1e-9, atol=1e-12)
    assert got[:50].max() == 0.0 and got[1500] > 10 > np.median(got[50:])


@pytest.mark.parametrize("sizes", [[1] * 40 + [1960], [7, 13, 500, 1, 1479], [999, 1001]])
def test_one_block_equals_many_blocks(sizes: list[int]) -> None:
    x = series()
    det = EwmaZScore(alpha=0.05, warmup=20)
    whole_state = det.initial_state()
    whole = det.update(whole_state, x, np.arange(len(x)))
    state = det.initial_state()
    parts = []
    for chunk, ts in zip(
        np.split(x, np.cumsum(sizes)[:-1]), np.split(np.arange(len(x)), np.cumsum(sizes)[:-1]), strict=True
    ):
        state = json.loads(json.dumps(state))  # checkpoint round-trip: plain numbers only
        parts.append(det.update(state, chunk, ts))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-9, atol=1e-12)
    assert state["count"] == whole_state["count"] == len(x)
    assert state["mean"] == pytest.approx(whole_state["mean"], rel=1e-12)
    assert state["var"] == pytest.approx(whole_state["var"], rel=1e-9)


def test_nan_neither_scores_nor_moves_the_baseline() -> None:
    x = series(300)
    y = x.copy()
    y[[100, 101, 250]] = [np.nan, np.inf, np.nan]
    det = EwmaZScore(alpha=0.05, warmup=10)
    got = det.update(det.initial_state(), y, np.arange(len(y)))
    assert np.isfinite(got).all() and got[[100, 101, 250]].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(got, reference_scores(y, 0.05, 10, 1e-9), rtol=1e-9, atol=1e-12)


def test_empty_block_and_bad_parameters() -> None:
    det = EwmaZScore()
    state = det.initial_state()
    assert det.update(state, np.array([]), np.array([], dtype=np.int64)).shape == (0,)
    assert state == det.initial_state()
    with pytest.raises(ValueError, match="alpha"):
        EwmaZScore(alpha=0.0)
