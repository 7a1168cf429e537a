"""SKAB scorecard: replay any folder in SKAB's format through the same detector classes the Flink UDFs use.

Protocol (as in the SKAB benchmark): each experiment file gets its own model, fitted on its leading
anomaly-free rows (``train_rows``, 400 by default, cut short at the first labelled anomaly/changepoint);
every row of the file is then scored in time order, and the rows AFTER the training rows are compared
point-wise with ``anomaly`` (training rows are never counted: they would pad the true negatives and
understate the false-alarm rate). Counts are pooled over all files for F1, FAR and MAR.

anomaly-free/anomaly-free.csv is used for the one tuned knob, without touching experiment labels: it is
cut into pseudo-experiments of ``pseudo_rows`` rows, each is fitted on its first ``train_rows`` rows like a
real experiment, and the alarm level ``k`` (in units of the training scores' 99 % quantile above their
median) is set so that ``target_far`` of its held-out normal rows would alarm.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from udfs.detectors.base import BatchDetector
from udfs.detectors.isolation_forest import IsolationForestDetector
from udfs.detectors.knn_distance import KnnDistance
from udfs.detectors.pca_t2q import PcaT2Q
from udfs.features import DEFAULT_HISTORY, history_features
from vigil.evaluate.metrics import Confusion

LABEL_COLUMNS = ("anomaly", "changepoint")
TIME_COLUMN = "datetime"
DETECTORS: dict[str, Callable[[], BatchDetector]] = {
    "pca_t2q": lambda: PcaT2Q(variance=0.99),
    "isolation_forest": lambda: IsolationForestDetector(),
    "knn_distance": lambda: KnnDistance(k=5),
}


@dataclass(frozen=True)
class FileResult:
    name: str
    rows: int
    train_rows: int
    counts: Confusion


@dataclass
class SkabResult:
    detector: str
    files: list[FileResult]
    alarm_level: float
    history: int
    train_rows: int
    pooled: Confusion = field(init=False)

    def __post_init__(self) -> None:
        self.pooled = sum((f.counts for f in self.files), Confusion())


def load_skab_csv(path: Path) -> pd.DataFrame:
    """One SKAB file (``;``-separated, ``datetime`` column) in time order."""
    try:
        frame = pd.read_csv(path, sep=";")
    except (OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: not a readable SKAB CSV ({exc})") from exc
    if TIME_COLUMN not in frame.columns:
        raise ValueError(f"{path}: no '{TIME_COLUMN}' column (columns: {list(frame.columns)}); is it ';'-separated?")
    frame[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN])
    return frame.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)


def sensor_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != TIME_COLUMN and c not in LABEL_COLUMNS]


def discover(data_dir: Path) -> tuple[Path | None, list[Path]]:
    """(anomaly-free file or None, experiment files) under ``data_dir``, sorted by folder then number."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"SKAB data folder {data_dir} does not exist")
    free: Path | None = None
    experiments: list[Path] = []
    for path in data_dir.rglob("*.csv"):
        if path.stem == "anomaly-free" or path.parent.name == "anomaly-free":
            free = path
        else:
            experiments.append(path)

    def order(p: Path) -> tuple[str, int, str]:
        return (str(p.parent), int(p.stem) if p.stem.isdigit() else 10**9, p.stem)

    if not experiments:
        raise FileNotFoundError(f"no experiment CSVs under {data_dir} (expected sub-folders such as valve1/*.csv)")
    return free, sorted(experiments, key=order)


def leading_normal_rows(frame: pd.DataFrame, train_rows: int) -> int:
    """Rows usable for training: the first ``train_rows``, cut at the first labelled anomaly or changepoint."""
    labelled = np.zeros(len(frame), dtype=bool)
    for column in LABEL_COLUMNS:
        if column in frame.columns:
            labelled |= frame[column].fillna(0).to_numpy() > 0
    first = int(np.argmax(labelled)) if labelled.any() else len(frame)
    return min(train_rows, first, len(frame))


def _fit_and_score(
    make: Callable[[], BatchDetector], frame: pd.DataFrame, columns: list[str], n_train: int, history: int
) -> np.ndarray:
    """Scores of every row, normalised by the training rows: (s - median) / (q99 - median).

    A detector that remembers its training rows (k-NN) would score them against themselves; it exposes
    leave-one-out ``training_scores`` instead, which are used for the normalisation when present.
    """
    features, names = history_features(frame, columns, history)
    train = features[:n_train]
    detector = make().fit(train, names)
    scores = detector.score(features)
    own = getattr(detector, "training_scores", None)
    reference = own if isinstance(own, np.ndarray) and own.size else scores[:n_train]
    median, q99 = np.quantile(reference, [0.5, 0.99])
    return (scores - median) / max(q99 - median, 1e-12)


