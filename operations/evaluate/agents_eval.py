"""`vigil evaluate --agents` (and the diagnostic model's training data): agents scored on simulated fleets
with labelled faults, through the same episode builder, features and agents the streaming job runs.

One run: a fleet with the "plant" fault mix (bearing wear, overheating, cavitation, electrical and sensor
faults) plus injected shared-cause events (an electrical supply dip hitting several machines of one line
within seconds) is simulated and scored by operations.evaluate.sim (the job's own scorer); its verdicts become
episodes (agents.episodes); each episode is labelled with the fault it overlaps on its machine (or
``no_fault``); the agents run over all episodes; then:

- diagnostic: macro-F1 over the labelled classes and a confusion matrix, per episode;
- root cause: hit rate of the truly faulty sensor at rank 1 and in the top 3 (faults naming sensors);
- shared cause: precision and recall of shared-cause insights against the injected events (an insight
  matches an event when at least 2 of its machines are the event's);
- maintenance: for bearing wear run to failure, the error of the predicted failure time (first and last
  prediction before the failure) and how often the first prediction came before the failure. The failure
  time is when the worn sensor's shift reaches the knowledge base's limit (failure_limit_span x the span)
  on the simulator's noise-free degradation curve, or the fault's end if it never does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from agents.base import Insight
from agents.maintenance import load_knowledge_base, maintenance_plan
from agents.registry import build_agents, run_agents
from edge.simulator.equipment import EQUIPMENT_TYPES
from edge.simulator.faults import FaultLabel, FaultType
from onnx_models.registry import ModelRegistry
from operations.evaluate.labelled_episodes import AgentRunOptions, simulate_labelled
from operations.training.agents import TRAIN_RUN, train_diagnostic
from vigil.settings import Settings


# -- metrics ---------------------------------------------------------------------------------------------
def confusion(truth: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    classes = sorted(set(truth) | set(predicted))
    return pd.crosstab(
        pd.Categorical(truth, classes),
        pd.Categorical(predicted, classes),
        dropna=False,
        rownames=["truth"],
        colnames=["diagnosis"],
    )


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, pd.DataFrame]:
    """Macro-averaged F1 over the classes that occur in ``truth`` (a class only ever predicted still costs
    precision of the others), with the per-class precision / recall / F1 / support."""
    t, p = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    rows = []
    for c in sorted(set(t)):
        tp = int(((t == c) & (p == c)).sum())
        fp = int(((t != c) & (p == c)).sum())
        fn = int(((t == c) & (p != c)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": c, "precision": precision, "recall": recall, "f1": f1, "support": tp + fn})
    table = pd.DataFrame(rows)
    return (float(table["f1"].mean()) if len(table) else float("nan")), table


def root_cause_hits(frame: pd.DataFrame, insights: Sequence[Insight]) -> dict[str, float]:
    """Share of fault episodes (whose fault names at most 3 sensors) with a true sensor at rank 1 / in the top 3."""
    ranked = {i.episode_id: list(i.sensors) for i in insights if i.kind == "root_cause"}
    top1 = top3 = n = 0
    for row in frame.itertuples():
        truth = set(row.fault_sensors)
        if not truth or len(truth) > 3 or row.episode_id not in ranked or row.label in ("machine_offline",):
            continue
        got = ranked[row.episode_id]
        n += 1
        top1 += bool(got[:1]) and got[0] in truth
        top3 += bool(truth & set(got[:3]))
    return {"episodes": n, "top1": top1 / n if n else float("nan"), "top3": top3 / n if n else float("nan")}


def shared_cause_scores(insights: Sequence[Insight], events: Sequence[dict[str, Any]]) -> dict[str, float]:
    shared = [set(i.details["machines"]) for i in insights if i.kind == "shared_cause"]
    matched = [any(len(s & set(ev["machines"])) >= 2 for ev in events) for s in shared]
    found = [any(len(s & set(ev["machines"])) >= 2 for s in shared) for ev in events]
    return {
        "insights": len(shared),
        "events": len(events),
        "precision": sum(matched) / len(shared) if shared else float("nan"),
        "recall": sum(found) / len(events) if events else float("nan"),
    }


def failure_time_ms(label: FaultLabel, limit_span: float) -> int:
    """When the simulator's degradation curve (magnitude x progress ** exponent) reaches limit_span x span on
    the type's failure sensor (vibration); the fault's end when it never does."""
    etype = EQUIPMENT_TYPES[label.equipment_type]
    sensor = "vibration_rms"
    span = etype.sensors[etype.sensor_index(sensor)].span
    magnitude = float(label.params.get("magnitudes", {}).get(sensor, 0.0))
    exponent = float(label.params.get("exponent", 2.0))
    if magnitude <= limit_span * span:
        return label.end_ms
    progress = (limit_span * span / magnitude) ** (1.0 / exponent)
    return int(label.start_ms + progress * (label.end_ms - label.start_ms))


def ttf_scores(frame: pd.DataFrame, insights: Sequence[Insight], labels: Sequence[FaultLabel]) -> dict[str, float]:
    kb = load_knowledge_base()
    limit = kb.faults["bearing_wear"].failure_limit_span or 0.8
    maint = {i.episode_id: i for i in insights if i.kind == "maintenance"}
    firsts, lasts, early = [], [], []
    wear = frame[(frame["fault_index"] >= 0)]
    for k, group in wear.groupby("fault_index"):
        label = labels[int(k)]
        if label.fault_type != FaultType.DEGRADATION:
            continue
        fail = failure_time_ms(label, limit)
        preds = []
        for row in group.sort_values("end_ms").itertuples():
            ins = maint.get(row.episode_id)
            ttf = ins.details.get("time_to_failure_h") if ins else None
            if ttf is not None and row.end_ms <= fail:
                preds.append((row.end_ms, row.end_ms + ttf * 3_600_000))
        if not preds:
            continue
        firsts.append(abs(preds[0][1] - fail) / 60_000)
        lasts.append(abs(preds[-1][1] - fail) / 60_000)
        early.append(preds[0][0] < fail)
    return {
        "faults": len(firsts),
        "mae_first_min": float(np.mean(firsts)) if firsts else float("nan"),
        "mae_last_min": float(np.mean(lasts)) if lasts else float("nan"),
        "warned_before_failure": float(np.mean(early)) if early else float("nan"),
    }


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class AgentEvaluation:
    options: AgentRunOptions
    diagnostic_f1: float
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    root_cause: dict[str, float]
    shared_cause: dict[str, float]
    maintenance: dict[str, float]
    info: dict[str, Any]
    plan: pd.DataFrame


def evaluate_agents(
    settings: Settings, options: AgentRunOptions | None = None, console: Console | None = None
) -> AgentEvaluation:
    """Train the diagnostic model on one simulated run, evaluate every agent on another (other seed)."""

    options = options or AgentRunOptions()
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vigil-agent-models-") as models_dir:
        registry = ModelRegistry(Path(models_dir))
        console.print(f"[bold]agents[/] training the diagnostic model on a separate run (seed {TRAIN_RUN.seed})")
        model = train_diagnostic(settings, registry, console=console)
        console.print(f"[bold]agents[/] evaluating on seed {options.seed}")
        data = simulate_labelled(settings, options, console)
        # The built-in agents as the job builds them, reading the model trained above.
        scoring = settings.scoring.model_copy(update={"models_dir": registry.root})
        agents = build_agents(settings.model_copy(update={"scoring": scoring}), plugins=False)
        insights = run_agents(agents, data.episodes)
    diagnosis = {i.episode_id: i.fault_type for i in insights if i.kind == "diagnosis"}
    predicted = [diagnosis.get(e, "unknown") for e in data.frame["episode_id"]]
    truth = list(data.frame["label"])
    f1, per_class = macro_f1(truth, predicted)
    info = {
        **data.info,
        "model_oob_accuracy": model.metadata["metrics"]["oob_accuracy"],
        "training_episodes": model.metadata["metrics"]["episodes"],
        "labelled_episodes": int((data.frame["label"] != "no_fault").sum()),
    }
    return AgentEvaluation(
        options,
        f1,
        per_class,
        confusion(truth, predicted),
        root_cause_hits(data.frame, insights),
        shared_cause_scores(insights, data.shared_events),
        ttf_scores(data.frame, insights, data.labels),
        info,
        maintenance_plan(insights),
    )


def print_agent_evaluation(result: AgentEvaluation, console: Console) -> None:

    o = result.options
    console.print(
        f"[bold]Agents on a simulated fleet[/]: {o.machines} machines, {o.duration_s / 3600:g} h, seed "
        f"{o.seed}, {o.fault_rate:g} faults/machine-hour (plant mix), {o.shared_events} shared-cause events; "
        f"{result.info['episodes']} episodes, diagnostic model trained on {result.info['training_episodes']} "
        f"episodes of another run (out-of-bag accuracy {result.info['model_oob_accuracy']:.3f})"
    )
    table = Table(title=f"Diagnostic: macro-F1 {result.diagnostic_f1:.3f} (per episode)")
    for col in ("class", "precision", "recall", "F1", "episodes"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in result.per_class.itertuples():
        table.add_row(
            r._1 if hasattr(r, "_1") else r[1], f"{r.precision:.2f}", f"{r.recall:.2f}", f"{r.f1:.2f}", str(r.support)
        )
    console.print(table)
    console.print("Confusion (rows: truth, columns: diagnosis):")
    console.print(result.confusion.to_string())
    rc, sc, m = result.root_cause, result.shared_cause, result.maintenance
    console.print(
        f"Root cause: faulty sensor ranked first in {rc['top1']:.1%}, in the top 3 in {rc['top3']:.1%} "
        f"of {rc['episodes']} fault episodes"
    )
    console.print(
        f"Shared cause: precision {sc['precision']:.2f}, recall {sc['recall']:.2f} "
        f"({sc['insights']} insights, {sc['events']} injected events)"
    )
    console.print(
        f"Maintenance (bearing wear run to failure, {m['faults']} faults): failure-time error (MAE) "
        f"{m['mae_first_min']:.1f} min at the first prediction, {m['mae_last_min']:.1f} min at the last; "
        f"first prediction before the failure in {m['warned_before_failure']:.0%}"
    )


def evaluation_dict(result: AgentEvaluation) -> dict[str, Any]:
    return {
        "options": result.options.__dict__,
        "diagnostic_macro_f1": result.diagnostic_f1,
        "per_class": result.per_class.to_dict("records"),
        "confusion": result.confusion.to_dict(),
        "root_cause": result.root_cause,
        "shared_cause": result.shared_cause,
        "maintenance": result.maintenance,
        "info": result.info,
    }
