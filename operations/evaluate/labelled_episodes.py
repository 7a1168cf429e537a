"""Labelled episodes from a simulated fleet: what the agents are evaluated on and the diagnostic model learns from.

A fleet with the "plant" fault mix plus injected shared-cause events (an electrical supply dip hitting several
machines of one line within seconds) is scored by operations.evaluate.sim (the job's own scorer); its verdicts
become episodes (agents.episodes); each episode is labelled with the fault it overlaps on its machine (or
``no_fault``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from agents.base import Episode
from agents.diagnostic import DIAGNOSIS_OF_FAULT, RULED
from agents.episodes import build_episodes, episodes_frame
from edge.simulator.equipment import build_machines
from edge.simulator.faults import FaultLabel, FaultType
from operations.evaluate.sim import PlannedFault, SimOptions, evaluate_sim, fault_category
from vigil.settings import Settings

SHARED_EVENT_MACHINES = 4  # machines of one line hit by one injected shared-cause event
SHARED_EVENT_SPREAD_S = 20.0  # ... starting within this many seconds of each other


@dataclass(frozen=True)
class AgentRunOptions:
    machines: int = 60
    duration_s: float = 7200.0
    seed: int = 303
    fault_rate: float = 2.0  # random faults per machine-hour: many episodes per simulated hour
    shared_events: int = 6
    gap_windows: int = 2


@dataclass
class LabelledEpisodes:
    episodes: list[Episode]
    frame: pd.DataFrame  # episodes_frame + label (diagnosis name), fault_index, fault_sensors
    labels: list[FaultLabel]
    shared_events: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def shared_event_plan(options: AgentRunOptions, sites: int) -> tuple[list[PlannedFault], list[dict[str, Any]]]:
    """Electrical supply dips on ``SHARED_EVENT_MACHINES`` machines of one line, spread over the scored part."""
    rng = np.random.default_rng([options.seed, 0xCA05E])
    fleet = build_machines(options.machines, sites)
    lines: dict[tuple[str, str], list[str]] = {}
    for m in fleet:
        lines.setdefault((m.site, m.line), []).append(m.equipment_id)
    candidates = [k for k, v in lines.items() if len(v) >= SHARED_EVENT_MACHINES]
    planned, events = [], []
    if not candidates or options.shared_events <= 0:
        return planned, events
    first, last = 0.45 * options.duration_s, 0.95 * options.duration_s
    for j, at in enumerate(np.linspace(first, last, options.shared_events)):
        site, line = candidates[int(rng.integers(len(candidates)))] if j else candidates[0]
        chosen = list(rng.choice(lines[(site, line)], SHARED_EVENT_MACHINES, replace=False))
        starts = at + rng.uniform(0, SHARED_EVENT_SPREAD_S, len(chosen))
        for machine, s in zip(chosen, starts, strict=True):
            planned.append(PlannedFault(FaultType.ELECTRICAL, str(machine), float(s), 600.0))
        events.append({"site": site, "line": line, "machines": sorted(map(str, chosen)), "start_s": float(at)})
    return planned, events


def label_episodes(episodes: Sequence[Episode], labels: Sequence[FaultLabel], grace_ms: int) -> pd.DataFrame:
    """Each episode's fault: the first label of its machine overlapping [start - grace, end + grace)."""
    frame = episodes_frame(episodes)
    by_machine: dict[str, list[tuple[int, FaultLabel]]] = {}
    for k, lb in enumerate(labels):
        by_machine.setdefault(lb.machine, []).append((k, lb))
    names, index, sensors = [], [], []
    for e in episodes:
        hit = next(
            (
                (k, lb)
                for k, lb in by_machine.get(e.equipment_id, [])
                if lb.start_ms < e.end_ms + grace_ms and lb.end_ms + grace_ms > e.start_ms
            ),
            None,
        )
        names.append(DIAGNOSIS_OF_FAULT[fault_category(hit[1])] if hit else "no_fault")
        index.append(hit[0] if hit else -1)
        sensors.append(tuple(hit[1].sensors) if hit else ())
    return frame.assign(label=names, fault_index=index, fault_sensors=sensors)


def simulate_labelled(settings: Settings, options: AgentRunOptions, console: Console | None = None) -> LabelledEpisodes:
    planned, events = shared_event_plan(options, settings.simulator.sites)
    sim = SimOptions(
        machines=options.machines,
        duration_s=options.duration_s,
        seed=options.seed,
        fault_rate=options.fault_rate,
        fault_mix="plant",
        inject=tuple(planned),
    )
    result = evaluate_sim(settings, sim, console)
    run = result.run
    assert run is not None
    verdicts = result.verdicts.loc[result.verdicts["emit"].to_numpy(bool)]
    episodes = build_episodes(
        verdicts, run.stats, run.window_ms, gap_windows=options.gap_windows, machines=run.machines
    )
    grace = settings.scoring.history_windows * run.window_ms
    frame = label_episodes(episodes, run.labels, grace)
    for ev in events:
        ev["start_ms"] = run.start_ms + int(ev["start_s"] * 1000)
    info = {"episodes": len(episodes), "faults": len(run.labels)}
    return LabelledEpisodes(episodes, frame, run.labels, events, info)


def trainable(frame: pd.DataFrame) -> np.ndarray:
    """Episodes the classifier learns from: not the classes rules decide."""
    return ~frame["label"].isin(RULED).to_numpy()
