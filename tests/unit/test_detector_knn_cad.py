"""KNN-CAD: the documented per-row rules as a slow loop, one block == many blocks, hand-checkable cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.knn_cad import SUPPRESSED_SCORE, KnnCad
from operations.evaluate.nab import NabFile
from operations.evaluate.nab_eval import file_params


def reference_scores(x: np.ndarray, det: KnnCad) -> np.ndarray:
    """The module docstring's rules, one row at a time with explicit matrices (slow, obviously right)."""
    P, L, N, k = det.probation, det.dim, det.n_ref, det.k
    out = np.zeros(len(x))
    seen: list[float] = []
    hist: list[float] = []
    metric = np.eye(L)
    quiet_until = 0

    def window(s: int) -> np.ndarray:
        return np.array(seen[s - L + 1 : s + 1])

    def make_metric(ends: range) -> np.ndarray:
        X = np.array([window(s) for s in ends])
        gram = X.T @ X
        lam = det.ridge * np.mean(np.abs(np.linalg.eigvalsh(gram)))
        return np.linalg.inv(gram + lam * np.eye(L))

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float((a - b) @ metric @ (a - b))

    for i, value in enumerate(x):
        if not np.isfinite(value):
            continue
        seen.append(float(value))
        t = len(seen) - 1
        if t < P:
            continue
        if t == P:
            train = range(L - 1, P)
            metric = make_metric(train)
            hist = [sum(sorted(dist(window(s), window(u)) for u in train if u != s)[:k]) for s in train]
        lo = max(L - 1, t - 2 * N)
        if t > P and (t - P) % det.refresh_every == 0:
            metric = make_metric(range(lo, lo + N))
        alpha = sum(sorted(dist(window(t), window(u)) for u in range(lo, lo + N))[:k])
        score = sum(c < alpha for c in hist) / N
        hist = hist[1:] + [alpha]
        if t < quiet_until:
            score = min(score, SUPPRESSED_SCORE)
        elif score > det.alarm_level:
            quiet_until = t + 1 + det.suppress_rows
        out[i] = score
    return out


def noisy_cycle(n: int, period: int = 24, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10.0 + 3.0 * np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0.0, 0.3, n)


def test_matches_the_per_row_loop() -> None:
    # probation 40: training rows 0-39, refresh every 20 rows, suppression 8 rows; 150 rows cross the
    # point (t = P + N = 72) where the reference starts to slide; a NaN and a spike are in the scored part.
    det = KnnCad(probation=40, dim=4, k=3, alarm_level=0.9)
    x = noisy_cycle(150)
    x[90] += 6.0
    x[60] = np.nan
    got = det.update(det.initial_state(), x, np.arange(len(x)))
    want = reference_scores(x, det)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.any(got > det.alarm_level) and np.any(got == SUPPRESSED_SCORE)  # the loop exercised alarms


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_state_across_blocks_equals_one_call(block: int) -> None:
    det = KnnCad(probation=60, dim=5, k=4)
    x = noisy_cycle(700, seed=4)
    x[[300, 450, 451]] += 5.0
    x[200] = np.inf
    one = det.update(det.initial_state(), x, np.arange(len(x)))
    state = det.initial_state()
    parts = []
    for i in range(0, len(x), block):
        parts.append(det.update(state, x[i : i + block], np.arange(i, min(i + block, len(x)))))
        state = json.loads(json.dumps(state))  # what Flink keyed state would checkpoint: plain numbers
    np.testing.assert_array_equal(np.concatenate(parts), one)
    assert np.all((one >= 0.0) & (one <= 1.0))


def test_training_rows_score_zero_and_scores_are_ranks() -> None:
    det = KnnCad(probation=50, dim=4, k=3)
    s = det.update(det.initial_state(), noisy_cycle(400, seed=2), np.arange(400))
    assert np.all(s[:50] == 0.0)
    # A score is (# calibration NCMs below) / N: a multiple of 1/N (or the 0.5 cap while suppressed).
    counts = s * det.n_ref
    ranks = s != SUPPRESSED_SCORE
    np.testing.assert_allclose(counts[ranks], np.round(counts[ranks]), atol=1e-9)


def test_exact_repeats_never_alarm() -> None:
    # A cycle that repeats exactly has a window at distance 0 for each of the k neighbours once k full
    # cycles are in the reference: NCM 0, nothing in the calibration is below 0, score 0.
    period, det = 10, KnnCad(probation=100, dim=5, k=3)
    x = np.tile(np.array([0.0, 1, 3, 7, 4, 2, 9, 5, 6, 8]), 60)
    s = det.update(det.initial_state(), x, np.arange(len(x)))
    assert len(x) == 60 * period
    assert np.all(s == 0.0)


def test_a_spike_alarms_once_then_the_following_rows_are_capped() -> None:
    det = KnnCad(probation=100, dim=5, k=3)  # suppression: 100 // 5 = 20 rows
    x = np.tile(np.array([0.0, 1, 3, 7, 4, 2, 9, 5, 6, 8]), 30)
    x[250] = 40.0
    s = det.update(det.initial_state(), x, np.arange(len(x)))
    # Every window before row 250 has an exact match in its reference (NCM 0); the spike's has none, so
    # its NCM is above every calibration NCM: score exactly 1.
    assert s[250] == 1.0 and np.all(s[:250] == 0.0)
    # The next 4 windows still contain the spike and would alarm again; suppression caps them at 0.5.
    assert np.all(s[251:255] == SUPPRESSED_SCORE)
    assert np.all(s[251 : 251 + det.suppress_rows] <= SUPPRESSED_SCORE)
    assert det.suppress_rows == 20


def test_all_nan_block_leaves_state_untouched() -> None:
    det = KnnCad(probation=50, dim=4, k=3)
    state = det.initial_state()
    det.update(state, noisy_cycle(80), np.arange(80))
    before = json.dumps(state)
    assert np.all(det.update(state, np.full(5, np.nan), np.arange(5)) == 0.0)
    assert json.dumps(state) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probation": 20, "dim": 19, "k": 27}, "probation must be >= dim"),
        ({"dim": 0}, "dim must be"),
        ({"k": 0}, "k must be"),
        ({"alarm_level": 1.0}, "alarm_level"),
        ({"ridge": 0.0}, "ridge"),
        ({"suppress_fraction": -0.1}, "suppress_fraction"),
    ],
)
def test_bad_parameters_say_what_is_wrong(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KnnCad(**kwargs)


def test_nab_replay_hands_the_file_probation_to_the_detector() -> None:
    f = NabFile("a/b.csv", np.arange(1000).astype("datetime64[m]").astype("datetime64[ns]"), np.zeros(1000), [])
    assert f.probation == 150
    assert file_params("knn_cad", f, {}) == {"probation": 150}
    assert file_params("knn_cad", f, {"probation": 80}) == {"probation": 80}
    assert file_params("anomaly_likelihood", f, {"alpha": 0.1}) == {"alpha": 0.1}
