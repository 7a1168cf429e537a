"""`train()` end to end against a real (chDB-backed) ClickHouse: history in, versioned ONNX models out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from connectors.clickhouse import WINDOW_STATS_ARROW_SCHEMA, apply_schema, insert_window_stats, make_client
from detectors import job_detectors
from edge.simulator.equipment import EQUIPMENT_TYPES
from edge.simulator.ground_truth import FaultLabel, GroundTruthWriter
from onnx_models.features import window_features
from onnx_models.registry import ModelRegistry, default_root
from onnx_models.runtime import OnnxModel
from operations.stack.clickhouse.server import start_clickhouse_server_process, stop_clickhouse_server_process
from operations.training.detectors import TrainingDataError, train
from tests.conftest import free_port
from vigil.settings import ClickHouseSettings, Settings

pytestmark = pytest.mark.integration

# Recent (the table TTL drops old days), whole hour: a multiple of the 5-s window.
T0_MS = (int(time.time() * 1000) - 4 * 3600_000) // 3600_000 * 3600_000
HOURS = 2
MACHINES_PER_TYPE = 3
TYPES = ("pump", "fan")
SIZE_MS = 5000
FAULT = FaultLabel(
    machine="pump-002",
    site="site-1",
    equipment_type="pump",
    sensors=("vibration_rms", "bearing_temp"),
    fault_type="step",
    start_ms=T0_MS + 40 * 60_000,
    end_ms=T0_MS + 50 * 60_000,
    params={},
)
FAULT_WINDOWS = 120  # 10 minutes of 5-s windows


def _window_stats(etype: str, rng: np.random.Generator) -> pd.DataFrame:
    """Correlated healthy stats: every sensor follows the machine's load (a slow wave) plus noise."""
    spec = EQUIPMENT_TYPES[etype]
    n_win = HOURS * 3600_000 // SIZE_MS
    starts = T0_MS + np.arange(n_win, dtype=np.int64) * SIZE_MS
    frames = []
    for m in range(MACHINES_PER_TYPE):
        machine = f"{etype}-{m + 1:03d}"
        load = 0.6 + 0.3 * np.sin(2 * np.pi * np.arange(n_win) / 360 + m) + rng.normal(0, 0.02, n_win)
        for s in spec.sensors:
            avg = s.base + s.load_gain * load + rng.normal(0, s.noise / 3, n_win)
            if machine == FAULT.machine and s.name in FAULT.sensors:
                in_fault = (starts >= FAULT.start_ms) & (starts < FAULT.end_ms)
                avg = np.where(in_fault, avg + 0.5 * s.span, avg)
            sd = np.abs(rng.normal(s.noise, s.noise / 10, n_win))
            frames.append(
                pd.DataFrame(
                    {
                        "equipment_id": machine,
                        "site": "site-1",
                        "equipment_type": etype,
                        "sensor": s.name,
                        "unit": s.unit,
                        "window_start": starts,
                        "window_end": starts + SIZE_MS,
                        "count": 10,
                        "avg": avg,
                        "stddev": sd,
                        "min": avg - 2 * sd,
                        "max": avg + 2 * sd,
                        "emitted_at": starts + SIZE_MS,
                    }
                )
            )
    frame = pd.concat(frames, ignore_index=True)
    if etype == "fan":  # one sensor missing from one window: that window is incomplete, not trained on
        drop = (frame["equipment_id"] == "fan-001") & (frame["sensor"] == "speed") & (frame["window_start"] == T0_MS)
        frame = frame[~drop]
    return frame


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    arrays = []
    for field in WINDOW_STATS_ARROW_SCHEMA:
        col = frame[field.name]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(col.to_numpy(np.int64), pa.int64()).cast(field.type))
        elif pa.types.is_dictionary(field.type):
            arrays.append(pa.array(col.astype(str)).dictionary_encode().cast(field.type))
        else:
            arrays.append(pa.array(col.to_numpy()).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=WINDOW_STATS_ARROW_SCHEMA)


