"""Replay NAB files through a streaming detector and score the alarms with NAB's rules.

The detector is the same class the Flink UDFs run (detectors/), fed each file in time order in
blocks, with fresh state per file; alarms are ``score > threshold``. The threshold is a parameter
fixed in advance (NAB's own optimiser instead tunes it on the labels, which flatters the score).

Entry points: :func:`evaluate_nab` (one profile), :func:`evaluate_nab_profiles` (all of them),
:func:`print_nab_table`, :func:`check_published_results` (re-score a detector's results that NAB ships,
to check this scorer), and for ``vigil evaluate --dataset nab`` (operations/cli.py) :func:`nab_scorecard`,
:func:`show_rescored_results` and :func:`show_published_check`, which also print.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from detectors import DetectorSpec, benchmark_detectors
from detectors.base import StreamingDetector
from detectors.ewma_zscore import EwmaZScore
from operations.evaluate.nab import (
    NabFile,
    NabProfile,
    NabScore,
    get_profile,
    load_nab,
    load_profiles,
    nab_score,
)
from operations.evaluate.result_files import check_detector_name, nab_thresholds, read_nab_results, write_nab_results


def streaming_detectors() -> dict[str, DetectorSpec]:
    """The detectors scored on NAB: every streaming detector that declares the ``nab`` benchmark."""
    return benchmark_detectors("nab")


PROFILE_NAMES = ("standard", "reward_low_FP", "reward_low_FN")
# Values handed to update() at a time: the replay is streamed, not one call per file.
REPLAY_BLOCK = 512


def make_detector(name: str, **params: Any) -> StreamingDetector:
    """Instantiate a streaming detector by its ``name``."""
    try:
        spec = streaming_detectors()[name]
    except KeyError:
        raise KeyError(f"unknown streaming detector {name!r}; choose one of {sorted(streaming_detectors())}") from None
    detector = spec.build_for_benchmark(**params)
    assert isinstance(detector, StreamingDetector)
    return detector


def replay(file: NabFile, detector: StreamingDetector, block: int = REPLAY_BLOCK) -> np.ndarray:
    """Scores of one file, fed in time order in blocks through fresh per-series state."""
    state = detector.initial_state()
    ts_ms = file.timestamps.astype("datetime64[ms]").astype(np.int64)
    parts = [
        detector.update(state, file.values[i : i + block], ts_ms[i : i + block])
        for i in range(0, len(file.values), block)
    ]
    scores = np.concatenate(parts) if parts else np.zeros(0)
    return np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max)


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Map one file's scores to [0, 1] by its min and max.

    Looks at the whole file, so it is NOT causal: use it only for writing NAB-format result files,
    never as the headline (the threshold would then depend on future values).
    """
    lo, hi = float(np.min(scores, initial=0.0)), float(np.max(scores, initial=0.0))
    return np.zeros_like(scores) if hi <= lo else (scores - lo) / (hi - lo)


def rearm(alarms: np.ndarray, gap: int) -> np.ndarray:
    """Keep an alarm only if no kept alarm fired in the previous ``gap`` rows (an alert re-arm time).

    Why: NAB, like an on-call rota, counts only the first alarm of an incident; repeats outside the
    labelled window are false positives. Loops over alarms, not rows.
    """
    if gap <= 0:
        return alarms
    out = np.zeros_like(alarms, dtype=bool)
    last = -gap - 1
    for i in np.flatnonzero(alarms):
        if i - last > gap:
            out[i] = True
            last = i
    return out


