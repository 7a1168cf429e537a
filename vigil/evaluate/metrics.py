"""Point-wise detection metrics as SKAB reports them (every row is one decision).

Ratios whose denominator is zero (e.g. precision when nothing was flagged, MAR when there was nothing to
find) are NaN rather than a made-up 0 or 1: a scorecard shows them as "n/a", and pooling counts over
files (:meth:`Confusion.__add__`) is how benchmark totals are formed anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def from_labels(cls, truth: np.ndarray, predicted: np.ndarray) -> Confusion:
        """Count agreements of two boolean (or 0/1) vectors of equal length."""
        t = np.asarray(truth).astype(bool)
        p = np.asarray(predicted).astype(bool)
        if t.shape != p.shape or t.ndim != 1:
            raise ValueError(f"truth and predictions must be 1-D and of equal length, got {t.shape} and {p.shape}")
        tp = int(np.count_nonzero(t & p))
        fp = int(np.count_nonzero(~t & p))
        fn = int(np.count_nonzero(t & ~p))
        return cls(tp=tp, fp=fp, tn=int(t.size) - tp - fp - fn, fn=fn)

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN): equals the harmonic mean of precision and recall, defined whenever either is."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def far(self) -> float:
        """False-alarm rate FP / (FP + TN): share of normal rows flagged."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed-alarm rate FN / (FN + TP): share of anomalous rows not flagged."""
        return _ratio(self.fn, self.fn + self.tp)


def confusion(truth: np.ndarray, predicted: np.ndarray) -> Confusion:
    """Shorthand for :meth:`Confusion.from_labels`."""
    return Confusion.from_labels(truth, predicted)
