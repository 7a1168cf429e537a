"""Training of the agents' models: the diagnostic classifier (agents.diagnostic).

Episodes and their fault labels come from a simulated fleet with the plant fault mix scored by the job's
own code (operations.evaluate.agents_eval.simulate_labelled); the rule-decided classes (offline machine, dead or
stuck sensor) are left out. A random forest over the episode features (agents.features.FEATURE_NAMES) is
exported with skl2onnx (probabilities as a plain tensor, no ZipMap) and registered in the model registry
as ``agents/diagnostic`` with its classes, feature names, training run and out-of-bag accuracy; promoted
versions are picked up by the running agents without a restart.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.progress import Progress
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier

from agents.base import STAT_COLUMNS
from agents.diagnostic import MODEL_NAME, REGISTRY_TYPE
from agents.episode_store import EpisodeStore
from agents.episodes import build_episodes, episodes_frame
from agents.features import FEATURE_NAMES, episode_matrix
from connectors.clickhouse import make_client
from onnx_models.registry import ModelRegistry, ModelVersion
from operations.evaluate.labelled_episodes import AgentRunOptions, LabelledEpisodes, simulate_labelled, trainable
from operations.training.fault_labels import query_labels
from vigil.settings import Settings

TRAIN_RUN = AgentRunOptions(machines=120, duration_s=3 * 3600.0, seed=202, fault_rate=2.0, shared_events=0)


def fit_diagnostic(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """A random forest over episode features, as ONNX bytes plus the metadata the registry keeps."""
    model = RandomForestClassifier(
        n_estimators=200, min_samples_leaf=2, class_weight="balanced", oob_score=True, random_state=seed, n_jobs=1
    )
    model.fit(x, y)
    onnx = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset=17)
    counts = {str(c): int((y == c).sum()) for c in model.classes_}
    return onnx.SerializeToString(), {
        "feature_names": FEATURE_NAMES,
        "classes": [str(c) for c in model.classes_],
        "threshold": 0.0,
        "threshold_method": "none: the most probable class is reported with its probability as confidence",
        "metrics": {"oob_accuracy": float(model.oob_score_), "episodes": int(len(y)), "per_class": counts},
        "data_sha256": hashlib.sha256(x.tobytes() + "|".join(map(str, y)).encode()).hexdigest(),
    }


def train_diagnostic(
    settings: Settings,
    registry: ModelRegistry,
    options: AgentRunOptions = TRAIN_RUN,
    promote: bool = True,
    console: Console | None = None,
    data: LabelledEpisodes | None = None,
    training: dict[str, Any] | None = None,
) -> ModelVersion:
    """Simulate (unless ``data`` is given, then ``training`` describes where it came from), fit, register (and
    promote) the diagnostic classifier."""
    if data is None:
        data = simulate_labelled(settings, options, console)
        training = {
            "source": "simulated fleet, plant fault mix (operations.evaluate.agents_eval)",
            "machines": options.machines,
            "hours": options.duration_s / 3600,
            "seed": options.seed,
            "fault_rate": options.fault_rate,
        }
    keep = trainable(data.frame)
    episodes = [e for e, k in zip(data.episodes, keep, strict=True) if k]
    x = episode_matrix(episodes)
    y = data.frame.loc[keep, "label"].to_numpy(dtype=object).astype(str)
    if len(set(y)) < 2:
        raise ValueError(f"the training run gave {len(y)} episodes of {len(set(y))} class(es): simulate longer")
    model_bytes, metadata = fit_diagnostic(x, y, seed=options.seed)
    metadata["training"] = {**(training or {}), "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return registry.register(REGISTRY_TYPE, MODEL_NAME, model_bytes, metadata, promote=promote)


def clickhouse_labelled_episodes(
    settings: Settings,
    client: Client,
    start_ms: int,
    end_ms: int,
    unlabelled: str = "no_fault",
    console: Console | None = None,
) -> LabelledEpisodes:
    """Episodes of [start_ms, end_ms) from ClickHouse history, labelled with the fault-labels table.

    The anomalous verdicts give the episodes (the streaming job's merge rule, agents.episodes); each one's
    evidence is read exactly as the agents job reads it (agents.episode_store); an episode takes the
    diagnosis of the first label of its machine overlapping it (with the scorer's history as grace). An
    episode without a label is ``no_fault`` (``unlabelled="no_fault"``: the labels are complete, as the
    simulator's are: an unexplained episode was a false alarm) or left out (``"skip"``: a plant's work
    orders name only some of its faults)."""
    if unlabelled not in ("no_fault", "skip"):
        raise ValueError(f"unlabelled must be 'no_fault' or 'skip', not {unlabelled!r}")
    window_ms = settings.window.size_ms
    flagged = client.query_df(
        "SELECT equipment_id, any(site) AS site, any(equipment_type) AS equipment_type, "
        "toUnixTimestamp64Milli(window_start) AS window_start_ms "
        f"FROM {settings.clickhouse.anomalies_view} WHERE is_anomaly = 1 "
        "AND window_start >= fromUnixTimestamp64Milli({s:Int64}) "
        "AND window_start < fromUnixTimestamp64Milli({e:Int64}) "
        "GROUP BY equipment_id, window_start ORDER BY equipment_id, window_start",
        parameters={"s": start_ms, "e": end_ms},
    )
    # (not "1 AS is_anomaly" in the SELECT: ClickHouse would read that alias in the WHERE, matching every row)
    flagged["is_anomaly"] = True
    if flagged.empty:
        raise ValueError(
            f"no anomalous windows in ClickHouse between {_iso(start_ms)} and {_iso(end_ms)}: "
            "nothing to learn from (widen --hours, or run the pipeline longer)"
        )
    spans = build_episodes(
        flagged,
        pd.DataFrame(columns=["equipment_id", *STAT_COLUMNS]),
        window_ms,
        gap_windows=settings.agents.gap_windows,
        now_ms=end_ms,
    )
    spans = [e for e in spans if e.closed]  # an episode still growing at the range's end is left for later
    store = EpisodeStore(settings, client)
    episodes = []
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"reading {len(spans)} episodes from ClickHouse", total=len(spans))
        for e in spans:
            episodes.append(store.episode(e.equipment_id, e.site, e.equipment_type, e.start_ms, e.end_ms))
            progress.advance(task)
    grace = settings.scoring.history_windows * window_ms
    labels = query_labels(client, settings, start_ms - grace, end_ms + grace)
    frame = episodes_frame(episodes)
    by_machine = {m: g for m, g in labels.groupby("equipment_id")} if len(labels) else {}
    names, sensors = [], []
    for e in episodes:
        rows = by_machine.get(e.equipment_id)
        hit = None
        if rows is not None:
            overlap = rows[(rows["start_ms"] < e.end_ms + grace) & (rows["end_ms"] + grace > e.start_ms)]
            hit = overlap.iloc[0] if len(overlap) else None
        names.append(str(hit["diagnosis"]) if hit is not None else "" if unlabelled == "skip" else "no_fault")
        sensors.append(tuple(hit["sensors"]) if hit is not None else ())
    frame = frame.assign(label=names, fault_index=-1, fault_sensors=sensors)
    keep = (frame["label"] != "").to_numpy()
    info = {"episodes": int(keep.sum()), "labels": len(labels), "unlabelled_skipped": int((~keep).sum())}
    return LabelledEpisodes(
        [e for e, k in zip(episodes, keep, strict=True) if k], frame.loc[keep].reset_index(drop=True), [], [], info
    )


def train_diagnostic_from_clickhouse(
    settings: Settings,
    registry: ModelRegistry,
    start_ms: int,
    end_ms: int,
    promote: bool = False,
    unlabelled: str = "no_fault",
    console: Console | None = None,
) -> ModelVersion:
    """``vigil train --agents --source clickhouse``: fit the classifier on ClickHouse history and labels."""

    client = make_client(settings.clickhouse, "admin")
    try:
        data = clickhouse_labelled_episodes(settings, client, start_ms, end_ms, unlabelled, console)
    finally:
        client.close()
    training = {
        "source": "clickhouse",
        "database": settings.clickhouse.database,
        "from": _iso(start_ms),
        "until": _iso(end_ms),
        "unlabelled": unlabelled,
        **data.info,
    }
    return train_diagnostic(settings, registry, promote=promote, console=console, data=data, training=training)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
