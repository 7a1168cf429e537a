"""SCORE_HOPS: the anomaly-scoring job's vectorised (pandas) UDF around :class:`udfs.scoring.WindowScorer`.

Flink hands it Arrow batches of machine hops (one row per machine and slide, the window statistics as
parallel arrays); it flattens them into one long frame with NumPy, scores the whole batch at once
(ONNX models per equipment type, one InferenceSession per model per worker) and returns one verdict
row per hop. Models are loaded in ``open`` and swapped when the registry's live pointer moves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from onnx_models.registry import ModelRegistry
from udfs.model_set import ModelSet
from udfs.scoring import ScoringConfig, WindowScorer

log = logging.getLogger(__name__)

NAME = "SCORE_HOPS"
_STRINGS = DataTypes.ARRAY(DataTypes.STRING())
RESULT_TYPE = DataTypes.ROW(
    [
        DataTypes.FIELD("emit", DataTypes.BOOLEAN()),
        DataTypes.FIELD("window_start_ms", DataTypes.BIGINT()),
        DataTypes.FIELD("window_end_ms", DataTypes.BIGINT()),
        DataTypes.FIELD("kind", DataTypes.STRING()),
        DataTypes.FIELD("is_anomaly", DataTypes.BOOLEAN()),
        DataTypes.FIELD("severity", DataTypes.STRING()),
        DataTypes.FIELD("score", DataTypes.DOUBLE()),
        # The scores map as two parallel arrays (the SQL builds MAP_FROM_ARRAYS): only what scored the window.
        DataTypes.FIELD("score_names", _STRINGS),
        DataTypes.FIELD("score_values", DataTypes.ARRAY(DataTypes.DOUBLE())),
        DataTypes.FIELD("detectors", _STRINGS),
        DataTypes.FIELD("rule_hits", _STRINGS),
        DataTypes.FIELD("top_sensors", _STRINGS),
        DataTypes.FIELD("dead_sensors", _STRINGS),
        DataTypes.FIELD("model_versions", DataTypes.STRING()),
        DataTypes.FIELD("summary", DataTypes.STRING()),
        DataTypes.FIELD("last_seen_ms", DataTypes.BIGINT()),
    ]
)
RESULT_FIELDS = tuple(RESULT_TYPE.field_names())


def _flat(column: pd.Series, dtype: object) -> np.ndarray:
    arrays = column.to_numpy()
    return np.concatenate(arrays).astype(dtype, copy=False) if len(arrays) else np.zeros(0, dtype=dtype)


def score_arrays(verdicts: pd.DataFrame, names: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per verdict, the names and values of the scores it has (NaN columns left out), without a row loop."""
    values = verdicts[list(names)].to_numpy(np.float64)
    if not len(values):
        return [], []
    present = np.isfinite(values)
    cuts = np.cumsum(present.sum(axis=1))[:-1]
    flat_names = np.broadcast_to(np.asarray(names, dtype=object), values.shape)[present]
    return np.split(flat_names, cuts), np.split(values[present], cuts)


