"""WindowScorer's model persistence: one marginal window is not an alarm, two in a row are, a strong one is at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onnx_models.registry import ModelRegistry
from tests.unit.test_model_set import SENSORS, SIZE_MS, register, stats
from udfs.model_set import ModelSet
from udfs.scoring import ScoringConfig, WindowScorer

HOP = 6  # history 5 + persistence 2 - 1


def hop_frames(prev_delta: float, cur_delta: float, windows: int = HOP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A machine's last `windows` windows at the normal mean, `temp` shifted in the previous / current (last) one."""
    long = stats(SENSORS, n=windows).rename(columns={"window_start": "window_start_ms"})
    long = long.assign(avg=50.0)  # every window at the training mean: only the shift moves the score
    last = (windows - 1) * SIZE_MS
    shift = np.where(
        long.window_start_ms == last, cur_delta, np.where(long.window_start_ms == last - SIZE_MS, prev_delta, 0.0)
    )
    shift = np.where(long.sensor == "temp", shift, 0.0)
    long = long.assign(avg=long.avg + shift, group=0, rule_hits="", zratio=np.nan).drop(columns="equipment_id")
    current = pd.DataFrame(
        {"equipment_id": ["m"], "site": ["s"], "equipment_type": ["pump"], "window_start_ms": [last]}
    )
    return long, current


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    registry = ModelRegistry(tmp_path_factory.mktemp("models"))
    register(registry, SENSORS)

    def scorer(persistence: int) -> WindowScorer:
        models = ModelSet(registry, {"pump": SENSORS}.get, detectors=["pca_t2q"], poll_s=1e9)
        return WindowScorer({"pump": SENSORS}, models, ScoringConfig(window_ms=SIZE_MS, model_persistence=persistence))

    return scorer(1), scorer(2)


def verdict(scorer: WindowScorer, prev_delta: float, cur_delta: float) -> pd.Series:
    return scorer.score(*hop_frames(prev_delta, cur_delta)).iloc[0]


def marginal_delta(scorer: WindowScorer, target: float = 1.4) -> float:
    """The `temp` shift of the current window alone that puts the model at ~target x its threshold."""
    lo, hi = 0.0, 1.0
    while verdict(scorer, 0.0, hi).pca_t2q < target:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if verdict(scorer, 0.0, mid).pca_t2q < target else (lo, mid)
    return hi


def test_one_marginal_window_fires_only_without_persistence(scorers) -> None:
    once, twice = scorers
    delta = marginal_delta(once)
    single, persistent = verdict(once, 0.0, delta), verdict(twice, 0.0, delta)
    assert 1.0 < single.pca_t2q < 2.0 and single.pca_t2q == pytest.approx(persistent.pca_t2q)
    assert "pca_t2q" in single.detectors and single.is_anomaly
    assert "pca_t2q" not in persistent.detectors and not persistent.is_anomaly
    assert persistent.severity == "normal" and persistent.summary == ""


def test_two_windows_above_the_threshold_fire(scorers) -> None:
    once, twice = scorers
    delta = marginal_delta(once)
    for d in np.linspace(delta / 2, 2 * delta, 151):  # a shift that keeps both windows between 1x and 2x
        previous = once.score(*hop_frames(0.0, d, windows=HOP - 1)).iloc[0].pca_t2q  # the previous window, judged
        current = verdict(once, d, d).pca_t2q
        if 1.0 < previous < 2.0 and 1.0 < current < 2.0:
            break
    else:
        pytest.fail("no shift keeps two consecutive windows marginal")
    both = verdict(twice, d, d)
    assert both.pca_t2q == pytest.approx(current)
    assert "pca_t2q" in both.detectors and both.severity == "warning"
    # The same shift in the current window only: not persistent, no alarm (unless strong by itself).
    alone = verdict(twice, 0.0, d)
    assert ("pca_t2q" in alone.detectors) == (alone.pca_t2q >= 2.0)


def test_a_strong_score_fires_at_once(scorers) -> None:
    _, twice = scorers
    strong = verdict(twice, 0.0, 50 * marginal_delta(scorers[0]))
    assert strong.pca_t2q >= 2.0 and "pca_t2q" in strong.detectors and strong.severity == "critical"
