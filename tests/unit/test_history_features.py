"""history_features (shared by training, the scoring UDF and the evaluators) against pandas' own rolling maths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onnx_models.history import history_feature_names, history_features


def pandas_reference(frame: pd.DataFrame, columns: list[str], history: int, group: str | None) -> np.ndarray:
    raw = frame[columns].astype("float64")
    grouped = raw.groupby(frame[group], sort=False) if group else raw
    rolling = grouped.rolling(history, min_periods=1)
    mean, std = rolling.mean(), rolling.std(ddof=0)
    if group:
        mean = mean.reset_index(level=0, drop=True).loc[raw.index]
        std = std.reset_index(level=0, drop=True).loc[raw.index]
    diff = grouped.diff()
    return np.nan_to_num(np.hstack([raw.to_numpy(), mean.to_numpy(), std.to_numpy(), diff.to_numpy()]))


@pytest.mark.parametrize("group", ["machine", None])
def test_matches_pandas_rolling_with_interleaved_groups(group: str | None) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(1000, 50, size=(400, 3)), columns=["a", "b", "c"])
    frame["machine"] = rng.choice(["m1", "m2", "m3", "m4"], size=400)  # groups interleaved, time order within
    got, names = history_features(frame, ["a", "b", "c"], history=4, group=group)
    assert names == history_feature_names(["a", "b", "c"], 4) and got.shape == (400, 12)
    np.testing.assert_allclose(got, pandas_reference(frame, ["a", "b", "c"], 4, group), rtol=1e-10, atol=1e-9)


def test_hand_computed_first_rows_of_a_group() -> None:
    frame = pd.DataFrame({"x": [1.0, 10.0, 3.0, 20.0, 5.0], "g": ["a", "b", "a", "b", "a"]})
    got, _ = history_features(frame, ["x"], history=2, group="g")
    # columns: x, mean2, std2, diff.  Group a: 1, 3, 5; group b: 10, 20.
    expected = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],
            [10.0, 10.0, 0.0, 0.0],
            [3.0, 2.0, 1.0, 2.0],
            [20.0, 15.0, 5.0, 10.0],
            [5.0, 4.0, 1.0, 2.0],
        ]
    )
    np.testing.assert_allclose(got, expected)
