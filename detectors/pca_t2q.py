"""PCA with Hotelling T2 and Q (squared prediction error): the classic multivariate process monitor.

T2 flags rows that are far out *within* the normal correlation structure (a big but consistent change);
Q flags rows that break that structure (sensors no longer moving together). Each is divided by its own
limit (a quantile on normal data) and the larger ratio is the score, so one threshold (1.0 = "either
statistic beyond its limit") drives the alarm while :meth:`PcaT2Q.score_parts` still tells which.
``features`` and ``statistic`` let another model reuse the maths on a subset of the columns and on Q alone
(:mod:`detectors.sensor_residual`).

The fitted scaler + projection are written as a small ONNX graph (built from the fitted parameters
with onnx.helper, which maps 1:1 to the maths) and scoring always runs through onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from detectors.base import BatchDetector, register
from onnx_models.export import graph_bytes
from onnx_models.runtime import OnnxModel, check_width

ONNX_OPSET = 17


def _smoothed_averages(names: list[str]) -> np.ndarray:
    """Each sensor's rolling mean of its window averages (``<sensor>.avg__mean<h>``), else its averages."""
    mask = np.array([".avg__mean" in n for n in names], dtype=bool)
    return mask if mask.any() else np.array([n.endswith(".avg") for n in names], dtype=bool)


# Which feature columns a model reads (the others get weight 0 in the same graph).
FEATURE_SETS = {"all": lambda names: np.ones(len(names), dtype=bool), "smoothed_avg": _smoothed_averages}
STATISTICS = ("t2q", "q")  # score = the larger of the T2 and Q ratios, or the Q ratio alone


