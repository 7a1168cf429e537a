"""What every agent reads and writes: an anomaly :class:`Episode` in, :class:`Insight` records out.

An agent is one module with one :class:`Agent` subclass (diagnostic, root cause, maintenance, and any a
plant installs: see agents.registry). Agents see a batch of episodes at once, so an agent that relates
machines to each other (shared upstream causes) and one that looks at a single machine share one shape,
and per-episode work can be vectorised over the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pandas as pd

SEVERITIES = ("info", "warning", "critical")
STAT_COLUMNS = ("window_start_ms", "sensor", "count", "avg", "stddev", "min", "max")


@dataclass(frozen=True)
class Episode:
    """Consecutive anomalous windows of one machine, merged (agents.episodes builds them).

    ``stats`` holds the machine's window statistics from ``baseline_windows`` before the first anomalous
    window to the last one (long: one row per sensor and window, :data:`STAT_COLUMNS`); ``verdicts`` the
    scorer's verdicts of the episode's windows (score, severity, detectors, rule_hits, top_sensors,
    dead_sensors)."""

    equipment_id: str
    site: str
    equipment_type: str
    start_ms: int  # start of the first anomalous window
    end_ms: int  # end of the last anomalous window
    window_ms: int
    stats: pd.DataFrame
    verdicts: pd.DataFrame
    line: str = ""
    closed: bool = True  # False: still anomalous when built (an early look, updated later)

    @property
    def episode_id(self) -> str:
        return f"{self.equipment_id}@{self.start_ms}"

    @property
    def windows(self) -> int:
        return (self.end_ms - self.start_ms) // self.window_ms

    @property
    def baseline(self) -> pd.DataFrame:
        return self.stats[self.stats["window_start_ms"] < self.start_ms]

    @property
    def during(self) -> pd.DataFrame:
        return self.stats[self.stats["window_start_ms"] >= self.start_ms]


@dataclass(frozen=True)
class Insight:
    """One finding about one episode (or, for a shared cause, a group of them), for people and machines.

    ``title`` is the line an alert message carries; ``details`` what the console and ClickHouse keep
    (JSON-serialisable)."""

    agent: str
    kind: str  # diagnosis | root_cause | shared_cause | maintenance | a custom agent's own
    equipment_id: str
    site: str
    episode_id: str
    title: str
    severity: str = "info"  # info | warning | critical
    confidence: float = 1.0
    fault_type: str = ""
    sensors: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"insight severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"insight confidence must be in [0, 1], got {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sensors"] = list(self.sensors)
        return out


@dataclass
class AgentContext:
    """What agents share in one run: the insights of the agents that ran before (the maintenance agent
    plans from the diagnosis) and per-run options."""

    insights: list[Insight] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    _features: tuple[tuple[str, ...], pd.DataFrame] | None = field(default=None, repr=False)

    def sensor_features(self, episodes: Sequence[Episode]) -> pd.DataFrame:
        """agents.features.sensor_features of this batch, computed once for all the agents of a run."""
        from agents.features import sensor_features  # features builds on this module

        key = tuple(e.episode_id for e in episodes)
        if self._features is None or self._features[0] != key:
            self._features = (key, sensor_features(episodes))
        return self._features[1]

    def of(self, kind: str, episode_id: str) -> Insight | None:
        """The latest insight of ``kind`` about an episode, if an earlier agent made one."""
        for insight in reversed(self.insights):
            if insight.kind == kind and insight.episode_id == episode_id:
                return insight
        return None


class Agent(ABC):
    """An analysis over anomaly episodes. Subclasses set ``name`` and implement :meth:`analyse`.

    ``order`` places it in a run (lower first): built-ins use 10 (diagnostic), 20 (root cause),
    30 (maintenance); a custom agent reading their insights should use more than 30."""

    name: ClassVar[str]
    order: ClassVar[int] = 50

    @abstractmethod
    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        """Insights about ``episodes`` (any number per episode, none is fine)."""
