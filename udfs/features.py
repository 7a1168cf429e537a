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
    raw = frame[list(columns)].astype("float64")
    if history <= 1:
        return raw.to_numpy(), history_feature_names(columns, history)
    grouped = raw.groupby(frame[group], sort=False) if group else raw
    rolling = grouped.rolling(history, min_periods=1)
    mean = rolling.mean()
    std = rolling.std(ddof=0)
    diff = grouped.diff()
    if group:  # groupby().rolling() puts the group key in front of the index; restore row order
        mean = mean.reset_index(level=0, drop=True).loc[raw.index]
        std = std.reset_index(level=0, drop=True).loc[raw.index]
    out = np.hstack([raw.to_numpy(), mean.to_numpy(), std.to_numpy(), diff.to_numpy()])
    return np.nan_to_num(out, nan=0.0), history_feature_names(columns, history)
