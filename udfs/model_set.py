"""The live ONNX models of every equipment type, swapped in when the registry's ``live`` pointer moves.

The scoring UDF holds one :class:`ModelSet` per worker. Every ``poll_s`` it re-reads each type's
pointer (a few bytes per (type, detector)); a newly promoted version is loaded and checked against the
features the job builds for that type *before* it replaces the old one, so a model trained on other
sensors, statistics, history or window size is refused with a clear error and the previous model keeps
scoring. Nothing here restarts the job or touches Flink state (the window history lives in Flink).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from detectors import job_detectors
from onnx_models.features import feature_names_for, sensors_from_feature_names
from onnx_models.history import DEFAULT_HISTORY
from onnx_models.registry import FeatureMismatchError, LoadedModel, ModelRegistry, RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveModel:
    """A loaded model version plus what the scorer needs to build its features and read its outputs."""

    equipment_type: str
    detector: str
    version: str
    loaded: LoadedModel
    sensors: list[str]
    history: int
    # (features x sensors) 0/1 matrix: per-feature outputs (contributions) summed per sensor.
    sensor_matrix: np.ndarray = field(repr=False)

    @property
    def threshold(self) -> float:
        return self.loaded.threshold


def _sensor_matrix(feature_names: list[str], sensors: list[str]) -> np.ndarray:
    position = {s: i for i, s in enumerate(sensors)}
    rows = [position[name.split("__", 1)[0].rsplit(".", 1)[0]] for name in feature_names]
    matrix = np.zeros((len(feature_names), len(sensors)))
    matrix[np.arange(len(feature_names)), rows] = 1.0
    return matrix


class ModelSet:
    """Per (equipment type, detector): the model scoring now, and why a promoted one was refused."""

    def __init__(
        self,
        registry: ModelRegistry,
        expected_sensors: Callable[[str], list[str] | None],
        *,
        detectors: Iterable[str] | None = None,
        max_history: int = DEFAULT_HISTORY,
        window_ms: int = 5000,
        poll_s: float = 5.0,
        threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.expected_sensors = expected_sensors
        self.detectors = tuple(detectors) if detectors is not None else job_detectors()
        self.max_history = max_history
        self.window_ms = window_ms
        self.poll_s = poll_s
        self.threads = threads
        self.clock = clock
        self._live: dict[tuple[str, str], LiveModel] = {}
        self._refused: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (version, reason)
        self._checked_at: dict[str, float] = {}
        self.swaps = 0
        self.refusals = 0

    # -- queries -----------------------------------------------------------------------------------
    def models_for(self, equipment_type: str) -> list[LiveModel]:
        """The live models of a type (polling the registry when the type's last check is older than poll_s)."""
        now = self.clock()
        if now - self._checked_at.get(equipment_type, -np.inf) >= self.poll_s:
            self._checked_at[equipment_type] = now
            self.refresh(equipment_type)
        return [m for d in self.detectors if (m := self._live.get((equipment_type, d))) is not None]

    def refused(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(type, detector) -> (version, reason) for promoted versions that were not taken."""
        return dict(self._refused)

    def versions(self, equipment_type: str) -> str:
        """``isolation_forest=v0001 pca_t2q=v0002``: which versions scored (for the verdict record)."""
        live = [self._live[k] for k in sorted(self._live) if k[0] == equipment_type]
        return " ".join(f"{m.detector}={m.version}" for m in live)

    # -- swapping ----------------------------------------------------------------------------------
    def refresh(self, equipment_type: str) -> None:
        """Load whatever is newly live for this type; keep the current model when the new one is refused."""
        for detector in self.detectors:
            key = (equipment_type, detector)
            try:
                version = self.registry.live_version(equipment_type, detector)
            except RegistryError as exc:
                self._refuse(key, "?", str(exc))
                continue
            current = self._live.get(key)
            if version is None or (current is not None and current.version == version):
                continue
            if self._refused.get(key, ("", ""))[0] == version:
                continue  # already refused this version; wait for the pointer to move again
            try:
                model = self._load(equipment_type, detector, version)
            except (FeatureMismatchError, RegistryError, ValueError, OSError) as exc:
                self._refuse(key, version, str(exc))
                continue
            self._live[key] = model
            self._refused.pop(key, None)
            self.swaps += 1
            previous = current.version if current else "none"
            log.info("model %s/%s: now scoring with %s (was %s)", equipment_type, detector, version, previous)

    def _refuse(self, key: tuple[str, str], version: str, reason: str) -> None:
        self._refused[key] = (version, reason)
        self.refusals += 1
        keeping = self._live[key].version if key in self._live else "no model (rules only)"
        log.error("model %s/%s %s refused, keeping %s: %s", key[0], key[1], version, keeping, reason)

    def _load(self, equipment_type: str, detector: str, version: str) -> LiveModel:
        mv = self.registry.live(equipment_type, detector)
        if mv is None or mv.version != version:  # pointer moved between the two reads: next poll takes it
            raise RegistryError(f"live pointer of {equipment_type}/{detector} changed while loading")
        what = f"model {equipment_type}/{detector} {version}"
        history = int(mv.metadata.get("history", DEFAULT_HISTORY))
        if not 1 <= history <= self.max_history:
            raise FeatureMismatchError(
                f"{what} was trained with history={history} windows; the job keeps {self.max_history} "
                "(flink.scoring_history): retrain with --history <= that or raise the setting"
            )
        size = int(mv.metadata.get("window_size_ms", self.window_ms))
        if size != self.window_ms:
            raise FeatureMismatchError(
                f"{what} was trained on {size} ms windows; the job computes {self.window_ms} ms windows: retrain"
            )
        sensors = self.expected_sensors(equipment_type) or sensors_from_feature_names(mv.feature_names)
        expected = feature_names_for(sensors, history)
        loaded = self.registry.load(equipment_type, detector, expected, version=version, threads=self.threads)
        return LiveModel(
            equipment_type,
            detector,
            version,
            loaded,
            sorted(sensors),
            history,
            _sensor_matrix(loaded.feature_names, sorted(sensors)),
        )