@pytest.fixture(scope="module")
def trained_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, pd.DataFrame]]]:
    data_dir: Path = tmp_path_factory.mktemp("vigil-train")
    settings = Settings(
        data_dir=data_dir,
        clickhouse=ClickHouseSettings(port=free_port(), username="tester", password="s3cret", database="vigil_train"),
    )
    proc = start_clickhouse_server_process(settings, settings.logs_dir / "clickhouse.log")
    try:
        client = make_client(settings.clickhouse, "admin")
        apply_schema(client, settings.clickhouse)
        rng = np.random.default_rng(3)
        frames = {etype: _window_stats(etype, rng) for etype in TYPES}
        for frame in frames.values():
            insert_window_stats(client, _to_arrow(frame))
        client.close()
        with GroundTruthWriter(settings.ground_truth_path) as writer:
            writer.write([FAULT])
        yield settings, frames
    finally:
        stop_clickhouse_server_process(proc)


def test_train_registers_excludes_faults_and_scores(trained_settings) -> None:
    settings, frames = trained_settings
    since, until = T0_MS, T0_MS + HOURS * 3600_000
    versions = train(settings, since, until)
    assert [(v.equipment_type, v.detector, v.version, v.live) for v in versions] == [
        (etype, det, "v0001", True) for etype in sorted(TYPES) for det in job_detectors()
    ]
    registry = ModelRegistry(default_root(settings))
    windows = MACHINES_PER_TYPE * HOURS * 720
    history = 5
    for v in versions:
        meta = v.metadata
        rows = meta["rows"]
        assert rows["windows"] == windows
        if v.equipment_type == "pump":
            # the fault's windows plus the history-1 windows whose rolling features still see it
            assert rows["excluded_fault"] == FAULT_WINDOWS + history - 1
            assert rows["excluded_incomplete"] == 0
        else:
            assert rows["excluded_fault"] == 0 and rows["excluded_incomplete"] == 1
        assert rows["fit"] + rows["calibration"] + rows["test"] == rows["normal"]
        assert rows["normal"] == windows - rows["excluded_fault"] - rows["excluded_incomplete"]
        method = meta["threshold_method"]
        # default: the level a healthy window passes alarm_rate_per_machine_hour times an hour
        assert method["alarm_rate_per_machine_hour"] == settings.scoring.alarm_rate_per_machine_hour
        assert method["method"] in ("pot", "quantile") and method["rows"] == rows["normal"]
        assert v.threshold == method["level"] and len(meta["data_sha256"]) == 64
        assert meta["feature_names"][0].endswith(".avg") and len(meta["feature_names"]) == meta["n_features"]
        assert registry.live(v.equipment_type, v.detector).version == "v0001"

        # the exported model scores through the UDFs' onnxruntime wrapper
        x, names, index = window_features(frames[v.equipment_type])  # window_start here: int epoch ms
        assert names == v.feature_names
        model = OnnxModel(v.model_path.read_bytes())
        ws = index["window_start"].to_numpy()
        in_fault = (index["equipment_id"] == FAULT.machine).to_numpy() & (ws >= FAULT.start_ms) & (ws < FAULT.end_ms)
        scores = model.run(x[index["complete"].to_numpy() & ~in_fault])["score"]
        assert np.mean(scores > v.threshold) < 0.05, (v.equipment_type, v.detector, np.mean(scores > v.threshold))
        outlier = x[100:101] * 3  # every statistic of every sensor three times its normal value
        assert model.run(outlier)["score"][0] > v.threshold, (v.equipment_type, v.detector)
        if v.equipment_type == "pump" and v.detector == "pca_t2q":  # the labelled step breaks the correlations
            assert meta["metrics"]["alarm_rate_fault_windows"] > 0.5, (v.detector, meta["metrics"])

    # a retrain is a new version, not live unless promoted
    again = train(settings, since, until, equipment_types=["fan"], detectors=("pca_t2q",))
    assert [(v.version, v.live) for v in again] == [("v0002", False)]
    assert registry.live("fan", "pca_t2q").version == "v0001"


def test_no_data_in_range_says_which_range(trained_settings) -> None:
    settings, _ = trained_settings
    with pytest.raises(TrainingDataError, match=r"2020-01-01T00:00:00.000\+00:00 and .*holds .* rows from .*vigil"):
        train(settings, "2020-01-01T00:00:00", "2020-01-02T00:00:00")
