"""VUS-PR of the per-row scores the SKAB and NAB evaluators already produce (TSB-AD's definition).

The metric itself is :mod:`operations.evaluate.vus`. Here it is applied per file and averaged over files
(TSB-AD's leaderboards also average per-file VUS-PR), with the buffer length TSB-AD would pick for each
file (:func:`~operations.evaluate.vus.sliding_window_for` of the data, for SKAB its first sensor column as
TSB-AD does for multivariate files). Files without a labelled anomaly have no VUS and are listed as skipped.

- SKAB (:func:`skab_vus`): the scores of :func:`~operations.evaluate.skab.evaluate_skab` (``FileRows.score``,
  the alarm rule's score), in time order. By default only the rows after the training rows are scored, as
  the SKAB protocol counts its F1; the buffer length is taken from those rows too.
- NAB (:func:`nab_vus`): the replayed scores of :func:`~operations.evaluate.nab_eval.run_nab` against the
  window labels, on every row (NAB's probationary rows included, as TSB-AD scores its NAB series whole).

:func:`run_vus` is the one-call entry point (``dataset`` ``skab`` or ``nab``) that also prints the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from rich.console import Console
from rich.table import Table

from operations.evaluate.nab_eval import NabRun, alarm_threshold, run_nab, streaming_detectors
from operations.evaluate.skab import SkabResult, evaluate_skab, read_skab_file, sensor_columns, skab_detectors
from operations.evaluate.vus import sliding_window_for, vus

DATASETS = ("skab", "nab")
# Narrowest console the table is printed on: a narrower one would cut its figures short.
TABLE_WIDTH = 150


@dataclass(frozen=True)
class FileVus:
    """VUS of one file's scores."""

    name: str
    rows: int
    anomalous_rows: int
    sliding_window: int
    pr: float
    roc: float
    constant_pr: float  # VUS-PR of a constant score on the same labels: the floor to read ``pr`` against


@dataclass
class VusSummary:
    """Per-file VUS of one detector on one dataset; ``mean_pr`` / ``mean_roc`` average over the files."""

    dataset: str
    detector: str
    files: list[FileVus]
    skipped: list[str] = field(default_factory=list)  # files without a labelled anomaly (no VUS)
    note: str = ""  # which rows were scored

    @property
    def mean_pr(self) -> float:
        return float(np.mean([f.pr for f in self.files])) if self.files else float("nan")

    @property
    def mean_roc(self) -> float:
        return float(np.mean([f.roc for f in self.files])) if self.files else float("nan")

    @property
    def mean_constant_pr(self) -> float:
        return float(np.mean([f.constant_pr for f in self.files])) if self.files else float("nan")


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN/-inf put at the lowest finite score and +inf at the highest (ranks are what count)."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    if finite.all():
        return s
    if not finite.any():
        return np.zeros_like(s)
    low, high = float(s[finite].min()), float(s[finite].max())
    return np.where(np.isposinf(s), high, np.where(finite, s, low))


def vus_of_files(items: Iterable[tuple[str, ArrayLike, ArrayLike, ArrayLike]]) -> tuple[list[FileVus], list[str]]:
    """VUS of each ``(name, labels, scores, series)``; ``series`` (the file's data) sets the buffer length.

    Returns (scored files, names of files skipped because their labels hold no anomaly or no normal row).
    """
    scored: list[FileVus] = []
    skipped: list[str] = []
    for name, labels, scores, series in items:
        y = np.asarray(labels).astype(bool)
        if not 0 < int(y.sum()) < y.size:
            skipped.append(name)
            continue
        window = sliding_window_for(series)
        result = vus(y, _finite(np.asarray(scores)), window)
        floor = vus(y, np.zeros(y.size), window).pr
        scored.append(FileVus(name, int(y.size), int(y.sum()), window, result.pr, result.roc, floor))
    return scored, skipped


