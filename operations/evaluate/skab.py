"""SKAB scorecard: replay any folder in SKAB's format through the same detector classes the Flink UDFs use.

Two protocols (``protocol``), both scoring every row of a file in time order with a model of that file
and comparing the rows AFTER the training rows point-wise with ``anomaly``; counts are pooled over files
for F1, FAR = FP/(FP+TN) and MAR = FN/(FN+TP):

- ``skab`` (SKAB's outlier leaderboard, the headline): every file with a labelled anomaly (not
  anomaly-free.csv) is fitted on exactly its first ``train_rows`` (400) rows in time order, no shuffle,
  and nothing else: the alarm rule must come from those rows alone (``train-quantile`` or ``spc``).
- ``vigil`` (reported separately, named as such): the fit stops early at the first labelled
  anomaly/changepoint, and the alarm level may be tuned on anomaly-free.csv (``limit`` ``anomaly-free``).

``anomaly-free``: anomaly-free/anomaly-free.csv is cut into pseudo-experiments of ``pseudo_rows`` rows,
each is fitted on its first ``train_rows`` rows like a real experiment, and the alarm level ``k`` (in
units of the training scores' 99 % quantile above their median) is set so that ``target_far`` of its
held-out normal rows would alarm; experiment labels are never touched.

Other alarm rules (``limit``), each fixed per file from that file's own training rows, labels unused:

- ``train-quantile``: UCL = ``ucl_factor`` x the ``ucl_quantile`` quantile of the training rows' scores
  (SKAB's own autoencoder baselines set their limit this way: 5/2 x q0.99 for the feed-forward AE, 4/3 x
  q0.999 for Conv-AE; 5/2 x q0.99 is the default here).
- ``spc`` (``pca_t2q`` only): textbook control limits at false-alarm probability ``alpha`` instead of
  quantiles: the Hotelling T2 prediction limit from the F distribution and the Jackson-Mudholkar limit
  for Q, as SKAB's T2+Q baseline does (alpha 0.001 there).

Either can be combined with a causal rolling median of the score over ``median_window`` rows (SKAB's
T2+Q baseline uses 5; a 5-row median is above the limit exactly when >= 3 of the last 5 rows are) and a
run rule (``run_length``: alarm only after that many consecutive rows above the limit). Besides the
headline counts (rows after training), each file also gets SKAB's own counting (every row, training rows
included) so numbers can be set against SKAB's published table, whose false-alarm rates count them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from detectors import DetectorSpec, benchmark_detectors
from detectors.base import BatchDetector
from detectors.pca_t2q import PcaT2Q
from onnx_models.history import DEFAULT_HISTORY, history_features
from operations.evaluate.metrics import Confusion
from operations.evaluate.result_files import text_scores

LABEL_COLUMNS = ("anomaly", "changepoint")
LIMIT_RULES = ("anomaly-free", "train-quantile", "spc")
PROTOCOLS = ("skab", "vigil")
DEFAULT_LIMIT = {"skab": "train-quantile", "vigil": "anomaly-free"}
PROTOCOL_TITLES = {
    "skab": "SKAB protocol (first 400 rows fit, rest scored)",
    "vigil": "Vigil protocol (NOT SKAB's: fit cut at first label, level may use anomaly-free.csv)",
}
TIME_COLUMN = "datetime"


def skab_detectors() -> dict[str, DetectorSpec]:
    """The detectors scored on SKAB: every batch detector that declares the ``skab`` benchmark."""
    return benchmark_detectors("skab")


@dataclass(frozen=True)
class FileRows:
    """One file's per-row outcome in the data file's own row order (what the SKAB result writer needs)."""

    datetime: list[str]  # verbatim from the data file
    score: np.ndarray  # the rule's score, in the unit the alarm level is given in
    pred: np.ndarray  # bool: the alarm (after any run rule)
    truth: np.ndarray  # bool: the ``anomaly`` label
    train: np.ndarray  # bool: the row was a training row (never counted)


@dataclass(frozen=True)
class FileResult:
    name: str
    rows: int
    train_rows: int
    counts: Confusion
    all_rows: Confusion = Confusion()  # SKAB's own counting: training rows included
    per_row: FileRows | None = field(default=None, repr=False, compare=False)


@dataclass
class SkabResult:
    detector: str
    files: list[FileResult]
    alarm_level: float
    history: int
    train_rows: int
    limit: str = "anomaly-free"
    rule: str = ""  # human-readable alarm rule for the scorecard title
    protocol: str = "vigil"
    skipped: list[str] = field(default_factory=list)  # files without a labelled anomaly (skab protocol)
    pooled: Confusion = field(init=False)
    pooled_all_rows: Confusion = field(init=False)

    def __post_init__(self) -> None:
        self.pooled = sum((f.counts for f in self.files), Confusion())
        self.pooled_all_rows = sum((f.all_rows for f in self.files), Confusion())


@dataclass(frozen=True)
class SkabFile:
    """One SKAB file in time order, with what is needed to write results back in the file's own order."""

    frame: pd.DataFrame  # rows in time order
    source_row: np.ndarray  # each row's position in the file
    raw_datetime: list[str]  # the datetime texts as written in the file, in the file's order

    def in_file_order(self, values: np.ndarray) -> np.ndarray:
        """Values of the time-ordered rows put back in the file's row order."""
        out = np.empty_like(values)
        out[self.source_row] = values
        return out


