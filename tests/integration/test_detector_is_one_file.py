"""A new detector is one file: dropped into detectors/, it is trained, scored by the Flink job, stored in
ClickHouse and evaluated, and no other file of the project is edited.

The example detector below is written into the package for this module only (and removed afterwards); the
registry finds it because it is there, exactly as it finds the built-in ones.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

import detectors
from connectors.clickhouse import anomalies_to_arrow, insert_rows, make_client
from detectors import all_detectors, benchmark_detectors, job_detectors, score_names
from jobs.anomaly_scoring import JOB
from onnx_models.registry import ModelRegistry
from operations.evaluate.skab import evaluate_skab, skab_detectors
from operations.stack.clickhouse.server import stop_clickhouse_server_process
from operations.training.detectors import train_type, trainable_detectors
from tests.conftest import free_port, start_clickhouse_with_schema
from tests.unit.skab_files import write_skab_file
from tests.unit.test_anomaly_scoring_sql import (
    DEAD_AFTER_MS,
    HISTORY,
    SIZE_MS,
    SPIKE_AT,
    T0,
    file_overrides,
    pump_series,
    pump_stats_frame,
    read_json_dir,
    rules_config,
    table_env,
    window_stats,
)
from vigil.settings import ClickHouseSettings, ScoringSettings, Settings, WindowSettings

pytestmark = pytest.mark.integration

NAME = "example_max_z"
EXAMPLE = '''"""Example: the largest |z| of any feature against its training mean and spread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detectors.base import BatchDetector, register


