"""Result files in the benchmarks' own formats, so anyone can re-score our alarms with the benchmark's code.

- NAB: ``DIR/<detector>/<category>/<detector>_<file>.csv`` with ``timestamp,value,anomaly_score,label``,
  one row per data-file row in the same order (probationary rows included), timestamps verbatim, plus
  ``DIR/thresholds.json`` shaped like NAB's ``config/thresholds.json`` (``{detector: {profile:
  {"threshold", "score"}}}``) and ``DIR/threshold-notes.json`` (the raw threshold and how it was chosen).
  NAB's scorer alarms where ``anomaly_score >= threshold``; the written score
  is built so that threshold 0.5 gives exactly our alarms (see :func:`nab_anomaly_score`).
- SKAB: written by operations.evaluate.skab.write_skab_results (its own result type).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from operations.evaluate.nab import NabFile, NabScore

NAB_COLUMNS = ("timestamp", "value", "anomaly_score", "label")
NOTES_FILE = "threshold-notes.json"  # how each detector's threshold was chosen, beside thresholds.json
NAB_ALARM_SCORE = 0.5  # the NAB threshold that reproduces our alarms from the written anomaly_score
_BELOW_ONE = 1.0 - 1e-6  # keeps the squashed score strictly below 1 after rounding to the written digits


def text_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as text with 10 significant digits (data columns keep their own formatting)."""
    return np.char.mod("%.10g", scores)


def check_detector_name(name: str) -> str:
    """NAB splits result file names ``<detector>_<file>`` at the first ``_``: the name must not hold one."""
    if not name or "_" in name or "/" in name:
        raise ValueError(f"NAB detector name {name!r} must be non-empty, without '_' or '/' (e.g. 'vigil')")
    return name


def nab_anomaly_score(scores: np.ndarray, alarms: np.ndarray, threshold: float) -> np.ndarray:
    """Scores in [0, 1] with ``score >= 0.5`` exactly on the alarm rows.

    Within each class the order of the raw scores is kept (r = max(score, 0) / threshold squashed by
    r / (1 + r)), so NAB's own threshold optimiser still sees a ranking; alarms land in [0.5, 1), the
    rest in [0, 0.5). Re-arm-suppressed rows can have a raw score above the threshold and still sit
    below 0.5: the file says what we alarmed on, not only what crossed.
    """
    if threshold <= 0.0:
        raise ValueError(f"threshold must be > 0 to scale scores into [0, 1], got {threshold}")
    r = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), 0.0, None) / threshold
    u = np.minimum(r / (1.0 + r), _BELOW_ONE)
    u = np.where(np.isfinite(r), u, _BELOW_ONE)
    return np.where(np.asarray(alarms, dtype=bool), NAB_ALARM_SCORE + 0.5 * u, 0.5 * u)


def write_nab_results(
    results_dir: Path,
    detector: str,
    files: Sequence[NabFile],
    scores: Mapping[str, np.ndarray],
    alarms: Mapping[str, np.ndarray],
    threshold: float,
    profile_scores: Mapping[str, NabScore],
    how_chosen: str,
) -> list[Path]:
    """Write every file's NAB result CSV and the thresholds sidecar; returns the CSV paths."""
    check_detector_name(detector)
    written = []
    for f in files:
        category, _, fname = f.name.rpartition("/")
        path = Path(results_dir) / detector / category / f"{detector}_{fname}"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(
            {
                "timestamp": f.raw_timestamps or [str(t) for t in f.timestamps],
                "value": f.values,
                "anomaly_score": text_scores(nab_anomaly_score(scores[f.name], alarms[f.name], threshold)),
                "label": f.labels.astype(int),
            }
        )
        frame.to_csv(path, index=False, columns=list(NAB_COLUMNS))
        written.append(path)
    sidecar = Path(results_dir) / "thresholds.json"
    existing = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    existing[detector] = {
        _nab_profile_key(name): {"threshold": NAB_ALARM_SCORE, "score": s.normalized}
        for name, s in profile_scores.items()
    }
    sidecar.write_text(json.dumps(existing, indent=2) + "\n")
    notes_path = Path(results_dir) / NOTES_FILE  # kept apart: thresholds.json stays exactly NAB's shape
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    notes[detector] = {
        "raw_threshold": threshold,
        "how_chosen": how_chosen,
        "written_threshold": f"anomaly_score >= {NAB_ALARM_SCORE} reproduces these alarms",
    }
    notes_path.write_text(json.dumps(notes, indent=2) + "\n")
    return written


def _nab_profile_key(name: str) -> str:
    return {"reward_low_FP": "reward_low_FP_rate", "reward_low_FN": "reward_low_FN_rate"}.get(name, name)


def read_nab_results(results_dir: Path, detector: str, files: Sequence[NabFile]) -> dict[str, np.ndarray]:
    """``anomaly_score`` of each data file from a NAB results folder, checked row for row against the data."""
    out = {}
    for f in files:
        category, _, fname = f.name.rpartition("/")
        path = Path(results_dir) / detector / category / f"{detector}_{fname}"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: a results folder needs one file per data file")
        col = pd.read_csv(path, usecols=["anomaly_score"])["anomaly_score"].to_numpy(dtype=np.float64)
        if len(col) != len(f.values):
            raise ValueError(f"{path}: {len(col)} rows, data file has {len(f.values)}")
        out[f.name] = col
    return out


def nab_thresholds(path: Path, detector: str) -> dict[str, float]:
    """Per-profile thresholds of ``detector`` from a NAB ``thresholds.json`` (NAB's config or our sidecar)."""
    entry: dict[str, Any] = json.loads(Path(path).read_text())[detector]
    return {name: float(v["threshold"]) for name, v in entry.items()}
