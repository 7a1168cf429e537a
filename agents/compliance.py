"""Example custom agent (installed through the ``vigil.agents`` entry point, as a plant's own would be):
report breaches of regulated temperature limits.

Some temperatures are regulated (a food plant's product temperature, a pharmacy cold chain, a motor's
insulation class): a breach must be recorded whatever the diagnosis. This agent checks every temperature
window of an episode against the limits in its own YAML file and reports each sensor that breached, with
how long and how far. Limits file: ``VIGIL_COMPLIANCE_LIMITS`` or agents/compliance_limits.yaml.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from agents.base import Agent, AgentContext, Episode, Insight

DEFAULT_LIMITS = Path(__file__).with_name("compliance_limits.yaml")


def load_limits(path: Path) -> dict[tuple[str, str], float]:
    """{(equipment_type, sensor): maximum}; the file maps type -> sensor -> {max: value, rule: text}."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    limits = {}
    for etype, sensors in raw.items():
        for sensor, spec in (sensors or {}).items():
            if not isinstance(spec, dict) or not isinstance(spec.get("max"), int | float):
                raise ValueError(f"{path}: {etype}.{sensor} needs a numeric 'max'")
            limits[(etype, sensor)] = float(spec["max"])
    return limits


class ComplianceAgent(Agent):
    name = "compliance"
    order = 40

    def __init__(self, limits_path: Path | None = None) -> None:
        self.limits = load_limits(limits_path or Path(os.environ.get("VIGIL_COMPLIANCE_LIMITS", DEFAULT_LIMITS)))

    def analyse(self, episodes: Sequence[Episode], context: AgentContext) -> list[Insight]:
        out = []
        for e in episodes:
            during = e.during
            for sensor, rows in during.groupby("sensor"):
                limit = self.limits.get((e.equipment_type, str(sensor)))
                if limit is None:
                    continue
                over = rows["max"].to_numpy(float) > limit
                if not over.any():
                    continue
                seconds = int(over.sum()) * e.window_ms / 1000
                peak = float(np.nanmax(rows["max"].to_numpy(float)))
                out.append(
                    Insight(
                        agent=self.name,
                        kind="compliance",
                        equipment_id=e.equipment_id,
                        site=e.site,
                        episode_id=e.episode_id,
                        severity="critical",
                        fault_type="limit_breach",
                        sensors=(str(sensor),),
                        title=(
                            f"Regulated limit breached: {sensor} up to {peak:.1f} (limit {limit:g}) for {seconds:.0f} s"
                        ),
                        details={
                            "limit": limit,
                            "peak": peak,
                            "seconds_over": seconds,
                            "first_ms": int(rows["window_start_ms"].to_numpy()[over][0]),
                        },
                    )
                )
        return out
