"""Diagnostic agent: which fault an episode is, how sure, how bad.

Rules decide where they are unambiguous (a machine that stopped reporting, a silent sensor, a frozen
reading); an ONNX classifier over the episode features (agents.features) decides the rest: bearing wear,
overheating, cavitation, electrical fault, sensor drift / spikes, step changes, or no fault. The classifier
is trained offline (`vigil train --agents`), versioned in the model registry under ``agents/diagnostic``
and re-read when a new version is promoted, as the detectors are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Self

import numpy as np

from agents.base import Agent, AgentContext, Episode, Insight, register
from agents.features import FEATURE_NAMES, episode_matrix
from onnx_models.registry import ModelRegistry, RegistryError
from vigil.settings import Settings

log = logging.getLogger(__name__)

REGISTRY_TYPE = "agents"  # the registry's "equipment type" slot for agent models
MODEL_NAME = "diagnostic"
# The simulator's fault categories (operations.evaluate.sim.fault_category) as a maintenance team names them.
DIAGNOSIS_OF_FAULT = {
    "degradation": "bearing_wear",
    "overheating": "overheating",
    "cavitation": "cavitation",
    "electrical": "electrical_fault",
    "stuck": "sensor_stuck",
    "drift": "sensor_drift",
    "spike": "sensor_spike",
    "step": "step_change",
    "dead_sensor": "sensor_dead",
    "dead_machine": "machine_offline",
    "dropout_partial": "sensor_dropout",
    "none": "no_fault",
}
RULED = ("machine_offline", "sensor_dead", "sensor_stuck")  # decided by rules, never by the model
STUCK_SHARE = 0.5  # a sensor frozen in at least half the episode's windows is stuck


@register
class DiagnosticAgent(Agent):
    name = "diagnostic"
    order = 10

    def __init__(self, registry: ModelRegistry | None = None, min_confidence: float = 0.0) -> None:
        self.registry = registry
        self.min_confidence = min_confidence
        self._model = None
        self._classes: list[str] = []
        self._version: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """With the live model of the settings' registry (``settings.models_dir``)."""
        return cls(ModelRegistry(settings.models_dir))

    # -- model ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        """(Re)load the live classifier when the registry's live version changed; keep the old one on error."""
        if self.registry is None:
            return
        live = self.registry.live_version(REGISTRY_TYPE, MODEL_NAME)
        if live is None or live == self._version:
            return
        try:
            loaded = self.registry.load(REGISTRY_TYPE, MODEL_NAME, expected_features=FEATURE_NAMES)
        except (RegistryError, ValueError) as exc:
            log.error("diagnostic model %s refused, keeping %s: %s", live, self._version, exc)
            return
        self._model, self._version = loaded.model, live
        self._classes = list(loaded.version.metadata["classes"])

    @property
    def model_version(self) -> str | None:
        self._load()
        return self._version

    def classify(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(diagnosis, confidence) per row; ``unknown`` / 0 without a model."""
        self._load()
        n = len(features)
        if self._model is None or n == 0:
            return np.full(n, "unknown", dtype=object), np.zeros(n)
        out = self._model.run(features.astype(np.float32))
        proba = np.asarray(next(v for k, v in out.items() if "prob" in k), dtype=np.float64)
        best = proba.argmax(axis=1)
        return np.asarray(self._classes, dtype=object)[best], proba[np.arange(n), best]

    # -- agent ---------------------------------------------------------------------------------------------
    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        if not episodes:
            return []
        per_sensor = context.sensor_features(episodes)
        diagnosis, confidence = self.classify(episode_matrix(episodes, per_sensor))
        by_episode = {i: g for i, g in per_sensor.groupby("episode")}
        insights = []
        for i, episode in enumerate(episodes):
            sensors = by_episode.get(i)
            ruled = _rule(episode, sensors)
            if ruled is not None:
                name, conf, culprits = ruled
            else:
                name, conf = str(diagnosis[i]), float(confidence[i])
                culprits = _moved(sensors)
                if conf < self.min_confidence:
                    name = "unknown"
            severity = _severity(episode, name)
            insights.append(
                Insight(
                    agent=self.name,
                    kind="diagnosis",
                    equipment_id=episode.equipment_id,
                    site=episode.site,
                    episode_id=episode.episode_id,
                    severity=severity,
                    title=("" if episode.closed else "Preliminary: ") + _title(name, conf, culprits),
                    confidence=round(conf, 3),
                    fault_type=name,
                    sensors=tuple(culprits),
                    details={
                        "model_version": self._version if ruled is None else None,
                        "by": "rule" if ruled else "model",
                        "windows": len(episode.verdicts),
                        "open": not episode.closed,
                    },
                )
            )
        return insights


def _rule(episode: Episode, sensors) -> tuple[str, float, list[str]] | None:
    kinds = set(episode.verdicts.get("kind", []))
    if "dead_machine" in kinds:
        return "machine_offline", 1.0, []
    dead = sorted({s for row in episode.verdicts.get("dead_sensors", []) for s in (row if row is not None else [])})
    if sensors is not None:
        dead = sorted(set(dead) | set(sensors.loc[sensors["count_ratio"] == 0, "sensor"]))
    if dead:
        return "sensor_dead", 1.0, dead
    if sensors is not None and not sensors.empty:
        stuck = sensors.loc[sensors["stuck"] >= STUCK_SHARE].sort_values("stuck", ascending=False)
        if not stuck.empty:
            return "sensor_stuck", float(min(1.0, stuck["stuck"].iloc[0])), list(stuck["sensor"][:3])
    return None


def _moved(sensors, limit: int = 3) -> list[str]:
    if sensors is None or sensors.empty:
        return []
    moved = sensors["shift_z"].abs() + 2 * sensors["noise_ratio"].abs()
    ranked = sensors.assign(a=moved).sort_values("a", ascending=False)
    return list(ranked["sensor"][:limit])


def _severity(episode: Episode, diagnosis: str) -> str:
    worst = set(episode.verdicts.get("severity", []))
    if diagnosis in ("no_fault", "sensor_spike"):
        return "info"
    if "critical" in worst or diagnosis in ("machine_offline", "cavitation", "electrical_fault", "overheating"):
        return "critical"
    return "warning"


def _title(diagnosis: str, confidence: float, sensors: list[str]) -> str:
    words = diagnosis.replace("_", " ")
    where = f" ({', '.join(sensors)})" if sensors else ""
    return f"{words[:1].upper()}{words[1:]}{where}, {confidence:.0%} sure"
