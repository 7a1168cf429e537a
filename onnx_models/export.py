"""The end of every ONNX export: the model around a detector's graph, the metadata the registry and the
scoring UDF read back (detector, feature order, threshold, ...), and onnx's own validity check.

onnx is imported on use: processes that only name or score detectors never load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

IR_VERSION = 8  # what the pinned onnxruntime reads


def model_bytes(
    model: onnx.ModelProto,
    detector: str,
    feature_names: Sequence[str],
    threshold: float,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """Stamp a finished model with its metadata, check it and serialise it."""
    import onnx  # heavy (~50 MiB): only a training process exports

    onnx.helper.set_model_props(
        model,
        {"detector": detector, "feature_names": ",".join(feature_names), "threshold": repr(threshold), **(extra or {})},
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def graph_bytes(
    graph: onnx.GraphProto,
    opsets: Mapping[str, int],
    detector: str,
    feature_names: Sequence[str],
    threshold: float,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """A detector's graph as a model (``opsets``: domain -> version), stamped, checked and serialised."""
    import onnx

    helper = onnx.helper
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], producer_name="vigil"
    )
    model.ir_version = IR_VERSION
    return model_bytes(model, detector, feature_names, threshold, extra)
