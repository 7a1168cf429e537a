"""Isolation Forest: rows that random splits isolate quickly are unusual; no distribution assumed.

Scoring always runs through onnxruntime; the graph's ``score`` output is already the Vigil score
(negated ``score_samples``: higher = more anomalous). Two exports give the same numbers:
- ``direct`` (default): one ``ai.onnx.ml.TreeEnsembleRegressor`` whose leaf values are the per-tree
  path lengths, then ``2 ** -(sum / (n_trees * c(max_samples)))``. Builds in milliseconds.
- ``skl2onnx``: the stock converter plus ``-(scores + offset_)``. Its conversion time grows with the
  square of the tree count (measured 1.3 s at 50 trees, 15 s at 200), too slow to refit per machine type
  or per SKAB file, so it is kept as a cross-check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

import numpy as np

from detectors.base import BatchDetector, register
from onnx_models.export import graph_bytes, model_bytes
from onnx_models.runtime import OnnxModel, check_width

if TYPE_CHECKING:
    pass


ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}


@register(in_job=True, order=20)
class IsolationForestDetector(BatchDetector):
    """sklearn IsolationForest; threshold = ``limit_quantile`` of the training rows' scores."""

    name = "isolation_forest"

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int | str = "auto",
        limit_quantile: float = 0.99,
        random_state: int = 0,
        threads: int = 1,
    ) -> None:
        # heavy dependency, imported on use (see detectors.base)
        from sklearn.ensemble import IsolationForest

        super().__init__()
        self.limit_quantile = limit_quantile
        self.threads = threads
        self.forest = IsolationForest(n_estimators=n_estimators, max_samples=max_samples, random_state=random_state)
        self._model: OnnxModel | None = None

    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:

        x = np.asarray(features, dtype=np.float32)  # ONNX tree thresholds are float32: split on the same values
        if x.ndim != 2 or x.shape[1] != len(feature_names) or len(x) < 2:
            raise ValueError(f"{self.name}: need >= 2 rows x {len(feature_names)} features to fit, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name}: training features contain NaN/inf; clean or impute them first")
        self.feature_names = list(feature_names)
        self.forest.fit(x)
        self._model = OnnxModel(self.to_onnx(), threads=self.threads)
        self.calibrate(x, self.limit_quantile)
        return self

    def score_numpy(self, features: np.ndarray) -> np.ndarray:
        """Reference sklearn score (tests compare the ONNX path with it)."""

        check_width(self.name, self.feature_names, features)
        return -self.forest.score_samples(np.asarray(features, dtype=np.float32))

    def score(self, features: np.ndarray) -> np.ndarray:

        check_width(self.name, self.feature_names, features)
        assert self._model is not None
        return np.nan_to_num(self._model.run(features)["score"].astype(np.float64), nan=np.inf)

    def to_onnx(self, method: str = "direct") -> bytes:
        """The fitted forest as ONNX: input X float32 [N, d]; output ``score`` [N] (= ``-score_samples``)."""
        if not self.feature_names:
            raise RuntimeError(f"{self.name}: fit() before to_onnx()")
        if method == "direct":
            return self._to_onnx_direct()
        if method == "skl2onnx":
            return self._to_onnx_skl2onnx()
        raise ValueError(f"unknown ONNX export method {method!r}; use 'direct' or 'skl2onnx'")

    def _to_onnx_direct(self) -> bytes:
        # heavy dependency, imported on use (see detectors.base)
        from onnx import TensorProto, helper, numpy_helper
        from sklearn.ensemble._iforest import _average_path_length

        forest = self.forest
        tree_ids, node_ids, feature_ids, modes, values, true_ids, false_ids = [], [], [], [], [], [], []
        t_tree, t_node, t_weight = [], [], []
        denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
        for i, (est, feats) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
            tree = est.tree_
            n = tree.node_count
            leaf = tree.children_left == -1
            # sklearn: float32 x <= float64 t. Same branch with a float32 threshold: largest float32 <= t.
            thr = tree.threshold.astype(np.float32)
            thr = np.where(thr.astype(np.float64) > tree.threshold, np.nextafter(thr, np.float32(-np.inf)), thr)
            tree_ids.append(np.full(n, i))
            node_ids.append(np.arange(n))
            feature_ids.append(np.where(leaf, 0, np.asarray(feats)[np.maximum(tree.feature, 0)]))
            modes += np.where(leaf, "LEAF", "BRANCH_LEQ").tolist()
            values.append(np.where(leaf, 0.0, thr))
            true_ids.append(np.where(leaf, 0, tree.children_left))
            false_ids.append(np.where(leaf, 0, tree.children_right))
            leaves = np.flatnonzero(leaf)
            path = forest._decision_path_lengths[i][leaves] + forest._average_path_length_per_tree[i][leaves] - 1.0
            t_tree.append(np.full(len(leaves), i))
            t_node.append(leaves)
            t_weight.append(path / denominator if denominator else np.ones(len(leaves)) / len(forest.estimators_))

        def ints(parts: list[np.ndarray]) -> list[int]:
            return np.concatenate(parts).astype(np.int64).tolist()

        def floats(parts: list[np.ndarray]) -> list[float]:
            return np.concatenate(parts).astype(np.float32).tolist()

        ensemble = helper.make_node(
            "TreeEnsembleRegressor",
            ["X"],
            ["depth"],
            domain="ai.onnx.ml",
            n_targets=1,
            aggregate_function="SUM",
            post_transform="NONE",
            nodes_treeids=ints(tree_ids),
            nodes_nodeids=ints(node_ids),
            nodes_featureids=ints(feature_ids),
            nodes_modes=modes,
            nodes_values=floats(values),
            nodes_truenodeids=ints(true_ids),
            nodes_falsenodeids=ints(false_ids),
            nodes_missing_value_tracks_true=[0] * len(modes),
            target_treeids=ints(t_tree),
            target_nodeids=ints(t_node),
            target_ids=[0] * sum(len(t) for t in t_node),
            target_weights=floats(t_weight),
        )
        inits = [
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ]
        nodes = [
            ensemble,
            helper.make_node("Neg", ["depth"], ["neg_depth"]),
            helper.make_node("Pow", ["two", "neg_depth"], ["score2d"]),
            helper.make_node("Squeeze", ["score2d", "axis1"], ["score"]),
        ]
        graph = helper.make_graph(
            nodes,
            self.name,
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(self.feature_names)])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
            initializer=inits,
        )
        return graph_bytes(graph, ONNX_OPSET, self.name, self.feature_names, self.threshold)

    def _to_onnx_skl2onnx(self) -> bytes:
        """skl2onnx graph + ``score = -(decision_function + offset_)`` = ``-score_samples``, shape [N]."""
        # heavy dependency, imported on use (see detectors.base)
        from onnx import TensorProto, helper, numpy_helper
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        d = len(self.feature_names)
        model = convert_sklearn(self.forest, initial_types=[("X", FloatTensorType([None, d]))], target_opset=ONNX_OPSET)
        graph = model.graph
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(self.forest.offset_, dtype=np.float32), "vigil_offset"),
                numpy_helper.from_array(np.array([1], dtype=np.int64), "vigil_axis1"),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Add", ["scores", "vigil_offset"], ["vigil_samples"]),
                helper.make_node("Neg", ["vigil_samples"], ["vigil_neg"]),
                helper.make_node("Squeeze", ["vigil_neg", "vigil_axis1"], ["score"]),
            ]
        )
        del graph.output[:]
        graph.output.extend([helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])])
        return model_bytes(model, self.name, self.feature_names, self.threshold)
