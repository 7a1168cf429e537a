"""Replay NAB files through a streaming detector and score the alarms with NAB's rules.

The detector is the same class the Flink UDFs run (detectors/), fed each file in time order in
blocks, with fresh state per file; alarms are ``score > threshold``. The threshold is a parameter
fixed in advance (NAB's own optimiser instead tunes it on the labels, which flatters the score).

Entry points: :func:`evaluate_nab` (one profile), :func:`evaluate_nab_profiles` (all of them),
:func:`print_nab_table`, :func:`check_published_results` (re-score a detector's results that NAB ships,
to check this scorer), and ``python -m operations.evaluate.nab_eval`` for both from a shell.
"""

from __future__ import annotations

import argparse
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
from operations.evaluate.result_files import nab_thresholds, read_nab_results, write_nab_results


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


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m operations.evaluate.nab_eval DATA_DIR [--detector ..] [--threshold ..]` or `--check-nab ROOT`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", type=Path, help="folder in NAB layout")
    ap.add_argument("--detector", default=EwmaZScore.name, choices=sorted(streaming_detectors()))
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="alarm when score > threshold (default: the detector's own fixed default_threshold, if any)",
    )
    ap.add_argument("--normalize", action="store_true", help="per-file min-max scores to [0,1] (not causal)")
    ap.add_argument("--rearm-rows", type=int, default=0, help="suppress repeat alarms within N rows")
    ap.add_argument("--param", action="append", default=[], metavar="K=V", help="detector parameter")
    ap.add_argument("--check-nab", type=Path, metavar="NAB_ROOT", help="re-score NAB's shipped results")
    ap.add_argument("--check-detector", default="windowedGaussian")
    ap.add_argument("--results-dir", type=Path, help="also write NAB-format result files here")
    ap.add_argument("--results-name", default="vigil", help="detector name in the result files (no '_')")
    ap.add_argument(
        "--rescore",
        type=Path,
        metavar="RESULTS_DIR",
        help="score result files written by --results-dir against DATA_DIR with their thresholds.json",
    )
    args = ap.parse_args(argv)
    if args.rescore:
        if args.data_dir is None:
            ap.error("--rescore needs DATA_DIR (the NAB folder the results were written for)")
        print_nab_table(
            rescore_own_results(args.data_dir, args.rescore, args.results_name),
            title=f"{args.rescore}/{args.results_name} re-scored from its files",
            console=Console(width=max(Console().width, 110)),
        )
        return
    if args.check_nab:
        print_nab_table(
            check_published_results(args.check_nab, args.check_detector),
            title=f"NAB's {args.check_detector} results, re-scored",
            console=Console(width=max(Console().width, 110)),
        )
        return
    if args.threshold is None:
        args.threshold = streaming_detectors()[args.detector].default_threshold
    if args.data_dir is None or args.threshold is None:
        ap.error("give DATA_DIR and --threshold (or --check-nab NAB_ROOT)")
    params = {k: float(v) if "." in v or "e" in v else int(v) for k, v in (p.split("=", 1) for p in args.param)}
    run = run_nab(args.data_dir, args.detector, args.threshold, args.normalize, rearm_rows=args.rearm_rows, **params)
    title = f"NAB: {args.detector} > {args.threshold}, rearm {args.rearm_rows} rows {params or ''} on {args.data_dir}"
    print_nab_table(run.profile_scores, title=title, console=Console(width=max(Console().width, 110)))
    if args.results_dir:
        paths = write_results(run, args.results_dir, args.results_name, args.detector, args.threshold, args.rearm_rows)
        print(f"{len(paths)} NAB result files and thresholds.json written under {args.results_dir}")


if __name__ == "__main__":
    main()
