"""Model registry: versions, live pointer (atomic), promote/rollback, refusal of mismatched features; features."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import orjson
import pandas as pd
import pytest

from detectors.pca_t2q import PcaT2Q
from onnx_models.features import check_feature_names, feature_names_for, sensors_from_feature_names, window_features
from onnx_models.registry import (
    METADATA_FILE,
    POINTER_FILE,
    FeatureMismatchError,
    ModelRegistry,
    RegistryError,
)

NAMES = ["a.avg", "a.stddev", "b.avg", "b.stddev"]


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    x = np.random.default_rng(0).normal(size=(200, len(NAMES)))
    return PcaT2Q().fit(x, NAMES).to_onnx()


def _meta(threshold: float = 1.0, names: list[str] | None = None) -> dict:
    return {
        "feature_names": names or NAMES,
        "threshold": threshold,
        "threshold_method": {"method": "quantile", "quantile": 0.99},
        "data_sha256": "0" * 64,
    }


def test_register_list_promote_rollback(tmp_path, model_bytes: bytes) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.list() == [] and reg.live("pump", "pca_t2q") is None
    v1 = reg.register("pump", "pca_t2q", model_bytes, _meta(1.0))
    assert v1.version == "v0001" and v1.live  # the first version of a (type, detector) goes live
    v2 = reg.register("pump", "pca_t2q", model_bytes, _meta(2.0))
    assert v2.version == "v0002" and not v2.live
    assert reg.live("pump", "pca_t2q").version == "v0001"
    v3 = reg.register("pump", "pca_t2q", model_bytes, _meta(3.0), promote=True)
    assert v3.live and reg.live("pump", "pca_t2q").threshold == 3.0
    reg.register("fan", "pca_t2q", model_bytes, _meta())

    listed = [(v.equipment_type, v.detector, v.version, v.live) for v in reg.list()]
    assert listed == [
        ("fan", "pca_t2q", "v0001", True),
        ("pump", "pca_t2q", "v0001", False),
        ("pump", "pca_t2q", "v0002", False),
        ("pump", "pca_t2q", "v0003", True),
    ]
    assert [v.version for v in reg.list("pump")] == ["v0001", "v0002", "v0003"]

    assert reg.promote("pump", "pca_t2q", 2).version == "v0002"  # int or "v0002"
    assert reg.history("pump", "pca_t2q") == ["v0001", "v0003", "v0002"]
    assert reg.rollback("pump", "pca_t2q").version == "v0003"
    assert reg.live("pump", "pca_t2q").version == "v0003"
    assert reg.rollback("pump", "pca_t2q").version == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback("pump", "pca_t2q")
    with pytest.raises(RegistryError, match="v0009.*versions: v0001, v0002, v0003"):
        reg.promote("pump", "pca_t2q", "v0009")
    with pytest.raises(RegistryError, match="not a valid name"):
        reg.register("../evil", "pca_t2q", model_bytes, _meta())


def test_metadata_complete_and_model_hash(tmp_path, model_bytes: bytes) -> None:
    reg = ModelRegistry(tmp_path)
    v = reg.register("pump", "pca_t2q", model_bytes, _meta(1.5))
    meta = orjson.loads((v.path / METADATA_FILE).read_bytes())
    for key in (
        "feature_names",
        "threshold",
        "threshold_method",
        "data_sha256",
        "version",
        "detector",
        "equipment_type",
        "created_at",
        "model_sha256",
    ):
        assert key in meta, key
    assert meta["version"] == "v0001" and meta["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert v.model_path.read_bytes() == model_bytes
    with pytest.raises(ValueError, match="lacks \\['threshold'"):
        reg.register("pump", "pca_t2q", model_bytes, {"feature_names": NAMES, "threshold_method": "x"})
    assert [x.version for x in reg.list()] == ["v0001"]  # nothing half-registered
    assert not [p for p in v.path.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_pointer_written_atomically(tmp_path, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register("pump", "pca_t2q", model_bytes, _meta())
    reg.register("pump", "pca_t2q", model_bytes, _meta())
    pointer = tmp_path / "pump" / "pca_t2q" / POINTER_FILE
    before = pointer.read_bytes()

    def crash(src, dst):  # the process dies between writing the temp file and renaming it
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        reg.promote("pump", "pca_t2q", "v0002")
    monkeypatch.undo()
    assert pointer.read_bytes() == before  # old pointer intact, never a half-written file
    assert reg.live("pump", "pca_t2q").version == "v0001"
    assert [p.name for p in pointer.parent.iterdir() if p.name.endswith(".tmp")] == []
    reg.promote("pump", "pca_t2q", "v0002")
    assert orjson.loads(pointer.read_bytes())["version"] == "v0002"


def test_load_scores_and_refuses_mismatched_features(tmp_path, model_bytes: bytes) -> None:
    reg = ModelRegistry(tmp_path)
    reg.register("pump", "pca_t2q", model_bytes, _meta())
    loaded = reg.load("pump", "pca_t2q", expected_features=NAMES)
    assert loaded.feature_names == NAMES and loaded.threshold == 1.0
    out = loaded.score(np.zeros((3, len(NAMES)), dtype=np.float32))
    assert out["score"].shape == (3,)

    renamed = ["a.avg", "a.stddev", "c.avg", "b.stddev"]
    with pytest.raises(FeatureMismatchError, match="column 2: .* has 'b.avg', the features have 'c.avg'"):
        reg.load("pump", "pca_t2q", expected_features=renamed)
    with pytest.raises(FeatureMismatchError, match="first extra column in the features: 'c.max'"):
        reg.load("pump", "pca_t2q", expected_features=[*NAMES, "c.max"])
    with pytest.raises(RegistryError, match="no live model for fan/pca_t2q"):
        reg.load("fan", "pca_t2q")
    # metadata that disagrees with the ONNX graph's input width is refused too
    reg.register("pump", "pca_t2q", model_bytes, _meta(names=NAMES[:3]), promote=True)
    with pytest.raises(FeatureMismatchError, match="ONNX input has 4 columns"):
        reg.load("pump", "pca_t2q")


def test_check_feature_names_equal_is_silent() -> None:
    check_feature_names(NAMES, list(NAMES))


def test_window_features_pivot_order_and_history() -> None:
    starts = pd.date_range("2024-01-01", periods=4, freq="5s", tz="UTC")
    rows = []
    for m, offset in (("m2", 100.0), ("m1", 0.0)):
        for i, ws in enumerate(starts):
            for sensor, base in (("temp", 10.0), ("flow", 1.0)):
                if m == "m1" and i == 3 and sensor == "flow":
                    continue  # a dropped sensor: that window is incomplete
                rows.append((m, sensor, ws, base + offset + i, 0.5, base - 1, base + 1, 10))
    frame = pd.DataFrame(
        rows, columns=["equipment_id", "sensor", "window_start", "avg", "stddev", "min", "max", "count"]
    ).sample(frac=1, random_state=1)  # order must not matter
    x, names, index = window_features(frame, history=2)
    assert names == feature_names_for(["temp", "flow"], history=2)
    assert names[:5] == ["flow.avg", "flow.stddev", "flow.min", "flow.max", "flow.count"]
    assert names[10:12] == ["flow.avg__mean2", "flow.stddev__mean2"]
    assert sensors_from_feature_names(names) == ["flow", "temp"]
    assert x.dtype == np.float32 and x.shape == (8, 40) and np.isfinite(x).all()
    assert index["equipment_id"].tolist() == ["m1"] * 4 + ["m2"] * 4
    assert index["complete"].tolist() == [True, True, True, False] + [True] * 4
    temp_avg = names.index("temp.avg")
    np.testing.assert_array_equal(x[:4, temp_avg], [10, 11, 12, 13])
    # causal history within a machine: m2's first row does not see m1's last row
    np.testing.assert_array_equal(x[4:, names.index("temp.avg__diff")], [0, 1, 1, 1])
    np.testing.assert_array_equal(x[:2, names.index("temp.avg__mean2")], [10, 10.5])
    # a model's own sensor list fixes the columns even when a sensor is absent from the batch
    x2, names2, _ = window_features(frame[frame["sensor"] == "temp"], sensors=["temp", "flow"], history=2)
    assert names2 == names and not x2[:, names.index("flow.avg")].any()


def test_a_model_file_is_loaded_only_with_its_recorded_hash(tmp_path, model_bytes: bytes) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.register("pump", "pca_t2q", model_bytes, _meta())
    version.model_path.write_bytes(model_bytes + b"\0")  # altered after registration
    with pytest.raises(RegistryError, match="does not match the sha256"):
        reg.load("pump", "pca_t2q")
    version.model_path.write_bytes(model_bytes)
    meta_path = version.model_path.parent / "metadata.json"
    meta = orjson.loads(meta_path.read_bytes())
    del meta["model_sha256"]  # a file dropped in beside the registry's: no hash, no trust
    meta_path.write_bytes(orjson.dumps(meta))
    with pytest.raises(RegistryError, match="no sha256 in its metadata"):
        reg.load("pump", "pca_t2q")
