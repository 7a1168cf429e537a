"""Point-wise metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operations.evaluate.metrics import Confusion, confusion


def test_hand_computed_case() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    pred = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    c = confusion(truth, pred)
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 5, 2)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(0.5)
    assert c.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # = 4/7
    assert c.f1 == pytest.approx(4 / 7)
    assert c.far == pytest.approx(1 / 6)
    assert c.mar == pytest.approx(0.5)


def test_no_positives_in_truth() -> None:
    c = confusion(np.zeros(4), np.array([0, 1, 0, 0]))
    assert (c.tp, c.fp, c.tn, c.fn) == (0, 1, 3, 0)
    assert math.isnan(c.recall) and math.isnan(c.mar)
    assert c.precision == 0.0 and c.f1 == 0.0 and c.far == 0.25


def test_no_predictions() -> None:
    c = confusion(np.array([1, 0, 1]), np.zeros(3, dtype=bool))
    assert (c.tp, c.fp, c.tn, c.fn) == (0, 0, 1, 2)
    assert math.isnan(c.precision)
    assert c.recall == 0.0 and c.f1 == 0.0 and c.far == 0.0 and c.mar == 1.0


def test_nothing_to_find_and_nothing_flagged_is_undefined_not_perfect() -> None:
    c = confusion(np.zeros(3), np.zeros(3))
    assert c.tn == 3 and math.isnan(c.f1) and c.far == 0.0


def test_perfect_and_pooling() -> None:
    a = confusion(np.array([1, 0]), np.array([1, 0]))
    assert a.f1 == 1.0 and a.far == 0.0 and a.mar == 0.0
    pooled = a + Confusion(tp=0, fp=2, tn=0, fn=1)
    assert (pooled.tp, pooled.fp, pooled.tn, pooled.fn) == (1, 2, 1, 1)
    assert pooled.f1 == pytest.approx(2 / 5) and pooled.total == 5


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="equal length"):
        confusion(np.zeros(3), np.zeros(4))