def file_params(detector: str, file: NabFile, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` plus ``probation=file.probation`` for detectors that take one and were not given one.

    Why: NAB hands every detector the file's probationary period (15 % of its rows, at most 750) to learn
    in; a detector that trains on it (e.g. ``knn_cad``) gets the same, unless ``--param probation=..``.
    """
    out = dict(params)
    if "probation" not in out and "probation" in inspect.signature(streaming_detectors()[detector].make).parameters:
        out["probation"] = file.probation
    return out


def detector_scores(
    files: Sequence[NabFile], detector: str, normalize: bool = False, **params: Any
) -> dict[str, np.ndarray]:
    """Score every file with a fresh detector instance."""
    out = {}
    for f in files:
        s = replay(f, make_detector(detector, **file_params(detector, f, params)))
        out[f.name] = normalize_scores(s) if normalize else s
    return out


@dataclass(frozen=True)
class NabRun:
    """One detector replayed over a NAB folder: what the scorecard and the result writer need."""

    files: list[NabFile]
    scores: dict[str, np.ndarray]
    alarms: dict[str, np.ndarray]
    profile_scores: dict[str, NabScore]


def run_nab(
    data_dir: Path,
    detector: str,
    threshold: float,
    normalize: bool = False,
    profile_names: Sequence[str] = PROFILE_NAMES,
    rearm_rows: int = 0,
    **params: Any,
) -> NabRun:
    """Replay every file, alarm where score > ``threshold`` (then re-arm), score under each profile."""
    files = load_nab(data_dir)
    profiles = load_profiles(data_dir)
    scores = detector_scores(files, detector, normalize, **params)
    alarms = {name: rearm(s > threshold, rearm_rows) for name, s in scores.items()}
    return NabRun(files, scores, alarms, {p: nab_score(files, alarms, get_profile(profiles, p)) for p in profile_names})


def evaluate_nab_profiles(
    data_dir: Path,
    detector: str,
    threshold: float,
    normalize: bool = False,
    profile_names: Sequence[str] = PROFILE_NAMES,
    rearm_rows: int = 0,
    **params: Any,
) -> dict[str, NabScore]:
    """NAB scores of one detector and fixed threshold under several profiles (scored once).

    ``rearm_rows`` > 0 drops alarms that follow a kept alarm within that many rows (see :func:`rearm`).
    """
    return run_nab(data_dir, detector, threshold, normalize, profile_names, rearm_rows, **params).profile_scores


def evaluate_nab(
    data_dir: Path,
    detector: str,
    threshold: float,
    normalize: bool = False,
    profile: str = "standard",
    rearm_rows: int = 0,
    **params: Any,
) -> NabScore:
    """NAB score of ``detector`` on every file under ``data_dir`` with alarms = score > threshold."""
    return evaluate_nab_profiles(data_dir, detector, threshold, normalize, (profile,), rearm_rows, **params)[profile]


def print_nab_table(scores: Mapping[str, NabScore], title: str = "NAB", console: Console | None = None) -> None:
    """One row per profile: normalised score, raw, null, perfect and the counts."""
    table = Table(title=title)
    for col in ("profile", "NAB score", "raw", "null", "perfect", "TP windows", "FN windows", "FP rows"):
        table.add_column(col, justify="left" if col == "profile" else "right", no_wrap=True)
    for name, s in scores.items():
        table.add_row(
            name,
            f"{s.normalized:.2f}",
            f"{s.raw:.3f}",
            f"{s.null:.1f}",
            f"{s.perfect:.1f}",
            str(s.tp),
            str(s.fn),
            str(s.fp),
        )
    (console or Console()).print(table)


def rescore_results(
    files: Sequence[NabFile],
    profiles: Mapping[str, NabProfile],
    results_dir: Path,
    detector: str,
    thresholds: Mapping[str, float],
) -> dict[str, NabScore]:
    """Score a NAB results folder as NAB does: alarms are ``anomaly_score >= threshold`` per profile."""
    scores = read_nab_results(results_dir, detector, files)
    return {
        name: nab_score(files, {k: v >= thresholds[name] for k, v in scores.items()}, profile)
        for name, profile in profiles.items()
        if name in thresholds
    }


def check_published_results(nab_root: Path, detector: str = "windowedGaussian") -> dict[str, NabScore]:
    """Re-score the results NAB ships for ``detector`` with this scorer (a check of the scorer).

    ``nab_root`` is a checkout of github.com/numenta/NAB: data/, labels/combined_windows.json,
    config/profiles.json, config/thresholds.json and results/<detector>/. Alarms are
    ``anomaly_score >= threshold``, NAB's convention, at NAB's per-profile thresholds.
    """
    root = Path(nab_root)
    files = load_nab(root / "data", root / "labels" / "combined_windows.json")
    profiles = load_profiles(path=root / "config" / "profiles.json")
    thresholds = nab_thresholds(root / "config" / "thresholds.json", detector)
    return rescore_results(files, profiles, root / "results", detector, thresholds)


def rescore_own_results(data_dir: Path, results_dir: Path, detector: str = "vigil") -> dict[str, NabScore]:
    """Re-score result files written by ``--results-dir`` (with their thresholds.json) against ``data_dir``."""
    files = load_nab(data_dir)
    profiles = load_profiles(data_dir)
    thresholds = nab_thresholds(Path(results_dir) / "thresholds.json", detector)
    return rescore_results(files, profiles, results_dir, detector, thresholds)


def write_results(
    run: NabRun, results_dir: Path, name: str, detector: str, threshold: float, rearm_rows: int
) -> list[Path]:
    """Write ``run`` as NAB result files under ``results_dir/<name>/`` (see :mod:`operations.evaluate.result_files`)."""
    how = (
        f"alarm where the {detector} score > {threshold:g}"
        + (f", then re-arm {rearm_rows} rows" if rearm_rows else "")
        + "; the threshold is given to the run, this command never optimises it on the scored labels"
    )
    return write_nab_results(results_dir, name, run.files, run.scores, run.alarms, threshold, run.profile_scores, how)


DEFAULT_DETECTOR = EwmaZScore.name
# Alarm level of a detector that declares no ``default_threshold`` (ewma_zscore: 4 sigma).
FALLBACK_THRESHOLD = 4.0
# Narrowest console the NAB table is printed on: a narrower one would cut its figures short.
TABLE_WIDTH = 110


def _table_console(console: Console | None) -> Console:
    """``console``, or one as wide as the NAB table writing to the same file when ``console`` is narrower."""
    console = console or Console()
    return console if console.width >= TABLE_WIDTH else Console(width=TABLE_WIDTH, file=console.file)


def alarm_threshold(detector: str, threshold: float | None = None) -> float:
    """``threshold``, else the detector's own fixed ``default_threshold``, else :data:`FALLBACK_THRESHOLD`."""
    if threshold is not None:
        return threshold
    default = streaming_detectors()[detector].default_threshold
    return FALLBACK_THRESHOLD if default is None else default


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """Detector parameters from ``K=V`` texts: V is a float when it holds '.' or 'e', else an int."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"detector parameter {pair!r} is not K=V")
        try:
            params[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raise ValueError(f"detector parameter {pair!r}: {value!r} is not a number") from None
    return params


def nab_scorecard(
    data_dir: Path,
    detector: str = DEFAULT_DETECTOR,
    threshold: float | None = None,
    *,
    normalize: bool = False,
    rearm_rows: int = 0,
    params: Mapping[str, Any] | None = None,
    results_dir: Path | None = None,
    results_name: str = "vigil",
    console: Console | None = None,
) -> NabRun:
    """Replay ``detector`` over ``data_dir`` and print its NAB scores under every profile.

    ``threshold`` is fixed in advance (default: :func:`alarm_threshold`), never optimised on the labels. With
    ``results_dir`` the NAB-format result files are written too, under the detector name ``results_name``.
    """
    if detector not in streaming_detectors():
        raise ValueError(f"unknown nab detector {detector!r}; choose from {', '.join(sorted(streaming_detectors()))}")
    check_detector_name(results_name)
    threshold = alarm_threshold(detector, threshold)
    params = dict(params or {})
    run = run_nab(data_dir, detector, threshold, normalize, rearm_rows=rearm_rows, **params)
    title = (
        f"NAB: {detector} > {threshold} (fixed in advance, not optimised on the labels), re-arm {rearm_rows} rows"
        + (f", parameters {params}" if params else "")
        + (", scores min-max normalised per file" if normalize else "")
        + f", {data_dir}"
    )
    console = _table_console(console)
    print_nab_table(run.profile_scores, title=title, console=console)
    if results_dir is not None:
        paths = write_results(run, results_dir, results_name, detector, threshold, rearm_rows)
        console.print(f"{len(paths)} NAB result files and thresholds.json written under {results_dir}")
    return run


def show_rescored_results(
    data_dir: Path, results_dir: Path, results_name: str = "vigil", console: Console | None = None
) -> dict[str, NabScore]:
    """Print :func:`rescore_own_results`: result files written by :func:`nab_scorecard`, scored from the files."""
    scores = rescore_own_results(data_dir, results_dir, results_name)
    print_nab_table(
        scores, title=f"{results_dir}/{results_name} re-scored from its files", console=_table_console(console)
    )
    return scores


def show_published_check(
    nab_root: Path, detector: str = "windowedGaussian", console: Console | None = None
) -> dict[str, NabScore]:
    """Print :func:`check_published_results`: NAB's shipped results for ``detector``, re-scored by this scorer."""
    scores = check_published_results(nab_root, detector)
    print_nab_table(scores, title=f"NAB's {detector} results, re-scored", console=_table_console(console))
    return scores