def hops_to_frames(
    equipment_id: pd.Series,
    site: pd.Series,
    equipment_type: pd.Series,
    hop_end: pd.Series,
    sensors: pd.Series,
    window_starts: pd.Series,
    counts: pd.Series,
    avgs: pd.Series,
    stddevs: pd.Series,
    mins: pd.Series,
    maxs: pd.Series,
    rule_hits: pd.Series,
    zratios: pd.Series,
    window_ms: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The scorer's (long, current) frames from one Arrow batch of hops (vectorised, no per-row Python)."""
    lengths = sensors.map(len).to_numpy(np.int64)
    hop_end_ms = pd.to_datetime(hop_end).to_numpy().astype("datetime64[ms]").astype(np.int64)
    current = pd.DataFrame(
        {
            "equipment_id": equipment_id.to_numpy(),
            "site": site.to_numpy(),
            "equipment_type": equipment_type.to_numpy(),
            "window_start_ms": hop_end_ms - window_ms,
        }
    )
    zratio = _flat(zratios, np.float64)
    long = pd.DataFrame(
        {
            "group": np.repeat(np.arange(len(current)), lengths),
            "sensor": _flat(sensors, object),
            "window_start_ms": _flat(window_starts, np.int64),
            "count": _flat(counts, np.float64),
            "avg": _flat(avgs, np.float64),
            "stddev": _flat(stddevs, np.float64),
            "min": _flat(mins, np.float64),
            "max": _flat(maxs, np.float64),
            "rule_hits": _flat(rule_hits, object),
            "zratio": np.where(zratio >= 0, zratio, np.nan),
        }
    )
    return long, current


class ScoreHops(ScalarFunction):
    """Built on the client with plain values (it is pickled to the Python workers), set up in ``open``.

    ``expected_sensors``: each equipment type's sensors (from the rules config): a model must be trained
    on exactly these, and one that stops reporting is a dead sensor.
    """

    def __init__(
        self,
        expected_sensors: dict[str, list[str]],
        models_dir: str,
        window_ms: int,
        history_windows: int,
        dead_after_ms: int,
        critical_ratio: float,
        model_poll_s: float,
        onnx_threads: int,
        model_persistence_windows: int = 1,
    ) -> None:
        self.expected_sensors = expected_sensors
        self.models_dir = models_dir
        self.window_ms = window_ms
        self.history_windows = history_windows
        self.dead_after_ms = dead_after_ms
        self.critical_ratio = critical_ratio
        self.model_poll_s = model_poll_s
        self.onnx_threads = onnx_threads
        self.model_persistence_windows = model_persistence_windows
        self.scorer: WindowScorer | None = None

    def open(self, function_context: FunctionContext) -> None:
        expected = self.expected_sensors
        models = ModelSet(
            ModelRegistry(self.models_dir),
            expected.get,
            max_history=self.history_windows,
            window_ms=self.window_ms,
            poll_s=self.model_poll_s,
            threads=self.onnx_threads,
        )
        config = ScoringConfig(
            window_ms=self.window_ms,
            dead_after_ms=self.dead_after_ms,
            critical_ratio=self.critical_ratio,
            model_persistence=self.model_persistence_windows,
        )
        self.scorer = WindowScorer(expected, models, config)
        group = function_context.get_metric_group()
        self._windows = group.counter("vigil_windows_scored")
        self._anomalies = group.counter("vigil_anomalous_windows")
        self._swaps = 0
        self._refusals = 0
        self._swap_counter = group.counter("vigil_model_swaps")
        self._refusal_counter = group.counter("vigil_model_refusals")

    def eval(
        self,
        equipment_id,
        site,
        equipment_type,
        hop_end,
        sensors,
        window_starts,
        counts,
        avgs,
        stddevs,
        mins,
        maxs,
        rule_hits,
        zratios,
    ) -> pd.DataFrame:
        assert self.scorer is not None, "open() was not called"
        long, current = hops_to_frames(
            equipment_id,
            site,
            equipment_type,
            hop_end,
            sensors,
            window_starts,
            counts,
            avgs,
            stddevs,
            mins,
            maxs,
            rule_hits,
            zratios,
            self.window_ms,
        )
        verdicts = self.scorer.score(long, current)
        verdicts["window_start_ms"] = current["window_start_ms"].to_numpy()
        verdicts["window_end_ms"] = verdicts["window_start_ms"] + self.window_ms
        verdicts["score_names"], verdicts["score_values"] = score_arrays(verdicts, self.scorer.score_names)
        emitted = verdicts["emit"].to_numpy()
        self._windows.inc(int((emitted & (verdicts["kind"] == "window").to_numpy()).sum()))
        self._anomalies.inc(int((emitted & verdicts["is_anomaly"].to_numpy()).sum()))
        models = self.scorer.models
        if models is not None:
            self._swap_counter.inc(models.swaps - self._swaps)
            self._refusal_counter.inc(models.refusals - self._refusals)
            self._swaps, self._refusals = models.swaps, models.refusals
        return verdicts[list(RESULT_FIELDS)]


def score_hops_udf(
    expected_sensors: dict[str, list[str]],
    models_dir: Path,
    window_ms: int,
    history_windows: int,
    dead_after_ms: int,
    critical_ratio: float,
    model_poll_s: float,
    onnx_threads: int,
    model_persistence_windows: int = 1,
):
    """The registered function (pandas UDF: Flink calls it with Arrow batches)."""
    function = ScoreHops(
        expected_sensors,
        str(models_dir),
        window_ms,
        history_windows,
        dead_after_ms,
        critical_ratio,
        model_poll_s,
        onnx_threads,
        model_persistence_windows,
    )
    return udf(function, result_type=RESULT_TYPE, func_type="pandas")