@register(in_job=True, benchmark_params={"variance": 0.99}, order=10)
class PcaT2Q(BatchDetector):
    """Standardise -> PCA (enough components for ``variance``) -> T2 and Q against normal-data limits."""

    name = "pca_t2q"

    def __init__(
        self,
        variance: float = 0.95,
        limit_quantile: float = 0.99,
        threads: int = 1,
        features: str = "all",
        statistic: str = "t2q",
    ) -> None:
        super().__init__()
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        if features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got {features!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        self.variance = variance
        self.features = features
        self.statistic = statistic
        self.limit_quantile = limit_quantile
        self.threads = threads
        self.n_components = 0
        self.t2_limit = 1.0
        self.q_limit = 1.0
        self._mean = np.zeros(0)
        self._inv_scale = np.zeros(0)
        self._w_t2 = np.zeros((0, 0))  # components / sqrt(eigenvalue): T2 = |Z @ w_t2|^2
        self._w_q = np.zeros((0, 0))  # I - P P^T: residual projector, Q = |Z @ w_q|^2
        self._model: OnnxModel | None = None

    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:
        # heavy dependencies (sklearn; onnxruntime), imported on use (see detectors.base)
        from sklearn.decomposition import PCA

        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(feature_names) or len(x) < 3:
            raise ValueError(f"{self.name}: need >= 3 rows x {len(feature_names)} features to fit, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name}: training features contain NaN/inf; clean or impute them first")
        self.feature_names = list(feature_names)
        used = FEATURE_SETS[self.features](self.feature_names)
        d = x.shape[1]
        self._mean = x.mean(axis=0)
        std = x.std(axis=0)
        # A constant column and a column outside the feature set get scale 0: z is 0 there, it adds nothing.
        keep = (std > 1e-12) & used
        if not keep.any():
            raise ValueError(f"{self.name}: no varying feature in the {self.features!r} set of {len(feature_names)}")
        self._inv_scale = np.where(keep, 1.0 / np.where(keep, std, 1.0), 0.0)
        z = ((x - self._mean) * self._inv_scale)[:, used]
        pca = PCA(n_components=self.variance if self.variance < 1.0 else None, svd_solver="full").fit(z)
        eig = np.maximum(pca.explained_variance_, 1e-12)
        p = np.zeros((d, len(eig)))
        p[used] = pca.components_.T  # (d, k): zero rows for the features left out
        self.n_components = p.shape[1]
        self._w_t2 = p / np.sqrt(eig)
        self._w_q = np.diag(used.astype(np.float64)) - p @ p.T
        t2, q = self._parts_numpy(x)
        self.t2_limit = max(float(np.quantile(t2, self.limit_quantile)), 1e-12)
        q_lim = float(np.quantile(q, self.limit_quantile))
        # All variance kept -> Q is rounding noise; dividing by ~0 would make noise the score.
        self.q_limit = q_lim if q_lim > 1e-9 else float("inf")
        self.threshold = 1.0
        self._model = OnnxModel(self.to_onnx(), threads=self.threads)
        return self

    def _parts_numpy(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (np.asarray(features, dtype=np.float64) - self._mean) * self._inv_scale
        a = z @ self._w_t2
        r = z @ self._w_q
        return np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", r, r)

    def score_numpy(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Reference float64 implementation (tests compare the ONNX path with it)."""

        check_width(self.name, self.feature_names, features)
        t2, q = self._parts_numpy(features)
        z = (np.asarray(features, dtype=np.float64) - self._mean) * self._inv_scale
        a = z @ self._w_t2
        r = z @ self._w_q
        contrib = z * (a @ self._w_t2.T) / self.t2_limit + r * r / self.q_limit
        if self.statistic == "q":
            return {"t2": t2, "q": q, "score": q / self.q_limit, "contrib": r * r / self.q_limit}
        return {"t2": t2, "q": q, "score": np.maximum(t2 / self.t2_limit, q / self.q_limit), "contrib": contrib}

    def score_parts(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """T2, Q, the combined score per row and per-feature contributions (float64), by onnxruntime."""

        check_width(self.name, self.feature_names, features)
        assert self._model is not None
        out = self._model.run(features)
        parts = {k: np.nan_to_num(out[k].astype(np.float64), nan=np.inf) for k in ("t2", "q", "score")}
        if "contrib" in out:  # models exported before contributions existed lack it
            parts["contrib"] = np.nan_to_num(out["contrib"].astype(np.float64), nan=0.0)
        return parts

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.score_parts(features)["score"]

    def to_onnx(self) -> bytes:
        """The fitted scaler + T2/Q maths as an ONNX graph: input X float32 [N, d]; outputs t2, q, score [N]
        and contrib [N, d] (each feature's share of T2/limit + Q/limit)."""
        # heavy dependency, imported on use (see detectors.base)
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        if not self.feature_names:
            raise RuntimeError(f"{self.name}: fit() before to_onnx()")
        d = len(self.feature_names)

        def const(name: str, value: np.ndarray) -> onnx.TensorProto:
            return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

        q_inv = 0.0 if np.isinf(self.q_limit) else 1.0 / self.q_limit
        inits = [
            const("mean", self._mean),
            const("inv_scale", self._inv_scale),
            const("w_t2", self._w_t2),
            const("w_t2_t", self._w_t2.T),
            const("w_q", self._w_q),
            const("t2_inv_limit", np.array(1.0 / self.t2_limit)),
            const("q_inv_limit", np.array(q_inv)),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
        nodes = [
            helper.make_node("Sub", ["X", "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
            helper.make_node("MatMul", ["z", "w_t2"], ["a"]),
            helper.make_node("Mul", ["a", "a"], ["a2"]),
            helper.make_node("ReduceSum", ["a2", "axis1"], ["t2"], keepdims=0),
            helper.make_node("MatMul", ["z", "w_q"], ["r"]),
            helper.make_node("Mul", ["r", "r"], ["r2"]),
            helper.make_node("ReduceSum", ["r2", "axis1"], ["q"], keepdims=0),
            helper.make_node("Mul", ["t2", "t2_inv_limit"], ["t2_ratio"]),
            helper.make_node("Mul", ["q", "q_inv_limit"], ["q_ratio"]),
            helper.make_node("Max", ["t2_ratio", "q_ratio"], ["score"])
            if self.statistic == "t2q"
            else helper.make_node("Identity", ["q_ratio"], ["score"]),
            # Per-feature contributions (sum over features = t2_ratio + q_ratio): T2 part z_j * (a W^T)_j,
            # Q part r_j^2, each over its limit. They tell an alert which sensors moved.
            helper.make_node("MatMul", ["a", "w_t2_t"], ["a_back"]),
            helper.make_node("Mul", ["z", "a_back"], ["t2_contrib"]),
            helper.make_node("Mul", ["t2_contrib", "t2_inv_limit"], ["t2_contrib_ratio"]),
            helper.make_node("Mul", ["r2", "q_inv_limit"], ["q_contrib_ratio"]),
            helper.make_node("Add", ["t2_contrib_ratio", "q_contrib_ratio"], ["contrib"])
            if self.statistic == "t2q"
            else helper.make_node("Identity", ["q_contrib_ratio"], ["contrib"]),
        ]
        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", d])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("t2", "q", "score")]
            + [helper.make_tensor_value_info("contrib", TensorProto.FLOAT, ["N", d])],
            initializer=inits,
        )
        extra = {"n_components": str(self.n_components)}
        return graph_bytes(graph, {"": ONNX_OPSET}, self.name, self.feature_names, self.threshold, extra)
