"""Constructed files in SKAB's format for the evaluator and writer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_skab_file(path: Path, n: int, anomalous_from: int, seed: int, swap: tuple[int, int] | None = None) -> None:
    """A SKAB-format experiment: three sensors, a 25-sigma step in ``b`` labelled from ``anomalous_from``."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) * [0.01, 0.1, 0.2] + [0.2, 2.0, 0.3], columns=["a", "b", "c"])
    frame.iloc[anomalous_from:, 1] += 5.0
    stamps = pd.date_range("2020-03-09 10:00:00", periods=n, freq="s").strftime("%Y-%m-%d %H:%M:%S").tolist()
    frame.insert(0, "datetime", stamps)
    frame["anomaly"] = (np.arange(n) >= anomalous_from).astype(float)
    frame["changepoint"] = (np.arange(n) == anomalous_from).astype(float)
    if swap is not None:  # a file whose rows are not in time order: results keep the FILE's order
        i, j = swap
        frame.iloc[[i, j]] = frame.iloc[[j, i]].to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)