def skab_vus(result: SkabResult, data_dir: Path, include_train: bool = False) -> VusSummary:
    """VUS of an :func:`~operations.evaluate.skab.evaluate_skab` result (its ``per_row`` scores).

    ``data_dir`` is the folder the result was evaluated on (read again for the first sensor column, which
    sets each file's buffer length). ``include_train`` scores the training rows too.
    """

    def items() -> Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for f in result.files:
            if f.per_row is None:
                raise ValueError(f"{f.name}: no per-row scores kept; evaluate again")
            source = read_skab_file(Path(data_dir) / f.name)
            order = source.source_row  # file order -> time order, as the scores were made
            keep = slice(None) if include_train else ~f.per_row.train[order]
            series = source.frame[sensor_columns(source.frame)[0]].to_numpy(dtype=np.float64)
            yield f.name, f.per_row.truth[order][keep], f.per_row.score[order][keep], series[keep]

    files, skipped = vus_of_files(items())
    rows = "every row" if include_train else f"rows after the first {result.train_rows} (training) rows"
    note = f"{result.protocol} protocol, {result.rule}; {rows}"
    return VusSummary("skab", result.detector, files, skipped + list(result.skipped), note)


def nab_vus(run: NabRun, detector: str) -> VusSummary:
    """VUS of a :func:`~operations.evaluate.nab_eval.run_nab` replay (its per-row ``scores``), every row."""
    files, skipped = vus_of_files((f.name, f.labels, run.scores[f.name], f.values) for f in run.files)
    return VusSummary("nab", detector, files, skipped, "every row (probationary rows included)")


def print_vus(summary: VusSummary, console: Console | None = None) -> None:
    """Per-file table and the mean over files."""
    table = Table(title=f"VUS (TSB-AD's definition) · {summary.dataset} · {summary.detector} · {summary.note}")
    for column in ("file", "rows", "anomalous", "window", "VUS-PR", "VUS-ROC", "VUS-PR constant score"):
        table.add_column(column, justify="left" if column == "file" else "right", no_wrap=True)
    for f in summary.files:
        cells = (str(f.rows), str(f.anomalous_rows), str(f.sliding_window), f"{f.pr:.3f}", f"{f.roc:.3f}")
        table.add_row(f.name, *cells, f"{f.constant_pr:.3f}")
    means = (f"{summary.mean_pr:.3f}", f"{summary.mean_roc:.3f}", f"{summary.mean_constant_pr:.3f}")
    table.add_row(f"mean over {len(summary.files)} files", "", "", "", *means, style="bold")
    console = console or Console()
    if console.width < TABLE_WIDTH:
        console = Console(width=TABLE_WIDTH, file=console.file)
    console.print(table)
    if summary.skipped:
        console.print(f"no VUS (no labelled anomaly): {', '.join(summary.skipped)}")


def run_vus(
    dataset: str, data_dir: Path, detectors: Sequence[str] | None = None, console: Console | None = None
) -> list[VusSummary]:
    """VUS of each of ``detectors`` (default: all of the dataset's) at the evaluators' default settings.

    SKAB: :func:`~operations.evaluate.skab.evaluate_skab` with the SKAB protocol (first 400 rows fit, rest
    scored). NAB: :func:`~operations.evaluate.nab_eval.run_nab` at the detector's fixed alarm threshold (the
    threshold does not change the scores, only the alarms, so VUS does not depend on it).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    known = skab_detectors() if dataset == "skab" else streaming_detectors()
    names = list(detectors) if detectors else sorted(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {dataset} detector(s) {unknown}; choose from {', '.join(sorted(known))}")
    summaries = []
    for name in names:
        if dataset == "skab":
            summary = skab_vus(evaluate_skab(Path(data_dir), name, protocol="skab"), Path(data_dir))
        else:
            summary = nab_vus(run_nab(Path(data_dir), name, alarm_threshold(name)), name)
        print_vus(summary, console)
        summaries.append(summary)
    return summaries
