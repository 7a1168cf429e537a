"""`vigil train --simulated` and the demo's pre-training: models fitted on a simulated history, recorded as such,
and only retrained when the live ones do not fit the fleet's sample layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from detectors import job_detectors
from onnx_models.registry import ModelRegistry
from operations.training.simulated import (
    METADATA_KEY,
    SimulatedHistory,
    ensure_simulated_models,
    live_models_fit,
    train_simulated,
)
from vigil.rules import load_rules
from vigil.settings import Settings, SimulatorSettings

NOW_MS = 1_796_000_000_000


def _settings(tmp_path: Path, samples: int = 10) -> Settings:
    return Settings(data_dir=tmp_path, simulator=SimulatorSettings(samples_per_sensor=samples))


def _quiet() -> Console:
    return Console(file=io.StringIO())


def test_history_is_other_machines_and_records_the_layout(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = SimulatedHistory.for_settings(settings, machines=12, hours=0.25)
    assert history.seed != settings.simulator.seed  # not the live fleet's own machines
    assert history.samples_per_sensor == 10
    assert history.fits({METADATA_KEY: {"samples_per_sensor": 10}})
    assert not history.fits({METADATA_KEY: {"samples_per_sensor": 70}})
    assert not history.fits({"source": "clickhouse"})  # trained on something else: no claim about the layout
    with pytest.raises(ValueError, match="needs >= 1 machine"):
        SimulatedHistory.for_settings(settings, machines=0)


def test_train_simulated_registers_every_type_and_detector_ending_now(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    registry = ModelRegistry(tmp_path / "models")
    history = SimulatedHistory.for_settings(settings, machines=12, hours=0.25)
    versions = train_simulated(settings, registry, history, now_ms=NOW_MS + 1234, console=_quiet())
    types = sorted(load_rules(settings.scoring.rules_path).equipment_types)
    assert sorted({(v.equipment_type, v.detector) for v in versions}) == sorted(
        (t, d) for t in types for d in job_detectors()
    )
    for v in versions:
        assert v.live
        assert v.metadata[METADATA_KEY]["machines"] == 12
        assert v.metadata[METADATA_KEY]["samples_per_sensor"] == 10
        assert v.metadata["threshold_method"]["alarm_rate_per_machine_hour"] == (
            settings.scoring.alarm_rate_per_machine_hour
        )
        # The history ends at the last whole window before now and lasts the hours asked for.
        assert v.metadata["training_range"]["until"].startswith("2026-11-30T00:53:20")
        assert v.metadata["training_range"]["since"].startswith("2026-11-30T00:38:20")
        assert np.isfinite(v.threshold) and v.threshold > 0
    assert live_models_fit(registry, history, types)
    assert not live_models_fit(registry, SimulatedHistory.for_settings(_settings(tmp_path, 70), 12, 0.25), types)


def test_ensure_trains_once_per_layout(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_simulated_models(settings, _quiet(), machines=12, hours=0.25)
    assert first  # nothing was live
    assert ensure_simulated_models(settings, _quiet(), machines=12, hours=0.25) == []
    other = _settings(tmp_path, samples=20)  # same registry, another layout: the live models do not fit it
    again = ensure_simulated_models(other, _quiet(), machines=12, hours=0.25)
    assert {v.metadata[METADATA_KEY]["samples_per_sensor"] for v in again} == {20}
