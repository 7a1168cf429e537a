"""VUS-PR and VUS-ROC (volume under the range-PR / range-ROC surface), to TSB-AD's definition.

Why: point-adjusted F1 credits a whole labelled anomaly as found when any single row of it alarms, so a
random or lagging score looks good on benchmarks with long anomalies (SKAB, NAB). TSB-AD (Liu & Paparrizos,
NeurIPS 2024, github.com/TheDatumOrg/TSB-AD) recommends VUS-PR instead: threshold-free, it rewards a score
that ranks the labelled rows (and rows just around them) above the rest, and it is what TSB-AD's
leaderboards report. This is an own vectorised implementation of the definition in TSB-AD's evaluation
code (``get_metrics`` -> ``generate_curve`` -> ``RangeAUC_volume_opt``, ``thre=250``); unit tests hold
it to numbers computed with TSB-AD's own code.

The definition, for binary ``labels`` (``y``), ``scores`` and a buffer length ``L`` (``sliding_window``):

- Anomaly segments are the runs of ``y == 1``. For each buffer ``w`` in ``0 .. L``, the labels are
  extended by ``h = w // 2`` rows on each side of every segment with the soft value
  ``sqrt(1 - d / w)`` at distance ``d = 1 .. h`` (overlapping ramps add, then the result is clipped at 1;
  labelled rows stay 1). Call this ``e_w``.
- Thresholds: the scores sorted in decreasing order, taken at the 250 positions
  ``floor(linspace(0, n - 1, 250))``; at threshold ``t`` the prediction is ``score >= t``.
- At each (``w``, ``t``), with ``TP = sum(e_w * pred)``, ``P`` the labelled rows and ``P' = P + (TP -
  sum(y * pred)) / 2``: recall ``min(TP / P', 1)``, existence = share of the buffered segments (segments
  whose buffers touch merge into one) holding at least one predicted row, TPR = recall x existence,
  FPR = ``(sum(pred) - TP) / (n - P')``, precision = ``TP / sum(pred)``.
- Per ``w``: ROC area by the trapezoid over ``(0, 0), (FPR_k, TPR_k) .., (1, 1)`` in threshold order;
  PR area as ``sum_k (TPR_k - TPR_{k-1}) * precision_k`` with ``TPR_0 = 0`` (a step sum). VUS is the mean
  of the areas over the ``L + 1`` buffers.

``L`` is, in TSB-AD's benchmark, the period of the data (:func:`sliding_window_for`, TSB-AD's
``find_length_rank(rank=1)``; for multivariate files its scripts use the first channel), not a free
parameter. Scores enter only through their ranks, so any strictly increasing transform leaves VUS unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

N_THRESHOLDS = 250  # TSB-AD's ``thre``
# find_length_rank: ACF up to lag 400 of the first 20,000 values; lags before BASE are ignored; a peak lag
# outside (BASE + 2, MAX_PERIOD] or no peak at all gives DEFAULT_PERIOD.
ACF_MAX_LAG = 400
ACF_MAX_POINTS = 20_000
ACF_BASE = 3
MAX_PERIOD = 300 + ACF_BASE
DEFAULT_PERIOD = 125


@dataclass(frozen=True)
class Vus:
    """VUS-PR and VUS-ROC of one series, with the buffer length they were computed for."""

    pr: float
    roc: float
    sliding_window: int


def _segments(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (start, end) row indices of the runs of 1 in ``y``."""
    edges = np.diff(np.concatenate(([0], y.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def _check(labels: ArrayLike, scores: ArrayLike, sliding_window: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D and of equal length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (or boolean)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (replace NaN/inf before evaluating)")
    y = y.astype(np.int8)
    if not 0 < int(y.sum()) < y.size:
        raise ValueError("VUS needs at least one anomalous and one normal row")
    if int(sliding_window) != sliding_window or sliding_window < 0:
        raise ValueError(f"sliding_window must be an integer >= 0, got {sliding_window!r}")
    return y, s


def vus(labels: ArrayLike, scores: ArrayLike, sliding_window: int, n_thresholds: int = N_THRESHOLDS) -> Vus:
    """VUS-PR and VUS-ROC of ``scores`` against binary ``labels`` for buffers ``0 .. sliding_window``.

    Memory is a few times ``8 * (sliding_window + 1) * r`` bytes, ``r`` the rows within ``sliding_window // 2``
    of a labelled row. Raises ValueError on mismatched or non-finite input and on labels of one class.
    """
    y, s = _check(labels, scores, sliding_window)
    window = int(sliding_window)
    n = y.size
    half = window // 2
    starts, ends = _segments(y)

    # Rows that any buffer can reach: the labelled rows and up to ``half`` rows either side of them.
    reach = np.zeros(n + 1, dtype=np.int64)
    np.add.at(reach, np.maximum(starts - half, 0), 1)
    np.add.at(reach, np.minimum(ends + half, n - 1) + 1, -1)
    near = np.flatnonzero(np.cumsum(reach[:n]) > 0)
    position = np.full(n, -1, dtype=np.int64)
    position[near] = np.arange(near.size)

    # ramp[w, d]: the extended label at distance d of a segment for buffer w (0 beyond w // 2 and for d = 0).
    buffers = np.arange(window + 1)
    distance = np.arange(half + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = np.sqrt(np.clip(1.0 - distance[None, :] / buffers[:, None], 0.0, None))
    ramp[(distance[None, :] > buffers[:, None] // 2) | (distance[None, :] == 0)] = 0.0

    # extended[w, j]: the extended label of row near[j] for buffer w; extremes[k, h]: the highest score
    # within h rows of segment k (the segment itself included), for the existence term.
    extended = np.repeat(y[near][None, :].astype(np.float64), window + 1, axis=0)
    extremes = np.empty((starts.size, half + 1))
    for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        after = np.arange(end + 1, min(end + half, n - 1) + 1)
        before = np.arange(start - 1, max(start - half, 0) - 1, -1)
        extended[:, position[after]] += ramp[:, 1 : after.size + 1]
        extended[:, position[before]] += ramp[:, 1 : before.size + 1]
        inside = s[start : end + 1].max()
        right = np.maximum.accumulate(np.concatenate(([inside], s[after])))
        left = np.maximum.accumulate(np.concatenate(([inside], s[before])))
        right = np.concatenate((right, np.full(half + 1 - right.size, right[-1])))
        left = np.concatenate((left, np.full(half + 1 - left.size, left[-1])))
        extremes[k] = np.maximum(left, right)
    np.minimum(extended, 1.0, out=extended)

    # Thresholds and, per threshold, the rows at or above it (all rows, labelled rows, rows near a segment).
    descending = np.sort(s)[::-1]
    thresholds = descending[np.linspace(0, n - 1, n_thresholds).astype(np.int64)]
    ascending = descending[::-1]
    predicted = n - np.searchsorted(ascending, thresholds, side="left")
    labelled = np.sort(s[y == 1])
    predicted_labelled = labelled.size - np.searchsorted(labelled, thresholds, side="left")
    near_order = np.argsort(-s[near], kind="stable")
    near_sorted = s[near][near_order][::-1]
    predicted_near = near.size - np.searchsorted(near_sorted, thresholds, side="left")
    cumulative = np.zeros((window + 1, near.size + 1))
    np.cumsum(extended[:, near_order], axis=1, out=cumulative[:, 1:])
    tp = cumulative[:, predicted_near]  # (buffers, thresholds)

    # Existence: segments whose buffered spans touch form one group; a group counts once per threshold.
    gaps = starts[1:] - ends[:-1]
    existence = np.empty((window + 1, n_thresholds))
    n_groups = np.empty(window + 1)
    for h in range(half + 1):
        first = np.flatnonzero(np.concatenate(([True], gaps > 2 * h)))
        group_max = np.maximum.reduceat(extremes[:, h], first)
        rows = buffers // 2 == h
        existence[rows] = (group_max[:, None] >= thresholds[None, :]).sum(axis=0)
        n_groups[rows] = first.size

    positives = float(y.sum())
    p_new = positives + (tp - predicted_labelled[None, :]) / 2.0
    recall = np.minimum(tp / p_new, 1.0)
    tpr = recall * existence / n_groups[:, None]
    fpr = (predicted[None, :] - tp) / (n - p_new)
    precision = tp / predicted[None, :]

    zeros, ones = np.zeros((window + 1, 1)), np.ones((window + 1, 1))
    roc_x = np.hstack((zeros, fpr, ones))
    roc_y = np.hstack((zeros, tpr, ones))
    roc = np.sum(np.diff(roc_x, axis=1) * (roc_y[:, 1:] + roc_y[:, :-1]) / 2.0, axis=1)
    pr = np.sum(np.diff(np.hstack((zeros, tpr)), axis=1) * precision, axis=1)
    return Vus(pr=float(pr.mean()), roc=float(roc.mean()), sliding_window=window)


def vus_pr(labels: ArrayLike, scores: ArrayLike, sliding_window: int) -> float:
    """TSB-AD's VUS-PR (see the module docstring)."""
    return vus(labels, scores, sliding_window).pr


def vus_roc(labels: ArrayLike, scores: ArrayLike, sliding_window: int) -> float:
    """TSB-AD's VUS-ROC (see the module docstring)."""
    return vus(labels, scores, sliding_window).roc


def autocorrelation(series: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample ACF at lags ``0 .. min(max_lag, n - 1)``: demeaned, biased (divided by n), via FFT."""
    x = np.asarray(series, dtype=np.float64)
    x = x - x.mean()
    n = x.size
    size = 1 << int(np.ceil(np.log2(2 * n + 1)))
    spectrum = np.fft.rfft(x, n=size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size)[:n] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return acov[: max_lag + 1] / acov[0]


def sliding_window_for(series: ArrayLike) -> int:
    """TSB-AD's buffer length for a series: its dominant period by the ACF (``find_length_rank``, rank 1).

    Of the strict local maxima of the ACF over lags 3 .. 400 (first 20,000 values), the highest gives the
    period; it is 125 when there is none or when that lag is below 6 or above 303 (so a constant series
    gives 125). A 2-D array is read as (rows, channels) and its first channel is used, as TSB-AD's
    benchmark scripts do for multivariate files.
    """
    x = np.asarray(series, dtype=np.float64).squeeze()
    if x.ndim == 2:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"expected a series (1-D) or rows x channels (2-D), got shape {np.shape(series)}")
    acf = autocorrelation(x[:ACF_MAX_POINTS], ACF_MAX_LAG)[ACF_BASE:]
    if acf.size < 3:
        return DEFAULT_PERIOD
    inner = acf[1:-1]
    peaks = np.flatnonzero((inner > acf[:-2]) & (inner > acf[2:])) + 1
    if peaks.size == 0:
        return DEFAULT_PERIOD
    best = int(peaks[np.argsort(acf[peaks])[-1]])
    if best < ACF_BASE or best + ACF_BASE > MAX_PERIOD:
        return DEFAULT_PERIOD
    return best + ACF_BASE


def vus_for_series(labels: ArrayLike, scores: ArrayLike, series: ArrayLike) -> Vus:
    """VUS of ``scores`` with the buffer length TSB-AD would pick for ``series`` (the data the scores are of)."""
    return vus(labels, scores, sliding_window_for(series))
