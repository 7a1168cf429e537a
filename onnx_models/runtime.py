"""onnxruntime scoring shared by every ONNX detector: one InferenceSession per model per process.

Sessions are expensive to build (graph optimisation, allocations) and per-row calls are ~100x slower
than batches, so a model is loaded once per worker process (cached by the hash of its bytes) and
always called on a whole batch. onnxruntime itself is imported when the first session is built: a
process that only names detectors (the sinks) never loads it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

_SESSIONS: dict[tuple[str, int], ort.InferenceSession] = {}
_LOCK = threading.Lock()


def _session(model_bytes: bytes, threads: int) -> tuple[str, ort.InferenceSession]:
    digest = hashlib.sha256(model_bytes).hexdigest()
    key = (digest, threads)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            import onnxruntime as ort  # heavy (~100 MiB): loaded by the first process that scores

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            try:
                session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ValueError(f"cannot load ONNX model {digest[:12]}: {exc}; re-export it with to_onnx()") from exc
            _SESSIONS[key] = session
    return digest, session


class OnnxModel:
    """A loaded ONNX model with one float32 matrix input, scored batch-wise."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.digest, self.session = _session(model_bytes, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX model {self.digest[:12]} has {len(inputs)} inputs; expected one feature matrix")
        self.input_name = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        self.n_features: int | None = width if isinstance(width, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch (rows x features); returns every model output by name."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D (rows x features) matrix, got shape {x.shape}")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise ValueError(
                f"ONNX model {self.digest[:12]} expects {self.n_features} features per row, got {x.shape[1]}"
            )
        outputs = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, outputs, strict=True))


def check_width(detector_name: str, feature_names: list[str], features: np.ndarray) -> None:
    """Refuse a feature matrix that does not match what the detector was fitted on (clear error, no guessing)."""
    if not feature_names:
        raise RuntimeError(f"{detector_name}: not fitted; call fit() (or load a trained model) before scoring")
    if features.ndim != 2 or features.shape[1] != len(feature_names):
        raise ValueError(
            f"{detector_name}: expected a (rows x {len(feature_names)}) feature matrix with columns "
            f"{feature_names}, got shape {features.shape}; build features with the same feature function"
        )
