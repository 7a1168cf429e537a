"""What the agents say about SKAB's labelled experiments (`vigil evaluate --agents --dataset skab`).

SKAB's water-pump testbed records 1-s rows of eight sensors; each experiment file holds one labelled
anomaly (valve1: the valve at the pump's inlet closed; valve2: at its outlet; other/: leaks, rotor
imbalance, cavitation, hot water). Nothing of SKAB was used to train the agents: the diagnostic classifier
learned on the simulator's plant faults, which have no "valve closed" class. So this is a field test of
transfer, reported as is: which class the diagnosis picks, how sure it is, which sensors the root-cause
agent ranks first (a closed valve acts first on the flow) and what the maintenance agent recommends.

The rows become what the streaming job would hold: 5-s window statistics per sensor (count, avg,
stddev, min, max; ``WINDOW_MS``) and one verdict per window, anomalous where any of its rows is labelled
``anomaly`` (the labelled episode, not a detector's alarms, so the agents are judged on the true span).
The sensors get names the agents' role map understands (:data:`SKAB_SENSORS`).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from agents.base import STAT_COLUMNS, Episode, Insight
from agents.episodes import build_episodes
from agents.registry import build_agents, run_agents
from onnx_models.registry import ModelRegistry
from operations.evaluate.skab import TIME_COLUMN, discover, load_skab_csv
from operations.training.agents import train_diagnostic
from vigil.settings import Settings

WINDOW_MS = 5000
EQUIPMENT_TYPE = "pump"
SITE = "skab"
# SKAB column -> a name whose role the agents know (agents.features.role_of): what each sensor measures.
SKAB_SENSORS = {
    "Accelerometer1RMS": "vibration_rms_1",  # pump vibration, g
    "Accelerometer2RMS": "vibration_rms_2",
    "Current": "motor_current",  # motor current, A
    "Pressure": "discharge_pressure",  # loop pressure after the pump, bar
    "Temperature": "motor_temp",  # motor body temperature, degC
    "Thermocouple": "fluid_temp",  # fluid temperature in the loop, degC
    "Voltage": "voltage",  # motor supply voltage, V
    "Volume Flow RateRMS": "flow",  # flow in the loop, l/min
}
FLOW_SENSOR = "flow"


@dataclass(frozen=True)
class SkabDiagnosis:
    """The agents' verdict on one SKAB experiment's labelled episode."""

    file: str
    windows: int
    diagnosis: str
    confidence: float
    by: str  # rule | model
    root_cause: list[str]
    first_to_move: str
    maintenance: str


@dataclass
class SkabAgentReport:
    rows: list[SkabDiagnosis]
    model_version: str | None
    skipped: list[str] = field(default_factory=list)  # files without a labelled anomaly

    def diagnosis_counts(self) -> dict[str, int]:
        return dict(Counter(r.diagnosis for r in self.rows).most_common())

    def flow_ranked(self, top: int) -> float:
        """Share of episodes whose root-cause ranking has the flow sensor in its first ``top``."""
        return float(np.mean([FLOW_SENSOR in r.root_cause[:top] for r in self.rows])) if self.rows else float("nan")


def window_stats(frame: pd.DataFrame, machine: str) -> pd.DataFrame:
    """Long 5-s window statistics (``equipment_id`` + STAT_COLUMNS) of one SKAB file, vectorised."""
    missing = [c for c in SKAB_SENSORS if c not in frame.columns]
    if missing:
        raise ValueError(f"{machine}: SKAB columns {missing} missing (have {list(frame.columns)})")
    ms = frame[TIME_COLUMN].to_numpy("datetime64[ms]").astype(np.int64)
    long = frame[list(SKAB_SENSORS)].rename(columns=SKAB_SENSORS).assign(window_start_ms=ms - ms % WINDOW_MS)
    long = long.melt(id_vars="window_start_ms", var_name="sensor", value_name="value")
    stats = (
        long.groupby(["window_start_ms", "sensor"], sort=True)["value"]
        .agg(count="count", avg="mean", stddev="std", min="min", max="max")
        .reset_index()
    )
    stats["stddev"] = stats["stddev"].fillna(0.0)
    return stats[list(STAT_COLUMNS)].assign(equipment_id=machine)


def labelled_verdicts(frame: pd.DataFrame, machine: str) -> pd.DataFrame:
    """One verdict per window: anomalous where any of its rows carries the ``anomaly`` label."""
    ms = frame[TIME_COLUMN].to_numpy("datetime64[ms]").astype(np.int64)
    flagged = pd.DataFrame({"window_start_ms": ms - ms % WINDOW_MS, "is_anomaly": frame["anomaly"].fillna(0) > 0})
    verdicts = flagged.groupby("window_start_ms", sort=True)["is_anomaly"].any().reset_index()
    return verdicts.assign(equipment_id=machine, site=SITE, equipment_type=EQUIPMENT_TYPE)


def skab_episodes(data_dir: Path) -> tuple[list[tuple[str, Episode]], list[str]]:
    """(file, labelled episode) of every experiment with an anomaly; files without one are listed apart."""
    _, experiments = discover(Path(data_dir))
    out, skipped = [], []
    for path in experiments:
        name = str(path.relative_to(data_dir))
        frame = load_skab_csv(path)
        if "anomaly" not in frame.columns or not (frame["anomaly"].fillna(0) > 0).any():
            skipped.append(name)
            continue
        machine = "skab-" + name.removesuffix(".csv").replace("/", "-")
        episodes = build_episodes(
            labelled_verdicts(frame, machine),
            window_stats(frame, machine),
            WINDOW_MS,
            gap_windows=2,
            baseline_windows=60,
        )
        # A file's label is one closure; if it came apart (label gaps > 2 windows), the longest part is it.
        out.append((name, max(episodes, key=lambda e: e.end_ms - e.start_ms)))
    return out, skipped


def diagnose_skab(data_dir: Path, agents: list[Any]) -> SkabAgentReport:
    """Run ``agents`` (diagnostic, root cause, maintenance) over every labelled SKAB episode."""

    pairs, skipped = skab_episodes(data_dir)
    insights: list[Insight] = run_agents(agents, [e for _, e in pairs])
    by = {(i.episode_id, i.kind): i for i in insights}
    rows = []
    for name, e in pairs:
        dx, rc, mt = (by.get((e.episode_id, k)) for k in ("diagnosis", "root_cause", "maintenance"))
        rows.append(
            SkabDiagnosis(
                file=name,
                windows=e.windows,
                diagnosis=dx.fault_type if dx else "none",
                confidence=dx.confidence if dx else 0.0,
                by=str(dx.details.get("by", "")) if dx else "",
                root_cause=list(rc.sensors) if rc else [],
                first_to_move=(rc.details.get("onset_order") or [""])[0] if rc else "",
                maintenance=mt.title if mt else "",
            )
        )
    version = next((a.model_version for a in agents if getattr(a, "name", "") == "diagnostic"), None)
    return SkabAgentReport(rows, version, skipped)


def evaluate_skab_agents(settings: Settings, data_dir: Path, console: Console | None = None) -> SkabAgentReport:
    """The diagnostic model trained on the simulator (never on SKAB; a temporary registry, as `vigil evaluate
    --agents` does), then the built-in agents (diagnostic, root cause, maintenance) over ``data_dir``'s episodes."""

    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vigil-agent-models-") as models_dir:
        registry = ModelRegistry(Path(models_dir))
        console.print("[bold]agents[/] training the diagnostic model on the simulator (never on SKAB)")
        train_diagnostic(settings, registry, console=console)
        scoring = settings.scoring.model_copy(update={"models_dir": registry.root})
        return diagnose_skab(data_dir, build_agents(settings.model_copy(update={"scoring": scoring}), plugins=False))


