"""Maintenance agent: a health index per machine, predicted time to failure where a fault wears a machine
out, what to do about each diagnosis (agents/knowledge_base.yaml), and a plan that orders the work.

Time to failure: for diagnoses whose knowledge-base entry names a ``failure_role`` (bearing wear:
vibration; overheating: temperature), the most-moved sensor of that role is followed through the episode:
its shift above the baseline is fitted with a quadratic in time (wear accelerates; a straight line when the
curve does not bend upwards) and extrapolated to the failure limit, baseline + ``failure_limit_span`` x the
sensor's healthy span (the configured min/max envelope of flink-conf/rules.yaml). The health index is 100
minus the most-moved sensor's shift as a percentage of its span (0 = at or past the failure limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.base import Agent, AgentContext, Episode, Insight, register
from agents.features import role_of
from vigil.rules import load_rules
from vigil.settings import Settings

KNOWLEDGE_BASE = Path(__file__).with_name("knowledge_base.yaml")
HOUR_MS = 3_600_000


class FaultAdvice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    urgency_h: float = Field(gt=0)
    actions: list[str] = Field(min_length=1)
    failure_role: str | None = None
    failure_limit_span: float | None = Field(default=None, gt=0)


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faults: dict[str, FaultAdvice]

    def advice(self, diagnosis: str) -> FaultAdvice:
        return self.faults.get(diagnosis) or self.faults["unknown"]


def load_knowledge_base(path: Path = KNOWLEDGE_BASE) -> KnowledgeBase:
    """The knowledge base, validated; a broken file is refused with the place and the problem."""
    try:
        kb = KnowledgeBase.model_validate(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the maintenance knowledge base {path}: {exc}") from exc
    except ValidationError as exc:
        raise ValueError(f"the maintenance knowledge base {path} is invalid:\n{exc}") from exc
    if "unknown" not in kb.faults:
        raise ValueError(f"the maintenance knowledge base {path} needs an 'unknown' entry (the fallback advice)")
    return kb


def time_to_limit(t_ms: np.ndarray, shift: np.ndarray, limit: float) -> float | None:
    """Milliseconds from the last sample until the fitted shift reaches ``limit``: quadratic fit when it
    bends upwards, else linear; None when the trend does not rise towards the limit. 0 when already there."""
    if len(t_ms) < 4 or not np.all(np.isfinite(shift)):
        return None
    if shift[-1] >= limit:
        return 0.0
    t = (t_ms - t_ms[-1]) / HOUR_MS  # hours, 0 = now
    a, b, c = np.polyfit(t, shift, 2)
    if a > 0 and b > 0:  # bending upwards and rising now (b is the slope at t = 0)
        roots = np.roots([a, b, c - limit])
        future = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
        if future:
            return float(min(future) * HOUR_MS)
    slope, intercept = np.polyfit(t, shift, 1)
    if slope <= 0:
        return None
    return float(max(0.0, (limit - intercept) / slope) * HOUR_MS)


@register
class MaintenanceAgent(Agent):
    name = "maintenance"
    order = 30

    def __init__(self, rules_path: Path, knowledge_base: KnowledgeBase | None = None, horizon_h: float = 24.0) -> None:
        self.kb = knowledge_base or load_knowledge_base()
        self.horizon_h = horizon_h
        resolved = load_rules(rules_path).resolved()
        self.spans = {
            (r.equipment_type, r.sensor): r.max - r.min
            for r in resolved
            if r.min is not None and r.max is not None and r.max > r.min
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Spans from the scoring rules the job runs (``settings.scoring.rules_path``)."""
        return cls(settings.scoring.rules_path)

    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        out = []
        for e in episodes:
            diagnosis = context.of("diagnosis", e.episode_id)
            name = diagnosis.fault_type if diagnosis else "unknown"
            advice = self.kb.advice(name)
            health, worst = self.health_index(e)
            ttf_ms = self.time_to_failure(e, advice) if advice.failure_role else None
            now_ms = e.end_ms
            due_h = advice.urgency_h if ttf_ms is None else min(advice.urgency_h, ttf_ms / HOUR_MS / 2)
            probability = (
                None if ttf_ms is None else float(np.exp(-max(0.0, ttf_ms / HOUR_MS - self.horizon_h) / self.horizon_h))
            )
            when = "" if ttf_ms is None else f"; failure in ~{_hours(ttf_ms)}"
            severity = (
                "critical"
                if due_h <= 8 or (ttf_ms is not None and ttf_ms <= self.horizon_h * HOUR_MS)
                else ("warning" if due_h <= 72 else "info")
            )
            out.append(
                Insight(
                    agent=self.name,
                    kind="maintenance",
                    equipment_id=e.equipment_id,
                    site=e.site,
                    episode_id=e.episode_id,
                    title=f"{advice.title}: act within {_hours(due_h * HOUR_MS)}{when}",
                    severity=severity,
                    confidence=diagnosis.confidence if diagnosis else 0.0,
                    fault_type=name,
                    sensors=(worst,) if worst else (),
                    details={
                        "health_index": health,
                        "time_to_failure_h": None if ttf_ms is None else ttf_ms / HOUR_MS,
                        "failure_probability_horizon": probability,
                        "horizon_h": self.horizon_h,
                        "due_ms": int(now_ms + due_h * HOUR_MS),
                        "actions": advice.actions,
                        "line": e.line,
                    },
                )
            )
        return out

    def health_index(self, e: Episode) -> tuple[float, str]:
        """100 = every sensor at its baseline; 0 = a sensor's mean moved by its whole healthy span."""
        base, during = e.baseline, e.during
        if base.empty or during.empty:
            return 100.0, ""
        moved = (during.groupby("sensor")["avg"].mean() - base.groupby("sensor")["avg"].mean()).abs().dropna()
        spans = pd.Series({s: self.spans.get((e.equipment_type, s), np.nan) for s in moved.index})
        share = (moved / spans).dropna()
        if share.empty:
            return 100.0, ""
        worst = str(share.idxmax())
        return round(float(100.0 * (1.0 - min(1.0, share.max()))), 1), worst

    def time_to_failure(self, e: Episode, advice: FaultAdvice) -> float | None:
        base, during = e.baseline, e.during
        sensors = [s for s in during["sensor"].unique() if role_of(s) == advice.failure_role]
        if not sensors or base.empty:
            return None
        b = base.groupby("sensor")["avg"].mean()
        d = during.groupby("sensor")["avg"].mean()
        sensor = max(sensors, key=lambda s: abs(d.get(s, np.nan) - b.get(s, np.nan)) if s in b else -1)
        span = self.spans.get((e.equipment_type, sensor))
        if span is None or sensor not in b:
            return None
        track = during[during["sensor"] == sensor].sort_values("window_start_ms")
        shift = track["avg"].to_numpy(float) - float(b[sensor])
        return time_to_limit(track["window_start_ms"].to_numpy(np.int64), shift, advice.failure_limit_span * span)


def maintenance_plan(insights: Sequence[Insight]) -> pd.DataFrame:
    """The work to do, most urgent first, grouped by site: one row per machine (its most urgent item)."""
    rows = [
        {
            "site": i.site,
            "line": i.details.get("line", ""),
            "equipment_id": i.equipment_id,
            "due_ms": i.details["due_ms"],
            "fault": i.fault_type,
            "severity": i.severity,
            "health_index": i.details["health_index"],
            "time_to_failure_h": i.details["time_to_failure_h"],
            "action": i.details["actions"][0],
        }
        for i in insights
        if i.kind == "maintenance"
    ]
    if not rows:
        return pd.DataFrame(
            columns=[
                "site",
                "line",
                "equipment_id",
                "due_ms",
                "fault",
                "severity",
                "health_index",
                "time_to_failure_h",
                "action",
            ]
        )
    plan = pd.DataFrame(rows).sort_values("due_ms").drop_duplicates("equipment_id")
    return plan.sort_values(["site", "due_ms"]).reset_index(drop=True)


def _hours(ms: float) -> str:
    hours = ms / HOUR_MS
    return f"{hours * 60:.0f} min" if hours < 1 else (f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days")
