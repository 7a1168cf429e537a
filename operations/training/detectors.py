"""`vigil train`: fit one model per (equipment type, detector) on normal history from ClickHouse.

Normal = window statistics minus windows labelled as faults in the simulator's ground truth (and
the ``history - 1`` windows after a fault, whose rolling features still see it), minus windows the
job flagged in the ``anomalies`` table (when it exists), minus windows where a sensor was missing.
The normal rows are split by time: the oldest part fits the detector, the next slice calibrates the
threshold (a quantile of its scores: data the model never saw, so the threshold is not optimistic),
and the newest slice measures the alarm rate the threshold really gives on normal data.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import skl2onnx
import sklearn
from clickhouse_connect.driver.client import Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.clickhouse import WINDOW_STATS_VIEW, make_client
from detectors import DetectorSpec, all_detectors, job_detectors
from detectors.base import BatchDetector
from edge.simulator.ground_truth import FaultLabel, read_ground_truth
from onnx_models.features import FEATURE_STATS, window_features
from onnx_models.history import DEFAULT_HISTORY
from onnx_models.registry import ModelRegistry, ModelVersion, default_root
from vigil.settings import Settings


def trainable_detectors() -> dict[str, DetectorSpec]:
    """Detectors ``vigil train`` can fit and export: batch detectors with an ONNX export."""
    return {
        name: spec
        for name, spec in all_detectors().items()
        if spec.kind == "batch" and callable(getattr(spec.make, "to_onnx", None))
    }


# Table the scoring job writes verdicts to; rows with ANOMALY_FLAG_COLUMN != 0 (or every row when the
# table has no such column) are excluded from training.
ANOMALIES_TABLE = "anomalies"
ANOMALY_FLAG_COLUMN = "is_anomaly"
MS_PER_HOUR = 3_600_000
MIN_NORMAL_WINDOWS = 30  # fewer normal rows than this cannot fit + calibrate + test meaningfully


class TrainingDataError(RuntimeError):
    """Not enough (or no) usable history to train on."""


@dataclass(frozen=True)
class _Split:
    fit: np.ndarray
    calibration: np.ndarray
    test: np.ndarray


def _to_ms(value: datetime | str | int) -> int:
    if isinstance(value, int):
        return value
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _versions() -> dict[str, str]:

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "sklearn": sklearn.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "skl2onnx": skl2onnx.__version__,
    }


def _range_params(since_ms: int, until_ms: int) -> tuple[str, dict[str, Any]]:
    where = (
        "window_start >= fromUnixTimestamp64Milli({since:Int64}) "
        "AND window_start < fromUnixTimestamp64Milli({until:Int64})"
    )
    return where, {"since": since_ms, "until": until_ms}


def _equipment_types(client: Client, since_ms: int, until_ms: int) -> list[str]:
    where, params = _range_params(since_ms, until_ms)
    rows = client.query(
        f"SELECT DISTINCT equipment_type FROM {WINDOW_STATS_VIEW} WHERE {where} ORDER BY equipment_type",
        parameters=params,
    ).result_rows
    return [str(r[0]) for r in rows]


def _no_data_error(client: Client, settings: Settings, since_ms: int, until_ms: int, what: str) -> TrainingDataError:
    row = client.query(f"SELECT count(), min(window_start), max(window_start) FROM {WINDOW_STATS_VIEW}").result_rows[0]
    have = f"the table holds {row[0]} rows from {row[1]} to {row[2]}" if row[0] else "the table is empty"
    return TrainingDataError(
        f"no window statistics{what} in {settings.clickhouse.database}.{WINDOW_STATS_VIEW} between "
        f"{_iso(since_ms)} and {_iso(until_ms)} ({have}). Collect history first (`vigil stack up --pipeline` "
        "then `vigil simulate` or `vigil demo`), or pass --since/--until inside the range that has data."
    )


def _flagged_windows(client: Client, settings: Settings, since_ms: int, until_ms: int) -> pd.DataFrame:
    """(equipment_id, window_start_ms) the job flagged anomalous; empty while there is no anomalies table."""
    empty = pd.DataFrame({"equipment_id": pd.Series(dtype=str), "window_start_ms": pd.Series(dtype="int64")})
    exists = client.command(f"EXISTS TABLE {settings.clickhouse.database}.{ANOMALIES_TABLE}")
    if not int(exists):
        return empty
    columns = {str(r[0]) for r in client.query(f"DESCRIBE TABLE {ANOMALIES_TABLE}").result_rows}
    if not {"equipment_id", "window_start"} <= columns:
        raise TrainingDataError(
            f"table {ANOMALIES_TABLE} lacks equipment_id/window_start (has {sorted(columns)}); "
            "cannot tell which windows were flagged"
        )
    where, params = _range_params(since_ms, until_ms)
    if ANOMALY_FLAG_COLUMN in columns:
        where += f" AND {ANOMALY_FLAG_COLUMN} != 0"
    frame = client.query_df(
        f"SELECT DISTINCT equipment_id, toUnixTimestamp64Milli(window_start) AS window_start_ms "
        f"FROM {ANOMALIES_TABLE} WHERE {where}",
        parameters=params,
    )
    return frame if len(frame) else empty


def _labels_frame(labels: Sequence[FaultLabel], equipment_type: str) -> pd.DataFrame:
    rows = [(lb.machine, lb.start_ms, lb.end_ms) for lb in labels if lb.equipment_type == equipment_type]
    return pd.DataFrame(rows, columns=["equipment_id", "fault_start_ms", "fault_end_ms"]).astype(
        {"equipment_id": str, "fault_start_ms": "int64", "fault_end_ms": "int64"}
    )


def _window_ms(series: pd.Series) -> np.ndarray:
    """Window starts (any datetime dtype from query_df, or integers already in epoch ms) as epoch ms."""
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    ts = pd.to_datetime(series, utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)


def fault_mask(
    index: pd.DataFrame, window_ms: np.ndarray, labels: pd.DataFrame, window_size_ms: int, history: int
) -> np.ndarray:
    """Rows whose window (or, through rolling features, one of the ``history - 1`` before it) overlaps a fault.

    Samples of a window lie in ``[start, start + size)``; a fault affects ``[fault_start, fault_end)``.
    Vectorised as a join on the machine (rows x that machine's faults), not a loop over rows.
    """
    mask = np.zeros(len(index), dtype=bool)
    if labels.empty or not len(index):
        return mask
    rows = pd.DataFrame(
        {"equipment_id": index["equipment_id"].astype(str).to_numpy(), "ws": window_ms, "row": np.arange(len(index))}
    )
    joined = rows.merge(labels, on="equipment_id", how="inner")
    reach_ms = max(history, 1) * window_size_ms  # this window plus the history-1 windows after a fault
    starts_before_end = joined["fault_start_ms"] < joined["ws"] + window_size_ms
    ends_after_start = joined["fault_end_ms"] + reach_ms - window_size_ms > joined["ws"]
    hit = starts_before_end & ends_after_start
    mask[joined.loc[hit, "row"].to_numpy()] = True
    return mask


def _time_split(window_ms: np.ndarray, fractions: tuple[float, float]) -> _Split:
    """Boolean masks over rows: oldest windows fit, the next slice calibrates, the newest tests."""
    times = np.unique(window_ms)
    cal_at = times[min(len(times) - 1, int(len(times) * (1 - fractions[0] - fractions[1])))]
    test_at = times[min(len(times) - 1, int(len(times) * (1 - fractions[1])))]
    return _Split(window_ms < cal_at, (window_ms >= cal_at) & (window_ms < test_at), window_ms >= test_at)


def train(
    settings: Settings,
    since: datetime | str | int,
    until: datetime | str | int,
    equipment_types: Sequence[str] | None = None,
    detectors: Sequence[str] | None = None,
    *,
    promote: bool = False,
    history: int = DEFAULT_HISTORY,
    quantile: float | None = None,
    calibration_fraction: float = 0.15,
    test_fraction: float = 0.15,
    registry: ModelRegistry | None = None,
    console: Console | None = None,
) -> list[ModelVersion]:
    """Train, calibrate, export and register a model per (equipment type, detector); returns the new versions.

    ``since``/``until``: datetimes (naive = UTC), ISO strings or epoch ms; ``until`` is exclusive.
    A new version is live only with ``promote=True`` or when it is the first of its (type, detector).
    Thresholds: the ``quantile`` of held-out normal scores when given, else the level a healthy window passes
    ``settings.scoring.alarm_rate_per_machine_hour`` times an hour (see :func:`train_type`).
    """
    detectors = tuple(detectors) if detectors else job_detectors()
    unknown = [d for d in detectors if d not in trainable_detectors()]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; choose from {sorted(trainable_detectors())}")
    if quantile is not None and not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not (calibration_fraction > 0 and test_fraction > 0 and calibration_fraction + test_fraction < 0.8):
        raise ValueError("calibration_fraction and test_fraction must be > 0 and leave >= 20% of rows to fit")
    since_ms, until_ms = _to_ms(since), _to_ms(until)
    if until_ms <= since_ms:
        raise ValueError(f"until ({_iso(until_ms)}) must be after since ({_iso(since_ms)})")
    console = console or Console(stderr=True)
    registry = registry or ModelRegistry(default_root(settings))
    size_ms = settings.window.size_ms
    client = make_client(settings.clickhouse, "admin")
    try:
        types = list(equipment_types) if equipment_types else _equipment_types(client, since_ms, until_ms)
        if not types:
            raise _no_data_error(client, settings, since_ms, until_ms, "")
        labels = read_ground_truth(settings.ground_truth_path)
        flagged = _flagged_windows(client, settings, since_ms, until_ms)
        where, params = _range_params(since_ms, until_ms)
        columns = ", ".join(["equipment_id", "sensor", "window_start", *FEATURE_STATS])
        out: list[ModelVersion] = []
        progress = Progress(
            TextColumn("[bold]train[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            task = progress.add_task("equipment types", total=len(types))
            for etype in types:
                progress.update(task, description=etype)
                started = time.perf_counter()
                frame = client.query_df(
                    f"SELECT {columns} FROM {WINDOW_STATS_VIEW} WHERE equipment_type = {{etype:String}} AND {where}",
                    parameters={**params, "etype": etype},
                )
                if frame.empty:
                    raise _no_data_error(client, settings, since_ms, until_ms, f" for equipment type {etype!r}")
                out += train_type(
                    etype,
                    frame,
                    labels,
                    registry,
                    detectors=detectors,
                    flagged=flagged,
                    size_ms=size_ms,
                    history=history,
                    quantile=quantile or 0.995,
                    alarm_rate=None if quantile is not None else settings.scoring.alarm_rate_per_machine_hour,
                    fractions=(calibration_fraction, test_fraction),
                    promote=promote,
                    source=f"{settings.clickhouse.database}.{WINDOW_STATS_VIEW}",
                    since_ms=since_ms,
                    until_ms=until_ms,
                )
                new = ", ".join(f"{v.detector} {v.version}" for v in out[-len(detectors) :])
                console.log(f"{etype}: {len(frame):,} stat rows -> {new} in {time.perf_counter() - started:.1f} s")
                progress.advance(task)
        return out
    finally:
        client.close()


def train_type(
    etype: str,
    frame: pd.DataFrame,
    labels: Sequence[FaultLabel],
    registry: ModelRegistry,
    *,
    detectors: Sequence[str] | None = None,
    flagged: pd.DataFrame | None = None,
    size_ms: int = 5000,
    history: int = DEFAULT_HISTORY,
    quantile: float = 0.995,
    alarm_rate: float | None = None,
    fractions: tuple[float, float] = (0.15, 0.15),
    promote: bool = False,
    source: str = "window statistics frame",
    since_ms: int | None = None,
    until_ms: int | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> list[ModelVersion]:
    """Fit, calibrate and register one equipment type's models from a frame of window statistics.

    The frame-based core of :func:`train` (which reads the frame from ClickHouse); ``vigil evaluate
    --dataset sim`` calls it on simulated windows so the benchmark trains exactly as ``vigil train`` does.
    ``frame``: one row per (equipment_id, sensor, window_start) with the stats columns; ``window_start``
    as datetimes or epoch ms. ``flagged``: (equipment_id, window_start_ms) the job flagged (excluded).
    ``source``/``since_ms``/``until_ms`` only go into the metadata and messages (default: the frame's range);
    ``extra_metadata`` is merged into every version's metadata (e.g. how a simulated history was made).
    ``alarm_rate``: the threshold is the score a healthy machine's window passes this often per hour (a
    peaks-over-threshold tail of the normal windows' scores); None: the ``quantile`` of the calibration
    slice's scores.
    """
    x, names, index = window_features(frame, history=history)
    window_ms = _window_ms(index["window_start"])
    if since_ms is None:
        since_ms = int(window_ms.min()) if len(window_ms) else 0
    if until_ms is None:
        until_ms = int(window_ms.max()) + size_ms if len(window_ms) else 0
    faulty = fault_mask(index, window_ms, _labels_frame(labels, etype), size_ms, history)
    anomalous = np.zeros(len(index), dtype=bool)
    if flagged is not None and len(flagged):
        keys = pd.MultiIndex.from_arrays([index["equipment_id"].astype(str), window_ms])
        anomalous = keys.isin(pd.MultiIndex.from_frame(flagged[["equipment_id", "window_start_ms"]]))
    incomplete = ~index["complete"].to_numpy()
    normal = ~(faulty | anomalous | incomplete)
    n_normal = int(normal.sum())
    if n_normal < MIN_NORMAL_WINDOWS:
        raise TrainingDataError(
            f"{etype}: only {n_normal} normal windows between {_iso(since_ms)} and {_iso(until_ms)} "
            f"({len(index)} windows, {int(faulty.sum())} in labelled faults, {int(anomalous.sum())} flagged, "
            f"{int(incomplete.sum())} with a missing sensor); need >= {MIN_NORMAL_WINDOWS}: widen the range"
        )
    xn, wn = x[normal], window_ms[normal]
    split = _time_split(wn, fractions)
    if min(int(split.fit.sum()), int(split.calibration.sum()), int(split.test.sum())) < 3:
        raise TrainingDataError(f"{etype}: too few distinct windows to split fit/calibration/test; widen the range")
    data_hash = hashlib.sha256(np.ascontiguousarray(xn).tobytes()).hexdigest()
    x_fault = x[faulty & ~incomplete]
    common: dict[str, Any] = {
        "feature_names": names,
        "n_features": len(names),
        "sensors": sorted(frame["sensor"].astype(str).unique()),
        "stats": list(FEATURE_STATS),
        "history": history,
        "window_size_ms": size_ms,
        "training_range": {
            "since": _iso(since_ms),
            "until": _iso(until_ms),
            "first_window": _iso(int(wn.min())),
            "last_window": _iso(int(wn.max())),
        },
        "source": source,
        "rows": {
            "stat_rows": len(frame),
            "windows": len(index),
            "machines": int(index["equipment_id"].nunique()),
            "excluded_fault": int(faulty.sum()),
            "excluded_flagged": int(anomalous.sum()),
            "excluded_incomplete": int(incomplete.sum()),
            "normal": n_normal,
            "fit": int(split.fit.sum()),
            "calibration": int(split.calibration.sum()),
            "test": int(split.test.sum()),
        },
        # sha256 of the float32 C-order bytes of the normal feature matrix (fit + calibration + test rows).
        "data_sha256": data_hash,
        "versions": _versions(),
        **(extra_metadata or {}),
    }
    versions = []
    for name in detectors or job_detectors():
        started = time.perf_counter()
        detector = trainable_detectors()[name].build()
        assert isinstance(detector, BatchDetector)
        detector.fit(xn[split.fit], names)
        if alarm_rate is None:
            threshold = detector.calibrate(xn[split.calibration], quantile)
            method: dict[str, Any] = {
                "method": "quantile",
                "quantile": quantile,
                "slice": "calibration (normal windows after the fit slice, not seen by fit)",
                "rows": int(split.calibration.sum()),
            }
        else:
            # Every normal window, the fit slice included: the tail is made of rare events (a big load change,
            # a start), and a later slice alone holds too few of them to say how far they reach.
            level = detector.calibrate_rate(xn, alarm_rate * size_ms / MS_PER_HOUR)
            threshold = level.level
            method = {
                **level.to_dict(),
                "alarm_rate_per_machine_hour": alarm_rate,
                "slice": "every normal window (fit + calibration + test)",
            }
        fit_s = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "alarm_rate_fit": float(np.mean(detector.score(xn[split.fit]) > threshold)),
            "alarm_rate_calibration": float(np.mean(detector.score(xn[split.calibration]) > threshold)),
            "alarm_rate_test": float(np.mean(detector.score(xn[split.test]) > threshold)),
            "fit_seconds": round(fit_s, 3),
        }
        if len(x_fault):  # how much of the labelled fault time it would flag (a sanity signal, not the scorecard)
            metrics["alarm_rate_fault_windows"] = float(np.mean(detector.score(x_fault) > threshold))
        test_scores = detector.score(xn[split.test])
        metrics["test_score_p50"] = float(np.quantile(test_scores, 0.5))
        metrics["test_score_p99"] = float(np.quantile(test_scores, 0.99))
        metadata = {
            **common,
            "detector_params": {k: v for k, v in vars(detector).items() if isinstance(v, (int, float, str, bool))},
            "threshold": threshold,
            "threshold_method": method,
            "metrics": metrics,
        }
        versions.append(registry.register(etype, name, detector.to_onnx(), metadata, promote=promote))
    return versions