def print_skab_report(report: SkabAgentReport, console: Console) -> None:
    table = Table(title=f"Agents on SKAB's labelled experiments (diagnostic model {report.model_version or 'none'})")
    for col in ("file", "windows", "diagnosis", "conf.", "by", "root cause (top 3)", "first to move", "maintenance"):
        table.add_column(col, justify="right" if col in ("windows", "conf.") else "left")
    for r in report.rows:
        table.add_row(
            r.file,
            str(r.windows),
            r.diagnosis,
            f"{r.confidence:.2f}",
            r.by,
            ", ".join(r.root_cause),
            r.first_to_move,
            r.maintenance,
        )
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in report.diagnosis_counts().items())
    console.print(
        f"{len(report.rows)} episodes: {counts}; flow ranked first in {report.flow_ranked(1):.0%}, "
        f"in the top 3 in {report.flow_ranked(3):.0%}"
    )
    if report.skipped:
        console.print(f"no labelled anomaly (not diagnosed): {', '.join(report.skipped)}")


def report_dict(report: SkabAgentReport) -> dict[str, Any]:
    return {
        "model_version": report.model_version,
        "diagnosis_counts": report.diagnosis_counts(),
        "flow_ranked_first": report.flow_ranked(1),
        "flow_in_top3": report.flow_ranked(3),
        "episodes": [r.__dict__ for r in report.rows],
        "skipped": report.skipped,
    }
