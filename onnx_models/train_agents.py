"""Training of the agents' models: the diagnostic classifier (agents.diagnostic).

Episodes and their fault labels come from a simulated fleet with the plant fault mix scored by the job's
own code (vigil.evaluate.agents_eval.simulate_labelled); the rule-decided classes (offline machine, dead or
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
from rich.console import Console
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier

from agents.diagnostic import MODEL_NAME, REGISTRY_TYPE
from agents.features import FEATURE_NAMES, episode_matrix
from onnx_models.registry import ModelRegistry, ModelVersion
from vigil.evaluate.agents_eval import AgentRunOptions, LabelledEpisodes, simulate_labelled, trainable
from vigil.settings import Settings

TRAIN_RUN = AgentRunOptions(machines=120, duration_s=3 * 3600.0, seed=202, fault_rate=2.0, shared_events=0)


def fit_diagnostic(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """A random forest over episode features, as ONNX bytes plus the metadata the registry keeps."""
    model = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, class_weight="balanced", oob_score=True,
                                   random_state=seed, n_jobs=1)  # fmt: skip
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


def train_diagnostic(settings: Settings, registry: ModelRegistry, options: AgentRunOptions = TRAIN_RUN,
                     promote: bool = True, console: Console | None = None,
                     data: LabelledEpisodes | None = None) -> ModelVersion:  # fmt: skip
    """Simulate (unless ``data`` is given), fit, register (and promote) the diagnostic classifier."""
    data = data or simulate_labelled(settings, options, console)
    keep = trainable(data.frame)
    episodes = [e for e, k in zip(data.episodes, keep, strict=True) if k]
    x = episode_matrix(episodes)
    y = data.frame.loc[keep, "label"].to_numpy(dtype=object).astype(str)
    if len(set(y)) < 2:
        raise ValueError(f"the training run gave {len(y)} episodes of {len(set(y))} class(es): simulate longer")
    model_bytes, metadata = fit_diagnostic(x, y, seed=options.seed)
    metadata["training"] = {"source": "simulated fleet, plant fault mix (vigil.evaluate.agents_eval)",
                            "machines": options.machines, "hours": options.duration_s / 3600, "seed": options.seed,
                            "fault_rate": options.fault_rate,
                            "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    return registry.register(REGISTRY_TYPE, MODEL_NAME, model_bytes, metadata, promote=promote)
