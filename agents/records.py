"""The records agents exchange: an anomaly :class:`Episode` in, :class:`Insight` records out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
