"""The small interface every detector implements, so the Flink UDFs and `vigil evaluate` share one code path.

Two kinds, one detector per module (like River):
- :class:`BatchDetector` scores rows of a feature matrix at once (vectorised; the pandas UDFs hand it a
  whole Arrow batch). Fitted on normal data only; ``calibrate`` sets the alarm threshold from scores
  of normal data.
- :class:`StreamingDetector` keeps per-series state (e.g. an EWMA baseline) and scores values in time
  order; ``update`` takes a block of consecutive values of ONE series and is vectorised inside where
  the maths allows. Its state is a plain dict of numbers so Flink keyed state can checkpoint it.
Scores: higher means more anomalous; NaN never leaves a detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np


class BatchDetector(ABC):
    """A model over feature rows (e.g. one row per machine and window)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.feature_names: list[str] = []
        self.threshold: float | None = None

    @abstractmethod
    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:
        """Learn normal behaviour from rows known to be normal."""

    @abstractmethod
    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly score per row (float64, shape (n,)); higher is more anomalous."""

    def calibrate(self, normal_features: np.ndarray, quantile: float = 0.99) -> float:
        """Set the alarm threshold to a quantile of the scores of normal rows."""
        self.threshold = float(np.quantile(self.score(normal_features), quantile))
        return self.threshold

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Boolean alarm per row (requires a threshold)."""
        if self.threshold is None:
            raise RuntimeError(f"{self.name}: call calibrate() (or set threshold) before predict()")
        return self.score(features) > self.threshold


class StreamingDetector(ABC):
    """A stateful detector for one series, fed in time order."""

    name: ClassVar[str]

    @abstractmethod
    def initial_state(self) -> dict[str, Any]:
        """State of a series that has seen nothing yet (JSON-serialisable numbers only)."""

    @abstractmethod
    def update(self, state: dict[str, Any], values: np.ndarray, timestamps_ms: np.ndarray) -> np.ndarray:
        """Score consecutive values of one series, updating ``state`` in place; returns one score per value."""
