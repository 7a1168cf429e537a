"""Hot swap: the scorer takes a newly promoted model on its next poll and refuses one built on other features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors.pca_t2q import PcaT2Q
from onnx_models.features import window_features
from onnx_models.registry import ModelRegistry
from udfs.model_set import ModelSet

SIZE_MS = 5000
SENSORS = ["flow", "speed", "temp"]


def stats(sensors: list[str], n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "equipment_id": "m",
                    "sensor": s,
                    "window_start": np.arange(n) * SIZE_MS,
                    "count": 10.0,
                    "avg": 50 + rng.normal(0, 1, n),
                    "stddev": 0.5,
                    "min": 48.0,
                    "max": 52.0,
                }
            )
            for s in sensors
        ],
        ignore_index=True,
    )


def register(registry: ModelRegistry, sensors: list[str], history: int = 5, promote: bool = True, **extra) -> str:
    x, names, _ = window_features(stats(sensors), history=history)
    model = PcaT2Q().fit(x, names)
    meta = {
        "feature_names": names,
        "threshold": 1.0,
        "threshold_method": "t2/q limits",
        "history": history,
        "window_size_ms": SIZE_MS,
        **extra,
    }
    return registry.register("pump", "pca_t2q", model.to_onnx(), meta, promote=promote).version


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    clock = Clock()
    models = ModelSet(registry, {"pump": SENSORS}.get, detectors=["pca_t2q"], poll_s=5.0, clock=clock)
    return registry, models, clock


def live_version(models: ModelSet) -> str | None:
    live = models.models_for("pump")
    return live[0].version if live else None


def test_no_model_means_rules_only(setup) -> None:
    _, models, _ = setup
    assert models.models_for("pump") == [] and models.versions("pump") == ""


def test_promoted_model_is_picked_up_on_the_next_poll_only(setup) -> None:
    registry, models, clock = setup
    register(registry, SENSORS)
    assert live_version(models) == "v0001"
    register(registry, SENSORS)  # v0002, promoted
    clock.now = 4.9
    assert live_version(models) == "v0001"  # not polled yet: no file reads per batch
    clock.now = 5.0
    assert live_version(models) == "v0002" and models.swaps == 2
    registry.rollback("pump", "pca_t2q")
    clock.now = 10.0
    assert live_version(models) == "v0001" and models.versions("pump") == "pca_t2q=v0001"


@pytest.mark.parametrize(
    ("sensors", "history", "extra", "reason"),
    [
        (["flow", "speed"], 5, {}, "feature mismatch"),  # trained without a sensor
        (SENSORS, 3, {}, "feature mismatch"),  # sensors right, but its names say history 5 vs metadata 3
        (SENSORS, 5, {"window_size_ms": 10_000}, "10000 ms windows"),
        (SENSORS, 9, {}, "history=9"),
    ],
)
def test_mismatched_model_is_refused_and_the_previous_keeps_scoring(setup, sensors, history, extra, reason) -> None:
    registry, models, clock = setup
    register(registry, SENSORS)
    assert live_version(models) == "v0001"
    if history == 3:  # names built with history 5, metadata claiming 3: inconsistent
        x, names, _ = window_features(stats(SENSORS), history=5)
        model = PcaT2Q().fit(x, names)
        registry.register(
            "pump",
            "pca_t2q",
            model.to_onnx(),
            {
                "feature_names": names,
                "threshold": 1.0,
                "threshold_method": "q",
                "history": 3,
                "window_size_ms": SIZE_MS,
            },
            promote=True,
        )
    else:
        register(registry, sensors, history=history, **extra)
    clock.now = 5.0
    assert live_version(models) == "v0001"
    ((version, why),) = models.refused().values()
    assert version == "v0002" and reason in why and models.refusals == 1
    clock.now = 10.0  # the refused version is not retried on every poll
    assert live_version(models) == "v0001" and models.refusals == 1
    register(registry, SENSORS)  # a good v0003 replaces v0001 and clears the refusal
    clock.now = 15.0
    assert live_version(models) == "v0003" and models.refused() == {}