def read_skab_file(path: Path) -> SkabFile:
    """One SKAB file (``;``-separated, ``datetime`` column), sorted by time (stable)."""
    try:
        frame = pd.read_csv(path, sep=";", dtype={TIME_COLUMN: str})
    except (OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: not a readable SKAB CSV ({exc})") from exc
    if TIME_COLUMN not in frame.columns:
        raise ValueError(f"{path}: no '{TIME_COLUMN}' column (columns: {list(frame.columns)}); is it ';'-separated?")
    raw = frame[TIME_COLUMN].tolist()
    try:
        frame[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable '{TIME_COLUMN}' values ({exc})") from exc
    order = np.argsort(frame[TIME_COLUMN].to_numpy(), kind="stable")
    return SkabFile(frame.iloc[order].reset_index(drop=True), order, raw)


def load_skab_csv(path: Path) -> pd.DataFrame:
    """One SKAB file (``;``-separated, ``datetime`` column) in time order."""
    return read_skab_file(path).frame


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


def causal_median(scores: np.ndarray, window: int) -> np.ndarray:
    """Rolling median over the last ``window`` rows (fewer at the start): one stray row cannot alarm alone."""
    if window <= 1:
        return scores
    return pd.Series(scores).rolling(window, min_periods=1).median().to_numpy()


def apply_run_rule(above: np.ndarray, run_length: int) -> np.ndarray:
    """Alarm at row t only when rows t - run_length + 1 .. t are all above the limit (causal)."""
    if run_length <= 1:
        return above
    counts = np.cumsum(np.r_[0, above.astype(np.int64)])
    window = counts[run_length:] - counts[:-run_length]  # rows above in each full window ending at t
    return np.r_[np.zeros(run_length - 1, dtype=bool), window == run_length]


def t2_prediction_limit(n_components: int, n_train: int, alpha: float) -> float:
    """Hotelling T2 limit for a NEW row scored against ``n_train`` training rows (Tracy, Young & Mason 1992).

    T2 of a new independent Gaussian row ~ m (n - 1)(n + 1) / (n (n - m)) * F(m, n - m); the (1 - alpha)
    quantile of that is the limit. It is wider than chi2(m) because the mean and covariance are estimates.
    """
    m, n = n_components, n_train
    if n <= m:
        raise ValueError(f"T2 limit needs more training rows ({n}) than components ({m}); use more training rows")
    return float(m * (n - 1) * (n + 1) / (n * (n - m)) * stats.f.ppf(1.0 - alpha, m, n - m))


def q_limit(residual_eigenvalues: np.ndarray, alpha: float) -> float:
    """Jackson-Mudholkar (1979) limit for Q, the squared residual off the kept principal components.

    With theta_i = sum(lambda_j ** i) over the discarded eigenvalues, h0 = 1 - 2 theta1 theta3 / (3 theta2^2):
    Q_alpha = theta1 (c sqrt(2 theta2 h0^2) / theta1 + 1 + theta2 h0 (h0 - 1) / theta1^2) ** (1 / h0).
    Where that is undefined (h0 <= 0: one discarded eigenvalue dwarfs many small ones) it falls back to
    Pearson's three-moment fit a + b * chi2(nu) (b = theta3 / theta2, nu = theta2^3 / theta3^2,
    a = theta1 - theta2^2 / theta3). No residual variance -> no limit (inf): Q is rounding noise then.
    """
    lam = np.clip(np.asarray(residual_eigenvalues, dtype=np.float64), 0.0, None)
    theta1, theta2, theta3 = (float(np.sum(lam**i)) for i in (1, 2, 3))
    if theta1 <= 1e-9:
        return float("inf")
    h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
    c = float(stats.norm.ppf(1.0 - alpha))
    base = c * np.sqrt(2.0 * theta2 * h0**2) / theta1 + 1.0 + theta2 * h0 * (h0 - 1.0) / theta1**2
    if h0 <= 0.0 or base <= 0.0:
        b, nu = theta3 / theta2, theta2**3 / theta3**2
        return float(theta1 - theta2**2 / theta3 + b * stats.chi2.ppf(1.0 - alpha, nu))
    return float(theta1 * base ** (1.0 / h0))


def _residual_eigenvalues(train: np.ndarray, n_components: int) -> np.ndarray:
    """Eigenvalues the PCA discarded, of the training rows standardised as :class:`PcaT2Q` does."""
    std = train.std(axis=0)
    z = (train - train.mean(axis=0)) * np.where(std > 1e-12, 1.0 / np.where(std > 1e-12, std, 1.0), 0.0)
    eig = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    return eig[n_components:]


@dataclass(frozen=True)
class AlarmRule:
    """How rows become alarms; see the module docstring. Defaults reproduce the headline protocol."""

    limit: str = "anomaly-free"
    target_far: float = 0.10
    ucl_quantile: float = 0.99
    ucl_factor: float = 2.5
    alpha: float = 0.001
    median_window: int = 1
    run_length: int = 1

    def __post_init__(self) -> None:
        if self.limit not in LIMIT_RULES:
            raise ValueError(f"unknown limit rule {self.limit!r}; choose one of {list(LIMIT_RULES)}")
        if self.median_window < 1 or self.run_length < 1:
            raise ValueError(f"median_window and run_length must be >= 1, got {self.median_window}, {self.run_length}")
        if not 0.0 < self.alpha < 1.0 or not 0.0 < self.ucl_quantile <= 1.0 or self.ucl_factor <= 0.0:
            raise ValueError("alpha must be in (0, 1), ucl_quantile in (0, 1] and ucl_factor > 0")

    def describe(self) -> str:
        smoothing = f" · median {self.median_window}" if self.median_window > 1 else ""
        run = f" · run {self.run_length}" if self.run_length > 1 else ""
        if self.limit == "train-quantile":
            head = f"UCL {self.ucl_factor:g} x q{self.ucl_quantile:g}(train)"
        elif self.limit == "spc":
            head = f"T2/Q limits alpha {self.alpha:g}"
        else:
            head = f"anomaly-free FAR {self.target_far:g}"
        return head + smoothing + run


def _fit_and_score(
    make: Callable[[], BatchDetector],
    frame: pd.DataFrame,
    columns: list[str],
    n_train: int,
    history: int,
    rule: AlarmRule = AlarmRule(),
) -> np.ndarray:
    """Scores of every row, smoothed by ``rule.median_window``, in the unit the rule compares with its level.

    ``anomaly-free``: normalised by the training rows, (s - median) / (q99 - median), against one level
    shared by all files. ``train-quantile`` / ``spc``: divided by this file's own limit, so 1.0 is the level.
    A detector that remembers its training rows (k-NN) would score them against themselves; it exposes
    leave-one-out ``training_scores`` instead, which are used as the training reference when present.
    """
    features, names = history_features(frame, columns, history)
    train = features[:n_train]
    detector = make().fit(train, names)
    if rule.limit == "spc":
        if not isinstance(detector, PcaT2Q):
            raise ValueError(
                f"limit 'spc' needs T2/Q statistics, which only pca_t2q has (got {detector.name}); "
                "use limit 'train-quantile' for other detectors"
            )
        parts = detector.score_parts(features)
        t2_ucl = t2_prediction_limit(detector.n_components, n_train, rule.alpha)
        q_ucl = q_limit(_residual_eigenvalues(train, detector.n_components), rule.alpha)
        t2 = causal_median(parts["t2"], rule.median_window) / t2_ucl
        q = causal_median(parts["q"], rule.median_window) / q_ucl
        return np.maximum(t2, q)
    scores = detector.score(features)
    own = getattr(detector, "training_scores", None)
    reference = own if isinstance(own, np.ndarray) and own.size else scores[:n_train]
    if rule.limit == "train-quantile":
        ucl = rule.ucl_factor * float(np.quantile(reference, rule.ucl_quantile))
        if ucl <= 0.0:
            raise ValueError(
                f"{detector.name}: training-score quantile is {ucl:g}; a factor x quantile limit needs "
                "positive scores (use limit 'anomaly-free' for this detector)"
            )
        return causal_median(scores, rule.median_window) / ucl
    median, q99 = np.quantile(reference, [0.5, 0.99])
    return causal_median((scores - median) / max(q99 - median, 1e-12), rule.median_window)


def tune_alarm_level(
    make: Callable[[], BatchDetector],
    free: pd.DataFrame,
    columns: list[str],
    train_rows: int,
    history: int,
    target_far: float,
    pseudo_rows: int,
    median_window: int = 1,
) -> float:
    """Alarm level giving ``target_far`` false alarms on held-out anomaly-free rows (labels never used)."""
    rule = AlarmRule(median_window=median_window)
    held_out: list[np.ndarray] = []
    for start in range(0, len(free) - pseudo_rows + 1, pseudo_rows):
        chunk = free.iloc[start : start + pseudo_rows].reset_index(drop=True)
        held_out.append(_fit_and_score(make, chunk, columns, train_rows, history, rule)[train_rows:])
    if not held_out:
        raise ValueError(f"anomaly-free data has {len(free)} rows; need >= {pseudo_rows} to tune the alarm level")
    return float(np.quantile(np.concatenate(held_out), 1.0 - target_far))


def evaluate_skab(
    data_dir: Path,
    detector: str,
    *,
    protocol: str = "skab",
    train_rows: int = 400,
    history: int = DEFAULT_HISTORY,
    target_far: float = 0.10,
    pseudo_rows: int = 1150,
    alarm_level: float | None = None,
    rule: AlarmRule | None = None,
    pca_variance: float | None = None,
) -> SkabResult:
    """Run ``protocol`` on every experiment file under ``data_dir``; see the module docstring.

    ``rule`` defaults to the protocol's own default limit (``DEFAULT_LIMIT``). ``alarm_level`` overrides
    the level tuned on anomaly-free.csv (needed when a folder has none); it applies to the
    ``anomaly-free`` rule only. ``rule.target_far`` wins over the ``target_far`` argument when a rule is
    given. ``pca_variance`` overrides the explained variance ``pca_t2q`` keeps (0.99 by default; SKAB's
    T2+Q baseline keeps 0.85).
    """
    if detector not in skab_detectors():
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(skab_detectors())}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    rule = rule or AlarmRule(limit=DEFAULT_LIMIT[protocol], target_far=target_far)
    if protocol == "skab" and (rule.limit == "anomaly-free" or alarm_level is not None):
        raise ValueError(
            "the SKAB protocol fits each file on its first rows alone, so anomaly-free.csv cannot set the alarm "
            "level: use limit 'train-quantile' or 'spc', or protocol 'vigil' (reported apart from SKAB's)"
        )
    make = skab_detectors()[detector].build_for_benchmark
    if pca_variance is not None:
        if detector != "pca_t2q":
            raise ValueError(f"pca_variance applies to pca_t2q only, not {detector!r}")
        make = partial(make, variance=pca_variance)
    free_path, experiments = discover(Path(data_dir))
    files = {path: read_skab_file(path) for path in experiments}
    frames = [(path, f.frame) for path, f in files.items()]
    columns = sensor_columns(frames[0][1])
    for path, frame in frames:
        if sensor_columns(frame) != columns:
            raise ValueError(f"{path}: sensor columns {sensor_columns(frame)} differ from {columns}")
        if "anomaly" not in frame.columns:
            raise ValueError(f"{path}: no 'anomaly' label column; experiment files need one")
    skipped: list[str] = []
    if protocol == "skab":  # the leaderboard scores the files that hold an anomaly
        skipped = [str(p.relative_to(data_dir)) for p, f in frames if not (f["anomaly"].fillna(0) > 0).any()]
        frames = [(p, f) for p, f in frames if (f["anomaly"].fillna(0) > 0).any()]
        if not frames:
            raise ValueError(f"no experiment file under {data_dir} has a labelled anomaly; nothing to score")
    if rule.limit != "anomaly-free":
        if alarm_level is not None:
            raise ValueError(f"alarm_level applies to the 'anomaly-free' rule only, not {rule.limit!r}")
        alarm_level = 1.0  # scores come divided by each file's own limit
    elif alarm_level is None:
        if free_path is None:
            raise FileNotFoundError(f"no anomaly-free/anomaly-free.csv under {data_dir}; pass alarm_level explicitly")
        free = load_skab_csv(free_path)
        alarm_level = tune_alarm_level(
            make, free, columns, train_rows, history, rule.target_far, pseudo_rows, rule.median_window
        )
    results: list[FileResult] = []
    for path, frame in frames:
        n_train = min(train_rows, len(frame)) if protocol == "skab" else leading_normal_rows(frame, train_rows)
        if n_train < 3:
            raise ValueError(f"{path}: only {n_train} leading normal rows; cannot fit a model")
        scores = _fit_and_score(make, frame, columns, n_train, history, rule)
        alarms = apply_run_rule(scores > alarm_level, rule.run_length)
        truth = frame["anomaly"].fillna(0).to_numpy() > 0
        train = np.arange(len(frame)) < n_train
        name = str(path.relative_to(data_dir))
        counts = Confusion.from_labels(truth[n_train:], alarms[n_train:])
        source = files[path]
        per_row = FileRows(
            datetime=source.raw_datetime,
            score=source.in_file_order(scores),
            pred=source.in_file_order(alarms),
            truth=source.in_file_order(truth),
            train=source.in_file_order(train),
        )
        results.append(FileResult(name, len(frame), n_train, counts, Confusion.from_labels(truth, alarms), per_row))
    return SkabResult(
        detector, results, alarm_level, history, train_rows, rule.limit, rule.describe(), protocol, skipped
    )


def _pct(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f} %"


def print_result(result: SkabResult, console: Console | None = None) -> None:
    """Per-file and pooled scorecard."""
    console = console or Console()
    table = Table(
        title=f"{PROTOCOL_TITLES[result.protocol]} · {result.detector} · history {result.history} · "
        + (f"{result.rule} · " if result.rule else "")
        + f"alarm level {result.alarm_level:.3g}"
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
    # SKAB's published table counts every row, training rows included (nearly all true negatives): its
    # FAR is lower than ours for the same alarms. Shown for comparison only.
    row("pooled, all rows (SKAB's counting)", result.pooled_all_rows.total, "", result.pooled_all_rows)
    console.print(table)
    if result.skipped:
        console.print(f"not scored (no labelled anomaly): {', '.join(result.skipped)}")


SKAB_COLUMNS = ("datetime", "anomaly_score", "anomaly_pred", "anomaly", "train")


def skab_how_chosen(result: SkabResult) -> str:
    """One sentence on where the alarm level came from (recorded next to the result files)."""
    if result.limit == "anomaly-free":
        return (
            "one level for all files, set on anomaly-free.csv pseudo-experiments for a target false-alarm "
            "rate; experiment labels unused (Vigil protocol, not SKAB's)"
        )
    if result.limit == "spc":
        return (
            "per file, from its training rows only: F-distribution T2 and Jackson-Mudholkar Q control "
            "limits; anomaly_score is max(T2/limit, Q/limit), alarm above 1"
        )
    return (
        "per file, from its training rows only: factor x quantile of their scores (the factor and quantile "
        "are given to the run; SKAB's feed-forward AE rule, 2.5 x q0.99, by default); anomaly_score is the "
        "score divided by that limit, alarm above 1"
    )


def write_skab_results(result: SkabResult, results_dir: Path) -> list[Path]:
    """Write one SKAB-format CSV per scored file under ``results_dir/skab`` and the thresholds sidecar."""
    root = Path(results_dir) / "skab"
    written = []
    for f in result.files:
        if f.per_row is None:
            raise ValueError(f"{f.name}: no per-row results kept; evaluate again before writing")
        rows = f.per_row
        path = root / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(
            {
                "datetime": rows.datetime,
                "anomaly_score": text_scores(np.nan_to_num(rows.score, nan=0.0)),
                "anomaly_pred": rows.pred.astype(int),
                "anomaly": rows.truth.astype(int),
                "train": rows.train.astype(int),
            }
        )
        frame.to_csv(path, sep=";", index=False, columns=list(SKAB_COLUMNS))
        written.append(path)
    meta = {
        "detector": result.detector,
        "protocol": result.protocol,
        "rule": result.rule,
        "limit": result.limit,
        "alarm_level": result.alarm_level,
        "how_chosen": skab_how_chosen(result),
        "train_rows": result.train_rows,
        "history": result.history,
        "pooled": {"f1": result.pooled.f1, "far": result.pooled.far, "mar": result.pooled.mar},
        "files": [f.name for f in result.files],
        "skipped": result.skipped,
    }
    (root / "thresholds.json").write_text(json.dumps(meta, indent=2) + "\n")
    return written


def run_skab_scorecards(
    data_dir: Path,
    detectors: Sequence[str] | None = None,
    *,
    protocol: str = "skab",
    limit: str | None = None,
    target_far: float = 0.10,
    ucl_quantile: float = 0.99,
    ucl_factor: float = 2.5,
    alpha: float = 0.001,
    median_window: int = 1,
    run_length: int = 1,
    history: int = DEFAULT_HISTORY,
    train_rows: int = 400,
    alarm_level: float | None = None,
    pca_variance: float | None = None,
    results_dir: Path | None = None,
    console: Console | None = None,
) -> list[SkabResult]:
    """Evaluate and print the scorecard of each of ``detectors`` in turn (default: every SKAB detector, by name).

    ``limit`` defaults to the protocol's own (``DEFAULT_LIMIT``); ``target_far`` .. ``run_length`` make the
    :class:`AlarmRule`, the rest go to :func:`evaluate_skab`. ``pca_variance`` applies to ``pca_t2q`` and is
    ignored for the other detectors. With ``results_dir`` (one detector only) the SKAB-format result files are
    written too (:func:`write_skab_results`). Unknown names and bad combinations raise ValueError before anything
    is evaluated.
    """
    console = console or Console()
    known = skab_detectors()
    names = list(detectors) if detectors else sorted(known)
    for name in names:
        if name not in known:
            raise ValueError(f"unknown skab detector {name!r}; choose from {', '.join(sorted(known))}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    if results_dir is not None and len(names) != 1:
        raise ValueError("--results-dir writes one detector's results: pass --detector once")
    rule = AlarmRule(
        limit=limit or DEFAULT_LIMIT[protocol],
        target_far=target_far,
        ucl_quantile=ucl_quantile,
        ucl_factor=ucl_factor,
        alpha=alpha,
        median_window=median_window,
        run_length=run_length,
    )
    results = []
    for name in names:
        result = evaluate_skab(
            data_dir,
            name,
            protocol=protocol,
            train_rows=train_rows,
            history=history,
            alarm_level=alarm_level,
            rule=rule,
            pca_variance=pca_variance if name == "pca_t2q" else None,
        )
        print_result(result, console)
        if results_dir is not None:
            paths = write_skab_results(result, results_dir)
            console.print(
                f"{len(paths)} SKAB result files and thresholds.json written under {Path(results_dir) / 'skab'}"
            )
        results.append(result)
    return results
