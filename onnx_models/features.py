"""Window statistics -> one feature row per (machine, window); shared by training and the scoring UDF.

ClickHouse (and the window-stats topic) hold one row per (machine, sensor, window). A model wants one
row per (machine, window), with every sensor's statistics side by side in a FIXED column order
(``<sensor>.<stat>``, sensors sorted, then the stats in :data:`FEATURE_STATS` order), so the columns
a model was trained on are exactly the columns it is later scored on. Short causal history (rolling
mean/std and first difference, from :mod:`onnx_models.history`) is appended per machine.

Streaming use: history needs the machine's previous windows, so the UDF passes the current windows
plus the last ``history - 1`` windows of each machine it keeps in state, and scores only the new rows
(the returned index says which row is which).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from onnx_models.history import DEFAULT_HISTORY, history_feature_names, history_features

FEATURE_STATS: tuple[str, ...] = ("avg", "stddev", "min", "max", "count")
KEY_COLUMNS: tuple[str, ...] = ("equipment_id", "window_start")
REQUIRED_COLUMNS: tuple[str, ...] = ("equipment_id", "sensor", "window_start", *FEATURE_STATS)


@dataclass(frozen=True)
class WindowFeatures:
    """Feature matrix of one equipment type, its column names, and which (machine, window) each row is."""

    matrix: np.ndarray  # float32 (rows x features); NaN-free
    feature_names: list[str]
    # equipment_id, window_start (as given), complete (every sensor present in that window), in row order
    index: pd.DataFrame

    def __iter__(self):  # allows ``x, names, index = window_features(...)``
        return iter((self.matrix, self.feature_names, self.index))


def base_feature_names(sensors: Sequence[str], stats: Sequence[str] = FEATURE_STATS) -> list[str]:
    """``<sensor>.<stat>`` for sorted sensors, stats in the given order (the pivot's column order)."""
    return [f"{sensor}.{stat}" for sensor in sorted(sensors) for stat in stats]


def feature_names_for(sensors: Sequence[str], history: int = DEFAULT_HISTORY) -> list[str]:
    """Every column :func:`window_features` returns for these sensors, in order."""
    return history_feature_names(base_feature_names(sensors), history)


def sensors_from_feature_names(feature_names: Sequence[str]) -> list[str]:
    """The sensors a model was trained on, recovered from its feature names (so the UDF needs no extra state)."""
    sensors = {name.split("__", 1)[0].rsplit(".", 1)[0] for name in feature_names}
    return sorted(sensors)


def window_features(
    frame: pd.DataFrame,
    sensors: Sequence[str] | None = None,
    history: int = DEFAULT_HISTORY,
) -> WindowFeatures:
    """Pivot one equipment type's window stats into a float32 feature matrix (vectorised).

    ``frame`` has one row per (equipment_id, sensor, window_start) with the stats columns (extra
    columns are ignored). ``sensors`` fixes the columns (a model's own sensors when scoring);
    by default the sorted sensors present in ``frame``. Sensors not in ``sensors`` are dropped; a
    sensor missing from a window leaves that window incomplete (``index.complete`` False, values 0),
    which training drops and scoring should leave to the dead-sensor rule. Duplicate rows of a key
    (at-least-once redelivery) are averaged. Rows come out sorted by machine, then window.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"window_features: columns {missing} missing (has {list(frame.columns)}); pass rows shaped like "
            "ClickHouse window_stats"
        )
    if sensors is None:
        sensors = sorted(frame["sensor"].astype(str).unique())
    sensors = sorted(sensors)
    if not sensors:
        raise ValueError("window_features: no sensors (empty frame and no sensor list)")
    stats = list(FEATURE_STATS)
    data = frame.loc[frame["sensor"].isin(sensors), [*REQUIRED_COLUMNS]]
    data = data.astype({"sensor": "str", **dict.fromkeys(stats, "float64")})
    wide = data.pivot_table(index=list(KEY_COLUMNS), columns="sensor", values=stats, aggfunc="mean", sort=True)
    # Columns in the fixed order, adding sensors that never reported in this batch (all NaN).
    wide = wide.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([sensors, stats]))
    names = base_feature_names(sensors, stats)
    wide.columns = names
    complete = wide.notna().all(axis=1).to_numpy()
    index = wide.index.to_frame(index=False)
    index["complete"] = complete
    flat = wide.reset_index(drop=True).fillna(0.0)
    flat["equipment_id"] = index["equipment_id"].to_numpy()
    matrix, feature_names = history_features(flat, names, history=history, group="equipment_id")
    return WindowFeatures(matrix.astype(np.float32), feature_names, index)


def check_feature_names(expected: Sequence[str], actual: Sequence[str], what: str = "model") -> None:
    """Raise ValueError naming the first difference between two feature lists (or do nothing if equal)."""
    expected, actual = list(expected), list(actual)
    if expected == actual:
        return
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            raise ValueError(
                f"{what} feature mismatch at column {i}: {what} has {a!r}, the features have {e!r} "
                f"({len(actual)} vs {len(expected)} columns); retrain the model on the current features"
            )
    shorter, longer, who = (actual, expected, "features") if len(actual) < len(expected) else (expected, actual, what)
    raise ValueError(
        f"{what} feature mismatch: {what} has {len(actual)} columns, the features have {len(expected)}; "
        f"first extra column in the {who}: {longer[len(shorter)]!r} (at {len(shorter)}); retrain the model"
    )