def tune_alarm_level(
    make: Callable[[], BatchDetector],
    free: pd.DataFrame,
    columns: list[str],
    train_rows: int,
    history: int,
    target_far: float,
    pseudo_rows: int,
) -> float:
    """Alarm level giving ``target_far`` false alarms on held-out anomaly-free rows (labels never used)."""
    held_out: list[np.ndarray] = []
    for start in range(0, len(free) - pseudo_rows + 1, pseudo_rows):
        chunk = free.iloc[start : start + pseudo_rows].reset_index(drop=True)
        held_out.append(_fit_and_score(make, chunk, columns, train_rows, history)[train_rows:])
    if not held_out:
        raise ValueError(f"anomaly-free data has {len(free)} rows; need >= {pseudo_rows} to tune the alarm level")
    return float(np.quantile(np.concatenate(held_out), 1.0 - target_far))


def evaluate_skab(
    data_dir: Path,
    detector: str,
    *,
    train_rows: int = 400,
    history: int = DEFAULT_HISTORY,
    target_far: float = 0.10,
    pseudo_rows: int = 1150,
    alarm_level: float | None = None,
) -> SkabResult:
    """Run the SKAB protocol on every experiment file under ``data_dir``; see the module docstring.

    ``alarm_level`` overrides the level tuned on anomaly-free.csv (needed when a folder has none).
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTORS)}")
    make = DETECTORS[detector]
    free_path, experiments = discover(Path(data_dir))
    frames = [(path, load_skab_csv(path)) for path in experiments]
    columns = sensor_columns(frames[0][1])
    for path, frame in frames:
        if sensor_columns(frame) != columns:
            raise ValueError(f"{path}: sensor columns {sensor_columns(frame)} differ from {columns}")
        if "anomaly" not in frame.columns:
            raise ValueError(f"{path}: no 'anomaly' label column; experiment files need one")
    if alarm_level is None:
        if free_path is None:
            raise FileNotFoundError(f"no anomaly-free/anomaly-free.csv under {data_dir}; pass alarm_level explicitly")
        free = load_skab_csv(free_path)
        alarm_level = tune_alarm_level(make, free, columns, train_rows, history, target_far, pseudo_rows)
    results: list[FileResult] = []
    for path, frame in frames:
        n_train = leading_normal_rows(frame, train_rows)
        if n_train < 3:
            raise ValueError(f"{path}: only {n_train} leading normal rows; cannot fit a model")
        alarms = _fit_and_score(make, frame, columns, n_train, history) > alarm_level
        truth = frame["anomaly"].fillna(0).to_numpy() > 0
        name = str(path.relative_to(data_dir))
        counts = Confusion.from_labels(truth[n_train:], alarms[n_train:])
        results.append(FileResult(name, len(frame), n_train, counts))
    return SkabResult(detector, results, alarm_level, history, train_rows)


def _pct(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f} %"


def print_result(result: SkabResult, console: Console | None = None) -> None:
    """Per-file and pooled scorecard."""
    console = console or Console()
    table = Table(
        title=f"SKAB point-wise · {result.detector} · history {result.history} · alarm level {result.alarm_level:.3g}"
    )
    for column in ("file", "rows", "train", "TP", "FP", "TN", "FN", "F1", "FAR", "MAR"):
        table.add_column(column, justify="left" if column == "file" else "right", no_wrap=True)

    def row(name: str, rows: int, train: int | str, c: Confusion, style: str | None = None) -> None:
        f1 = "n/a" if np.isnan(c.f1) else f"{c.f1:.3f}"
        cells = (name, str(rows), str(train), str(c.tp), str(c.fp), str(c.tn), str(c.fn), f1, _pct(c.far), _pct(c.mar))
        table.add_row(*cells, style=style)

    for f in result.files:
        row(f.name, f.rows, f.train_rows, f.counts)
    row("pooled", result.pooled.total, "", result.pooled, style="bold")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SKAB point-wise scorecard (F1, FAR, MAR)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--detector", choices=sorted(DETECTORS), action="append")
    parser.add_argument("--target-far", type=float, default=0.10,
                        help="false-alarm rate the alarm level is set for on anomaly-free data (labels unused)")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY,
                        help="rows of causal history in the features (rolling mean/std window)")
    parser.add_argument("--train-rows", type=int, default=400, help="leading rows of each file to fit on")
    parser.add_argument("--alarm-level", type=float, default=None,
                        help="fixed alarm level instead of tuning it on anomaly-free data")
    args = parser.parse_args(argv)
    for name in args.detector or sorted(DETECTORS):
        print_result(evaluate_skab(args.data_dir, name, train_rows=args.train_rows, history=args.history,
                                   target_far=args.target_far, alarm_level=args.alarm_level))


if __name__ == "__main__":
    main()