@register(in_job=True, order=90)
class ExampleMaxZ(BatchDetector):
    name = "example_max_z"

    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:
        x = np.asarray(features, dtype=np.float64)
        self.feature_names = list(feature_names)
        self.mean = x.mean(axis=0)
        self.scale = np.maximum(x.std(axis=0), 1e-6)
        self.calibrate(x, 0.999)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.abs((np.asarray(features, dtype=np.float64) - self.mean) / self.scale).max(axis=1)

    def to_onnx(self) -> bytes:
        d = len(self.feature_names)
        inits = [
            numpy_helper.from_array(self.mean.astype(np.float32), "mean"),
            numpy_helper.from_array((1.0 / self.scale).astype(np.float32), "inv_scale"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
        nodes = [
            helper.make_node("Sub", ["X", "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
            helper.make_node("Abs", ["z"], ["abs_z"]),
            helper.make_node("ReduceMax", ["abs_z", "axis1"], ["score"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes, self.name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", d])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])], initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="vigil")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model.SerializeToString()
'''


def _forget_example() -> None:
    sys.modules.pop(f"detectors.{NAME}", None)
    all_detectors.cache_clear()


@pytest.fixture(scope="module")
def example_file() -> Iterator[Path]:
    path = Path(detectors.__file__).parent / f"{NAME}.py"
    assert not path.exists(), f"{path} is left over from an interrupted run: delete it"
    path.write_text(EXAMPLE)
    _forget_example()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        _forget_example()


@pytest.fixture(scope="module")
def trained_and_scored(example_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """The example trained like `vigil train` does, then the scoring job (same templates and UDF) over a file."""
    tmp = tmp_path_factory.mktemp("one-file-detector")
    settings = Settings(
        data_dir=tmp,
        window=WindowSettings(size_ms=SIZE_MS),
        scoring=ScoringSettings(history_windows=HISTORY, dead_after_ms=DEAD_AFTER_MS),
    )
    registry = ModelRegistry(settings.models_dir)
    frame = pump_stats_frame(pump_series(np.random.default_rng(5), n=400))
    versions = train_type("pump", frame, [], registry, detectors=[NAME], size_ms=SIZE_MS, history=HISTORY)

    records, _ = window_stats(np.random.default_rng(11))
    source, out, dead_letters = tmp / "in", tmp / "out", tmp / "dead-letters"
    source.mkdir()
    (source / "window_stats.json").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    job = JOB.build(table_env(tmp / "jars"), settings, rules_config(), **file_overrides(source, out, dead_letters))
    job.execute().wait()
    lines = [
        line
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
        for line in p.read_bytes().splitlines()
        if line.strip()
    ]
    return settings, versions, read_json_dir(out), lines


def test_the_registry_finds_the_file_and_only_while_it_is_there(example_file: Path) -> None:
    assert NAME in all_detectors() and all_detectors()[NAME].kind == "batch"
    assert job_detectors()[-1] == NAME  # order 90: after the built-in models
    assert NAME in trainable_detectors() and NAME in skab_detectors() and NAME in benchmark_detectors("sim")
    assert NAME in score_names()
    example_file.rename(example_file.with_suffix(".off"))
    try:
        _forget_example()
        assert NAME not in all_detectors() and NAME not in job_detectors()
    finally:
        example_file.with_suffix(".off").rename(example_file)
        _forget_example()
    assert NAME in job_detectors()


def test_it_is_trained_and_registered_like_any_model(trained_and_scored) -> None:
    settings, versions, _, _ = trained_and_scored
    assert [(v.equipment_type, v.detector, v.version) for v in versions] == [("pump", NAME, "v0001")]
    assert ModelRegistry(settings.models_dir).live_version("pump", NAME) == "v0001"
    assert versions[0].metadata["metrics"]["alarm_rate_test"] < 0.05


def test_the_flink_job_scores_it_and_it_fires(trained_and_scored) -> None:
    _, _, got, _ = trained_and_scored
    pump = got[(got.equipment_id == "pump-0001") & (got.kind == "window")].copy()
    pump["window"] = (pump.window_start_ms - T0) // SIZE_MS
    pump = pump.set_index("window").sort_index()
    scored = pump[NAME].notna()
    assert scored.sum() >= len(pump) - HISTORY  # every complete hop after the history fills
    assert (pump.loc[scored, "model_versions"] == f"{NAME}=v0001").all()
    spike = pump.loc[SPIKE_AT]
    assert spike[NAME] > 1.0 and NAME in spike["detectors"]  # the flow spike is far outside its training spread
    assert got.loc[got.equipment_type != "pump", NAME].isna().all()  # no model for the other types


def test_clickhouse_stores_its_score_in_the_verdicts_map(trained_and_scored, tmp_path: Path) -> None:
    _, _, got, lines = trained_and_scored
    settings = Settings(data_dir=tmp_path, clickhouse=ClickHouseSettings(port=free_port(), database="onefile"))
    proc = start_clickhouse_with_schema(settings, tmp_path / "clickhouse.log")
    try:
        table, malformed = anomalies_to_arrow(lines, score_names())  # what the ClickHouse sink does with a batch
        assert malformed == []
        with contextlib.closing(make_client(settings.clickhouse, "admin")) as client:
            assert insert_rows(client, settings.clickhouse.anomalies_table, table) == len(lines)
            stored = client.query(
                f"SELECT equipment_id, toUnixTimestamp64Milli(window_start), scores['{NAME}'] "
                f"FROM {settings.clickhouse.anomalies_view} WHERE mapContains(scores, '{NAME}')"
            ).result_rows
    finally:
        stop_clickhouse_server_process(proc)
    want = got[got[NAME].notna()]
    assert len(stored) == len(want) > 0
    by_key = {(e, w): s for e, w, s in stored}
    for e, w, s in zip(want.equipment_id, want.window_start_ms, want[NAME], strict=True):
        assert by_key[(e, w)] == pytest.approx(s)


def test_vigil_evaluate_scores_it_on_a_skab_folder(example_file: Path, tmp_path: Path) -> None:
    write_skab_file(tmp_path / "valve1" / "0.csv", 520, 450, seed=1)  # 400 training rows, as SKAB's protocol has it
    result = evaluate_skab(tmp_path, NAME)
    assert result.detector == NAME
    assert result.pooled.tp > 0 and result.pooled.f1 > 0.5  # a 25-sigma step is what a max-|z| detector sees
