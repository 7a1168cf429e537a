"""Z-score of each value against an exponentially weighted baseline of its own series.

Why EWMA: the baseline follows slow drift (load, temperature) with O(1) state per series (count, mean,
var), which Flink keyed state checkpoints as plain numbers. Each value is scored against the baseline
*before* it is absorbed, so a spike cannot hide itself.

Recurrences (West / Finch, "incremental EW variance"), with ``d_t = x_t - m_{t-1}``:
    m_t = m_{t-1} + a d_t                       = (1 - a) m_{t-1} + a x_t
    v_t = (1 - a) (v_{t-1} + a d_t^2)
Both are first-order linear filters, so a block is computed with ``scipy.signal.lfilter`` and the last
values are carried into the next block exactly (one block == many blocks).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from detectors.base import StreamingDetector, register


def ewma_filter(x: np.ndarray, alpha: float, y0: float) -> np.ndarray:
    """y_t = (1 - alpha) y_{t-1} + alpha x_t with y_{-1} = y0, vectorised."""
    # heavy dependency, imported on use (see detectors.base)
    from scipy.signal import lfilter

    out, _ = lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1.0 - alpha) * y0])
    return out


def ewma_mean_var(
    x: np.ndarray, alpha: float, mean0: float, var0: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Baselines before and after each value: (mean_prev, var_prev, mean, var), all shape (n,)."""
    # heavy dependency, imported on use (see detectors.base)
    from scipy.signal import lfilter

    mean = ewma_filter(x, alpha, mean0)
    mean_prev = np.concatenate(([mean0], mean[:-1]))
    d = x - mean_prev
    # v_t = (1-a) v_{t-1} + (1-a) a d_t^2  ->  an EWMA of (1-a) d_t^2 ... written as one lfilter.
    var, _ = lfilter([(1.0 - alpha) * alpha], [1.0, alpha - 1.0], d * d, zi=[(1.0 - alpha) * var0])
    var_prev = np.concatenate(([var0], var[:-1]))
    return mean_prev, var_prev, mean, var


@register()
class EwmaZScore(StreamingDetector):
    """|x - EWMA mean| / sqrt(EWMA variance + eps), zero during the warm-up."""

    name: ClassVar[str] = "ewma_zscore"

    def __init__(self, alpha: float = 0.01, warmup: int = 30, eps: float = 1e-9) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 value, got {warmup}")
        self.alpha, self.warmup, self.eps = float(alpha), int(warmup), float(eps)

    def initial_state(self) -> dict[str, Any]:
        return {"count": 0, "mean": 0.0, "var": 0.0}

    def update(self, state: dict[str, Any], values: np.ndarray, timestamps_ms: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        scores = np.zeros(x.shape[0], dtype=np.float64)
        ok = np.isfinite(x)  # NaN/inf neither score nor move the baseline
        xs = x[ok]
        if xs.size == 0:
            return scores
        count = int(state["count"])
        mean0 = float(xs[0]) if count == 0 else float(state["mean"])
        var0 = 0.0 if count == 0 else float(state["var"])
        mean_prev, var_prev, mean, var = ewma_mean_var(xs, self.alpha, mean0, var0)
        z = np.abs(xs - mean_prev) / np.sqrt(var_prev + self.eps)
        seen = count + np.arange(xs.size)  # values absorbed before each one
        z[seen < self.warmup] = 0.0
        scores[ok] = z
        state["count"] = count + int(xs.size)
        state["mean"] = float(mean[-1])
        state["var"] = float(var[-1])
        return scores
