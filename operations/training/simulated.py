"""Models for a simulated fleet, trained on hours of simulated history (`vigil train --simulated`, the demo).

A simulated fleet has no history in ClickHouse when it starts, and models fitted on its first minutes page
on every normal regime change those minutes did not contain (load steps, starts, the daily cycle). So the
demo and the benches train on the history a plant would have: ``hours`` of a simulated fleet of the same
equipment types, sample layout and fault mix, ending now (the site clocks and daily cycles line up with the
live run), reduced to window statistics by the same code `vigil evaluate --dataset sim` checks against the
Flink job, and fitted and calibrated by :func:`operations.training.detectors.train_type` exactly as
`vigil train` fits ClickHouse history (labelled faults excluded, alarm limits for
``settings.scoring.alarm_rate_per_machine_hour``).

The history's machines are other machines than the live fleet's (another seed): the models learn the
equipment type, as they must for a machine they have not seen, not the live machines' own noise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.diagnostic import REGISTRY_TYPE
from detectors import job_detectors
from onnx_models.history import DEFAULT_HISTORY
from onnx_models.registry import ModelRegistry, ModelVersion
from operations.evaluate.sim import SimOptions, simulate
from operations.training.detectors import train_type
from vigil.rules import load_rules
from vigil.settings import Settings

SEED_OFFSET = 1_000  # history seed = the live fleet's seed + this: other machines than the live ones
METADATA_KEY = "simulated_history"


@dataclass(frozen=True)
class SimulatedHistory:
    """What a simulated history is made of; recorded in each model's metadata under :data:`METADATA_KEY`."""

    machines: int
    hours: float
    seed: int
    samples_per_sensor: int
    fault_mix: str
    fault_rate_per_machine_hour: float

    @classmethod
    def for_settings(cls, settings: Settings, machines: int = 200, hours: float = 4.0) -> SimulatedHistory:
        if machines < 1 or hours <= 0:
            raise ValueError(f"a simulated history needs >= 1 machine and > 0 hours, got {machines} x {hours}")
        sim = settings.simulator
        return cls(
            machines=machines,
            hours=hours,
            seed=sim.seed + SEED_OFFSET,
            samples_per_sensor=sim.samples_per_sensor,
            fault_mix=sim.fault_mix,
            fault_rate_per_machine_hour=sim.fault_rate_per_machine_hour,
        )

    def fits(self, metadata: dict[str, Any]) -> bool:
        """Whether a model was trained on data laid out like this fleet's (same samples per sensor): a model
        fitted on 70 samples per sensor misjudges a fleet sending 10 (its stddev and count features differ)."""
        made = metadata.get(METADATA_KEY)
        return isinstance(made, dict) and made.get("samples_per_sensor") == self.samples_per_sensor


def train_simulated(
    settings: Settings,
    registry: ModelRegistry,
    history: SimulatedHistory,
    *,
    promote: bool = True,
    now_ms: int | None = None,
    console: Console | None = None,
) -> list[ModelVersion]:
    """Simulate ``history``, ending at ``now_ms`` (default: now), and register a model per (type, job detector)."""
    console = console or Console(stderr=True)
    window_ms = settings.window.size_ms
    end_ms = (int(now_ms if now_ms is not None else time.time() * 1000) // window_ms) * window_ms
    duration_s = history.hours * 3600.0
    start_ms = end_ms - int(duration_s * 1000)
    options = SimOptions(
        machines=history.machines,
        duration_s=duration_s,
        seed=history.seed,
        fault_rate=history.fault_rate_per_machine_hour,
        fault_mix=history.fault_mix,
        samples_per_sensor=history.samples_per_sensor,
        dead_machines=0,
        dead_sensors=0,
        start_ms=start_ms,
    )
    ticks = max(1, int(round(duration_s * 1000 / (settings.simulator.batch_interval_s * 1000))))
    progress = Progress(
        TextColumn("[bold]simulated history[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(f"{history.machines} machines x {history.hours:g} h (5-s batches)", total=ticks)
        run = simulate(settings, options, end_ms, advance=lambda n: progress.advance(task, n))
        types = sorted(run.stats["equipment_type"].unique())
        fitting = progress.add_task("fitting models per equipment type", total=len(types))
        versions: list[ModelVersion] = []
        for etype, frame in run.stats.groupby("equipment_type", sort=True):
            versions += train_type(
                str(etype),
                frame.rename(columns={"window_start_ms": "window_start"}),
                run.labels,
                registry,
                detectors=job_detectors(),
                size_ms=window_ms,
                history=DEFAULT_HISTORY,
                alarm_rate=settings.scoring.alarm_rate_per_machine_hour,
                promote=promote,
                source=f"simulated history ({history.machines} machines x {history.hours:g} h, seed {history.seed})",
                since_ms=start_ms,
                until_ms=end_ms,
                extra_metadata={METADATA_KEY: asdict(history)},
            )
            progress.advance(fitting)
    return versions


def live_detector_models(settings: Settings) -> list[ModelVersion]:
    """The live detector models of the registry (the agents' classifier, registered there too, left out)."""
    return [v for v in ModelRegistry.from_settings(settings).list() if v.live and v.equipment_type != REGISTRY_TYPE]


def live_models_fit(registry: ModelRegistry, history: SimulatedHistory, types: list[str]) -> bool:
    """Every (type, job detector) has a live model trained on a simulated history laid out like this fleet's."""
    for etype in types:
        for detector in job_detectors():
            live = registry.live(etype, detector)
            if live is None or not history.fits(live.metadata):
                return False
    return True


def ensure_simulated_models(
    settings: Settings, console: Console, machines: int = 200, hours: float = 4.0
) -> list[ModelVersion]:
    """Train and promote models on a simulated history unless every equipment type of the rules already has
    live ones fitted for this fleet's layout (an earlier demo or bench trained them); returns the new ones."""
    registry = ModelRegistry.from_settings(settings)
    history = SimulatedHistory.for_settings(settings, machines, hours)
    types = list(load_rules(settings.scoring.rules_path).equipment_types)
    if types and live_models_fit(registry, history, types):
        return []
    console.print(
        f"training the detectors on {hours:g} h of simulated history of {machines} machines "
        f"({history.samples_per_sensor} samples per sensor; once per layout, `vigil train --simulated` retrains)..."
    )
    started = time.perf_counter()
    versions = train_simulated(settings, registry, history, console=console)
    names = ", ".join(sorted({f"{v.equipment_type} {v.detector} {v.version}" for v in versions}))
    console.print(f"{len(versions)} models live in {time.perf_counter() - started:.0f} s: {names}")
    return versions
