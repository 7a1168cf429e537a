"""Anomaly likelihood: hand-checkable tails, a flat series stays quiet, and one block == many blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm

from detectors.anomaly_likelihood import TAIL_FLOOR, AnomalyLikelihood
from detectors.ewma_zscore import EwmaZScore


def reference_scores(x: np.ndarray, det: AnomalyLikelihood) -> np.ndarray:
    """The documented recurrences as a per-value loop (slow, obviously right)."""
    out = np.zeros(len(x))
    m = v = short = lm = lv = 0.0
    count = 0
    for i, value in enumerate(x):
        if not np.isfinite(value):
            continue
        if count == 0:
            m = value
        d = value - m
        raw = 0.0 if count == 0 else min(abs(d) / np.sqrt(v + det.eps), det.raw_cap)
        m += det.alpha * d
        v = (1 - det.alpha) * (v + det.alpha * d * d)
        short = (1 - det.short_alpha) * short + det.short_alpha * raw
        if count == 0:
            lm = short
        dd = short - lm
        z = dd / np.sqrt(lv + det.eps)
        p = norm.sf(z)
        score = min(max(np.log(max(p, 1e-300)) / np.log(TAIL_FLOOR), 0.0), 1.0)
        out[i] = score if count >= det.warmup else 0.0
        lm += det.long_alpha * dd
        lv = (1 - det.long_alpha) * (lv + det.long_alpha * dd * dd)
        count += 1
    return out


def series(n: int = 3000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 50.0 + rng.normal(0, 1.0, n)
    x[2000:] += 8.0  # a level shift
    x[1200] = np.nan  # a gap: skipped, state untouched
    return x


def test_matches_the_per_value_loop() -> None:
    x = series()
    det = AnomalyLikelihood(alpha=0.02, short_alpha=0.3, long_alpha=0.005, warmup=100)
    got = det.update(det.initial_state(), x, np.arange(len(x)))
    np.testing.assert_allclose(got, reference_scores(x, det), rtol=1e-7, atol=1e-9)


def test_level_shift_alarms_once_stable_noise_does_not() -> None:
    x = series()
    det = AnomalyLikelihood()
    s = det.update(det.initial_state(), x, np.arange(len(x)))
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert s[:300].max() == 0.0  # warm-up
    assert s[2000:2005].max() > det.default_threshold  # the 8-sigma step is a < 1e-5 tail event
    assert s[300:2000].max() < det.default_threshold  # Gaussian noise never is
    assert s[1200] == 0.0  # the NaN row


def test_score_is_the_log_scaled_tail_probability() -> None:
    # A constant series and then one jump. Before it raw = short = 0 and the long-run stats are exactly 0, so
    # z = 0, Q(0) = 1/2 and the score is log(1/2) / log(1e-10) = 0.0301 (0 during the 10-value warm-up). On the
    # jump raw = min(1 / sqrt(eps), cap) = cap, short = short_alpha * cap, z = short / sqrt(eps): Q(z)
    # underflows far below 1e-10 -> score 1.0.
    det = AnomalyLikelihood(warmup=10)
    x = np.r_[np.full(50, 3.0), 4.0]
    s = det.update(det.initial_state(), x, np.arange(len(x)))
    assert s[:10].max() == 0.0
    np.testing.assert_allclose(s[10:50], np.log(0.5) / np.log(TAIL_FLOOR), rtol=1e-6)
    assert s[50] == 1.0
    # Tail probability p maps to log(p) / log(1e-10): p = 1e-5 -> 0.5 (the default alarm level).
    assert np.log(1e-5) / np.log(TAIL_FLOOR) == pytest.approx(0.5)


def test_routinely_spiky_series_needs_a_bigger_excursion_than_ewma() -> None:
    # A series with a spike every 50 values: the EWMA z-score alarms on every spike at 4 sigma; the likelihood
    # learns that such spikes are routine and alarms on few of them (the short average of a spike train is
    # not Gaussian, so its tail is under-estimated now and then).
    x = np.zeros(4000)
    x[::50] = 10.0
    x += np.random.default_rng(0).normal(0, 0.5, x.size)
    lik = AnomalyLikelihood()
    s = lik.update(lik.initial_state(), x, np.arange(x.size))
    ew = EwmaZScore(warmup=300)
    z = ew.update(ew.initial_state(), x, np.arange(x.size))
    assert (z[1000:] > 4).sum() == 60  # every spike
    assert (s[1000:] > lik.default_threshold).sum() <= 15


@pytest.mark.parametrize("sizes", [[1] * 40 + [2960], [7, 13, 500, 1, 2479], [1999, 1001]])
def test_one_block_equals_many_blocks(sizes: list[int]) -> None:
    x = series()
    det = AnomalyLikelihood(warmup=50)
    whole_state = det.initial_state()
    whole = det.update(whole_state, x, np.arange(len(x)))
    state = det.initial_state()
    parts = []
    bounds = np.cumsum(sizes)[:-1]
    for chunk, ts in zip(np.split(x, bounds), np.split(np.arange(len(x)), bounds), strict=True):
        state = json.loads(json.dumps(state))  # checkpoint round-trip: plain numbers only
        parts.append(det.update(state, chunk, ts))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-9, atol=1e-12)
    assert state == pytest.approx(whole_state, rel=1e-12)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="long_alpha"):
        AnomalyLikelihood(long_alpha=0.0)
    with pytest.raises(ValueError, match="warmup"):
        AnomalyLikelihood(warmup=0)
