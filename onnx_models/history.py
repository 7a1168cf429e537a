"""Short-history features shared by the Flink UDFs and ``vigil evaluate`` (one definition, no copies).

Each series' recent past says more than one noisy row: a rolling mean removes sensor noise, a rolling
std and a first difference expose changes in variability and sudden steps. Everything is causal (a row
only sees itself and earlier rows of the same group), so the same function works on a replayed file
and on a live stream of windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_HISTORY = 5


def history_feature_names(columns: Sequence[str], history: int = DEFAULT_HISTORY) -> list[str]:
    """Names, in order, of the columns :func:`history_features` returns."""
    names = list(columns)
    if history > 1:
        names += [f"{c}__mean{history}" for c in columns]
        names += [f"{c}__std{history}" for c in columns]
        names += [f"{c}__diff" for c in columns]
    return names


def history_features(
    frame: pd.DataFrame,
    columns: Sequence[str],
    history: int = DEFAULT_HISTORY,
    group: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Raw columns plus causal rolling mean/std over ``history`` rows and a first difference.

    ``frame`` must be in time order (within each ``group``, e.g. an equipment id or a file). The
    first rows of a group use whatever history exists (std and diff are 0 there), so no row is dropped
    and no NaN is produced. Returns a float64 matrix and its column names.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"history_features: columns {missing} are not in the frame (has {list(frame.columns)})")
    raw = frame[list(columns)].to_numpy(dtype=np.float64)
    if history <= 1:
        return raw, history_feature_names(columns, history)
    mean, std, diff = _rolling(raw, frame[group].to_numpy() if group else None, history)
    out = np.hstack([raw, mean, std, diff])
    return np.nan_to_num(out, nan=0.0), history_feature_names(columns, history)


def _rolling(x: np.ndarray, groups: np.ndarray | None, history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal per-group rolling mean / population std over ``history`` rows, and first difference.

    Vectorised over rows: one pass per lag (``history`` passes) instead of a Python call per group
    (pandas' groupby().rolling() costs milliseconds per group, i.e. per machine in a scoring batch).
    """
    n = len(x)
    if groups is None:
        order = np.arange(n)
        pos = np.arange(n)
    else:
        codes = pd.factorize(groups)[0]
        order = np.argsort(codes, kind="stable")  # rows of a group together, time order kept
        sorted_codes = codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
        pos = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    xs = x[order]
    total = np.zeros_like(xs)
    count = np.zeros((n, 1))
    for lag in range(history):
        valid = (pos >= lag)[:, None]
        total += np.where(valid, np.roll(xs, lag, axis=0), 0.0)
        count += valid
    mean = total / count
    spread = np.zeros_like(xs)
    for lag in range(history):
        valid = (pos >= lag)[:, None]
        spread += np.where(valid, (np.roll(xs, lag, axis=0) - mean) ** 2, 0.0)
    std = np.sqrt(spread / count)
    diff = np.where((pos >= 1)[:, None], xs - np.roll(xs, 1, axis=0), np.nan)
    unsort = np.empty(n, dtype=np.int64)
    unsort[order] = np.arange(n)
    return mean[unsort], std[unsort], diff[unsort]
