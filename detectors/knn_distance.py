"""k-nearest-neighbour distance to remembered normal rows: a model-free "have we seen a state like this?".

Why: PCA assumes normal data lies near one linear subspace; a pump that runs in a few distinct regimes
(valve positions, loads) breaks that, while the distance to the nearest normal rows does not care how
many regimes there are. Rows are standardised with the training mean/std (a constant column contributes
0), the score is ``sqrt(mean of the k smallest squared distances) / limit`` where ``limit`` is the
``limit_quantile`` of the same statistic on the training rows computed leave-one-out (a row is never its
own neighbour), so 1.0 means "as far out as the 1 % most unusual normal rows".

Scoring runs through onnxruntime: distances are |z|^2 - 2 z.m + |m|^2 (one MatMul against the memory),
then TopK (smallest) and a mean; built from the fitted parameters with onnx.helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from detectors.base import BatchDetector, register
from onnx_models.export import graph_bytes
from onnx_models.runtime import OnnxModel, check_width

ONNX_OPSET = 17


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows of ``a`` and rows of ``b`` (clipped at 0 against rounding)."""
    d2 = np.einsum("ij,ij->i", a, a)[:, None] - 2.0 * a @ b.T + np.einsum("ij,ij->i", b, b)[None, :]
    return np.maximum(d2, 0.0)


@register()
class KnnDistance(BatchDetector):
    """Standardise -> mean squared distance to the k nearest of up to ``max_memory`` normal rows -> / limit."""

    name = "knn_distance"

    def __init__(self, k: int = 5, max_memory: int = 2000, limit_quantile: float = 0.99, threads: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_memory <= k:
            raise ValueError(f"max_memory must exceed k={k}, got {max_memory}")
        self.k = k
        self.max_memory = max_memory
        self.limit_quantile = limit_quantile
        self.threads = threads
        self.limit = 1.0
        self.training_scores = np.zeros(0)  # leave-one-out scores of the memory rows (already / limit)
        self._mean = np.zeros(0)
        self._inv_scale = np.zeros(0)
        self._memory = np.zeros((0, 0))
        self._model: OnnxModel | None = None

    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:

        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(feature_names) or len(x) <= self.k:
            raise ValueError(
                f"{self.name}: need > k={self.k} rows x {len(feature_names)} features to fit, got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name}: training features contain NaN/inf; clean or impute them first")
        self.feature_names = list(feature_names)
        self._mean = x.mean(axis=0)
        std = x.std(axis=0)
        self._inv_scale = np.where(std > 1e-12, 1.0 / np.where(std > 1e-12, std, 1.0), 0.0)
        if len(x) > self.max_memory:  # evenly spaced in time: keeps every regime of the training period
            x = x[np.linspace(0, len(x) - 1, self.max_memory).round().astype(int)]
        self._memory = (x - self._mean) * self._inv_scale
        d2 = _sq_dists(self._memory, self._memory)
        np.fill_diagonal(d2, np.inf)  # leave-one-out: a row is not its own neighbour
        loo = np.sqrt(np.partition(d2, self.k - 1, axis=1)[:, : self.k].mean(axis=1))
        self.limit = max(float(np.quantile(loo, self.limit_quantile)), 1e-12)
        self.training_scores = loo / self.limit
        self.threshold = 1.0
        self._model = OnnxModel(self.to_onnx(), threads=self.threads)
        return self

    def score_numpy(self, features: np.ndarray) -> np.ndarray:
        """Reference float64 implementation (tests compare the ONNX path with it)."""

        check_width(self.name, self.feature_names, features)
        z = (np.asarray(features, dtype=np.float64) - self._mean) * self._inv_scale
        d2 = _sq_dists(z, self._memory)
        return np.sqrt(np.partition(d2, self.k - 1, axis=1)[:, : self.k].mean(axis=1)) / self.limit

    def score(self, features: np.ndarray) -> np.ndarray:

        check_width(self.name, self.feature_names, features)
        assert self._model is not None
        out = self._model.run(features)["score"].astype(np.float64)
        return np.nan_to_num(out, nan=np.inf)

    def to_onnx(self) -> bytes:
        """The fitted scaler, memory and k-NN maths as ONNX: input X float32 [N, d]; output score [N]."""
        # heavy dependency, imported on use (see detectors.base)
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        if not self.feature_names:
            raise RuntimeError(f"{self.name}: fit() before to_onnx()")
        d = len(self.feature_names)

        def const(name: str, value: np.ndarray) -> onnx.TensorProto:
            return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

        inits = [
            const("mean", self._mean),
            const("inv_scale", self._inv_scale),
            const("memory_t_x2", 2.0 * self._memory.T),  # [d, m]
            const("memory_sq", np.einsum("ij,ij->i", self._memory, self._memory)),  # [m]
            const("zero", np.array(0.0)),
            const("inv_limit", np.array(1.0 / self.limit)),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([self.k], dtype=np.int64), "k"),
        ]
        nodes = [
            helper.make_node("Sub", ["X", "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
            helper.make_node("Mul", ["z", "z"], ["z2"]),
            helper.make_node("ReduceSum", ["z2", "axis1"], ["z_sq"], keepdims=1),  # [N, 1]
            helper.make_node("MatMul", ["z", "memory_t_x2"], ["cross2"]),  # [N, m]
            helper.make_node("Sub", ["z_sq", "cross2"], ["partial"]),
            helper.make_node("Add", ["partial", "memory_sq"], ["d2_raw"]),
            helper.make_node("Max", ["d2_raw", "zero"], ["d2"]),
            helper.make_node("TopK", ["d2", "k"], ["nearest", "nearest_idx"], axis=1, largest=0, sorted=0),
            # ReduceMean takes axes as an attribute up to opset 17 (ReduceSum as an input).
            helper.make_node("ReduceMean", ["nearest"], ["mean_d2"], axes=[1], keepdims=0),
            helper.make_node("Sqrt", ["mean_d2"], ["distance"]),
            helper.make_node("Mul", ["distance", "inv_limit"], ["score"]),
        ]
        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", d])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
            initializer=inits,
        )
        return graph_bytes(graph, {"": ONNX_OPSET}, self.name, self.feature_names, self.threshold, {"k": str(self.k)})
