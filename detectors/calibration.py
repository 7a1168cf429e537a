"""Alarm levels from the tail of normal scores: peaks over threshold (a generalised Pareto tail).

A quantile of normal scores can only name a rate the calibration data holds many times: q0.995 of a few
thousand windows means "a healthy machine's window is past the limit 36 times an hour", which pages a
fleet all day. The rates a plant can live with (about once per machine-day) lie far beyond the data, so
the level is extrapolated the way extreme-value statistics does it (Pickands-Balkema-de Haan: above a
high threshold u, exceedances follow a generalised Pareto distribution; the SPOT detector of Siffer et
al., KDD 2017, sets streaming alarm levels this way): fit GPD(xi, sigma) to the scores above u, then

    level(p) = u + sigma / xi * ((p / zeta_u) ** -xi - 1)        (zeta_u = share of scores above u)

for a per-window exceedance probability p. Too few exceedances or a failed fit fall back to the empirical
quantile (which understates the level; the method says so), and the level never comes out below it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TAIL_FRACTION = 0.05  # scores above their 95th percentile form the tail that is fitted
MIN_EXCEEDANCES = 30  # fewer points above u cannot pin a tail shape down
MAX_SHAPE = 0.5  # xi >= 0.5 is an infinite-variance tail: extrapolating it is guesswork, so the shape is capped


@dataclass(frozen=True)
class TailLevel:
    level: float
    method: str  # "pot" or "quantile" (the fallback)
    exceed_prob: float
    rows: int
    threshold_u: float = float("nan")
    exceedances: int = 0
    shape_xi: float = float("nan")
    scale_sigma: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def tail_level(scores: np.ndarray, exceed_prob: float, tail_fraction: float = TAIL_FRACTION) -> TailLevel:
    """The score a normal window exceeds with probability ``exceed_prob``, from normal ``scores``."""
    if not 0.0 < exceed_prob < 1.0:
        raise ValueError(f"exceed_prob must be in (0, 1), got {exceed_prob}")
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ValueError("tail_level: no finite scores to calibrate on")
    empirical = float(np.quantile(x, 1.0 - exceed_prob)) if exceed_prob * len(x) >= 1 else float(x.max())
    fallback = TailLevel(empirical, "quantile", exceed_prob, len(x))
    if exceed_prob >= tail_fraction:
        return fallback
    u = float(np.quantile(x, 1.0 - tail_fraction))
    excess = x[x > u] - u
    if len(excess) < MIN_EXCEEDANCES or float(excess.std()) <= 0.0:
        return fallback
    # heavy dependency, imported on use (see detectors.base)
    from scipy.stats import genpareto

    try:
        xi, _, sigma = genpareto.fit(excess, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):
        return fallback
    if not (np.isfinite(xi) and np.isfinite(sigma) and sigma > 0):
        return fallback
    xi = min(float(xi), MAX_SHAPE)
    ratio = exceed_prob / (len(excess) / len(x))
    excess_level = sigma * np.log(1.0 / ratio) if abs(xi) < 1e-9 else sigma / xi * (ratio**-xi - 1.0)
    level = max(u + float(excess_level), empirical)
    return TailLevel(level, "pot", exceed_prob, len(x), u, len(excess), xi, float(sigma))
