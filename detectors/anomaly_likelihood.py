"""Anomaly likelihood: how improbable is the recent level of surprise, given this series' own history of surprise?

Why: a raw surprise score (here the EWMA z-score of each value) means different things on different
series. A spiky load-balancer series is surprising every hour; a flat CPU series almost never. Numenta's
published idea ("anomaly likelihood", Ahmad et al. 2017) turns any raw score into a probability: average the
raw score over a short recent window, model that average's long-run distribution as a Gaussian, and report
how far out in its upper tail the current average lies. A series whose raw scores are routinely high thus
needs a much larger excursion to alarm, and one excursion inflates the long-run variance so that its
aftermath alarms less (a natural re-arm). Written here from that description; the running statistics
are EWMAs rather than sliding windows, so the state is six numbers and one block is computed with
``lfilter`` (one block == many blocks, exactly).

Per value ``x_t`` (NaN/inf are skipped: scored 0, state untouched):
    raw_t   = min(|x_t - m_{t-1}| / sqrt(v_{t-1} + eps), raw_cap)   # EWMA z-score, ``alpha``
    short_t = EWMA of raw with ``short_alpha``                      # the recent surprise level
    z_t     = (short_t - M_{t-1}) / sqrt(V_{t-1} + eps)             # M, V: EWMA of short, ``long_alpha``
    score_t = clip(log Q(z_t) / log(1e-10), 0, 1)                   # Q = Gaussian upper tail
So ``score > 0.5`` means a tail probability below 1e-5 (Numenta's log-scaled likelihood); the score is 0
during the first ``warmup`` values.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from detectors.base import StreamingDetector, register
from detectors.ewma_zscore import ewma_filter, ewma_mean_var

# score = log(p) / log(TAIL_FLOOR): p = 1e-10 (or less) maps to 1.0, p = 1e-5 to 0.5.
TAIL_FLOOR = 1e-10


@register()
class AnomalyLikelihood(StreamingDetector):
    """EWMA z-score -> short EWMA -> Gaussian upper-tail probability against its own long-run EWMA stats."""

    name: ClassVar[str] = "anomaly_likelihood"
    # Alarm level meaning "tail probability below 1e-5", fixed in advance (not fitted to any labels).
    default_threshold: ClassVar[float] = 0.5

    def __init__(
        self,
        alpha: float = 0.01,
        short_alpha: float = 0.2,
        long_alpha: float = 0.002,
        warmup: int = 300,
        raw_cap: float = 20.0,
        eps: float = 1e-9,
    ) -> None:
        for label, a in (("alpha", alpha), ("short_alpha", short_alpha), ("long_alpha", long_alpha)):
            if not 0.0 < a <= 1.0:
                raise ValueError(f"{label} must be in (0, 1], got {a}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 value, got {warmup}")
        if raw_cap <= 0:
            raise ValueError(f"raw_cap must be > 0, got {raw_cap}")
        self.alpha, self.short_alpha, self.long_alpha = float(alpha), float(short_alpha), float(long_alpha)
        self.warmup, self.raw_cap, self.eps = int(warmup), float(raw_cap), float(eps)

    def initial_state(self) -> dict[str, Any]:
        return {"count": 0, "mean": 0.0, "var": 0.0, "short": 0.0, "long_mean": 0.0, "long_var": 0.0}

    def update(self, state: dict[str, Any], values: np.ndarray, timestamps_ms: np.ndarray) -> np.ndarray:
        # heavy dependency, imported on use (see detectors.base)
        from scipy.special import log_ndtr

        x = np.asarray(values, dtype=np.float64)
        scores = np.zeros(x.shape[0], dtype=np.float64)
        ok = np.isfinite(x)
        xs = x[ok]
        if xs.size == 0:
            return scores
        count = int(state["count"])
        fresh = count == 0
        mean0 = float(xs[0]) if fresh else float(state["mean"])
        var0 = 0.0 if fresh else float(state["var"])
        mean_prev, var_prev, mean, var = ewma_mean_var(xs, self.alpha, mean0, var0)
        raw = np.minimum(np.abs(xs - mean_prev) / np.sqrt(var_prev + self.eps), self.raw_cap)
        seen = count + np.arange(xs.size)  # values absorbed before each one
        raw[seen == 0] = 0.0  # the very first value defines the baseline; it cannot surprise
        short = ewma_filter(raw, self.short_alpha, float(state["short"]))
        lm0 = float(short[0]) if fresh else float(state["long_mean"])
        lm_prev, lv_prev, lm, lv = ewma_mean_var(short, self.long_alpha, lm0, float(state["long_var"]))
        z = (short - lm_prev) / np.sqrt(lv_prev + self.eps)
        # log Q(z) = log_ndtr(-z): accurate far into the tail, where 1 - cdf would round to 0.
        score = np.clip(log_ndtr(-z) / np.log(TAIL_FLOOR), 0.0, 1.0)
        score[seen < self.warmup] = 0.0
        scores[ok] = score
        state.update(
            count=count + int(xs.size),
            mean=float(mean[-1]),
            var=float(var[-1]),
            short=float(short[-1]),
            long_mean=float(lm[-1]),
            long_var=float(lv[-1]),
        )
        return scores
