"""The small interface every detector implements, so the Flink UDFs and `vigil evaluate` share one code path.

Two kinds, one detector per module (like River):
- :class:`BatchDetector` scores rows of a feature matrix at once (vectorised; the pandas UDFs hand it a
  whole Arrow batch). Fitted on normal data only; ``calibrate`` sets the alarm threshold from scores
  of normal data.
- :class:`StreamingDetector` keeps per-series state (e.g. an EWMA baseline) and scores values in time
  order; ``update`` takes a block of consecutive values of ONE series and is vectorised inside where
  the maths allows. Its state is a plain dict of numbers so Flink keyed state can checkpoint it.
Scores: higher means more anomalous; NaN never leaves a detector.

A detector module declares itself with :func:`register` on its class; :mod:`detectors` finds every module
of this package (and the ``vigil.detectors`` entry points), so a new detector is one file and nothing else.

Finding the detectors imports every module, including in processes that only need their names (the ClickHouse
and Pushgateway sinks ask :func:`detectors.score_names`). So a detector module imports only numpy and the
project's modules at its top, and its heavy third-party libraries (sklearn, skl2onnx, onnx, scipy) inside the
methods that fit or export a model (commented as such); onnx_models.runtime loads onnxruntime on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import numpy as np

from detectors.calibration import TailLevel, tail_level


class BatchDetector(ABC):
    """A model over feature rows (e.g. one row per machine and window)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.feature_names: list[str] = []
        self.threshold: float | None = None

    @abstractmethod
    def fit(self, features: np.ndarray, feature_names: Sequence[str]) -> Self:
        """Learn normal behaviour from rows known to be normal."""

    @abstractmethod
    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly score per row (float64, shape (n,)); higher is more anomalous."""

    def calibrate(self, normal_features: np.ndarray, quantile: float = 0.99) -> float:
        """Set the alarm threshold to a quantile of the scores of normal rows."""
        self.threshold = float(np.quantile(self.score(normal_features), quantile))
        return self.threshold

    def calibrate_rate(self, normal_features: np.ndarray, exceed_prob: float) -> TailLevel:
        """Set the alarm threshold to the score a normal row exceeds with probability ``exceed_prob``
        (a peaks-over-threshold tail of the normal rows' scores, :mod:`detectors.calibration`)."""
        found = tail_level(self.score(normal_features), exceed_prob)
        self.threshold = found.level
        return found

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Boolean alarm per row (requires a threshold)."""
        if self.threshold is None:
            raise RuntimeError(f"{self.name}: call calibrate() (or set threshold) before predict()")
        return self.score(features) > self.threshold


class StreamingDetector(ABC):
    """A stateful detector for one series, fed in time order."""

    name: ClassVar[str]

    @abstractmethod
    def initial_state(self) -> dict[str, Any]:
        """State of a series that has seen nothing yet (JSON-serialisable numbers only)."""

    @abstractmethod
    def update(self, state: dict[str, Any], values: np.ndarray, timestamps_ms: np.ndarray) -> np.ndarray:
        """Score consecutive values of one series, updating ``state`` in place; returns one score per value."""


# What a detector reads: one row per (machine, window) with every sensor's window statistics and their
# causal history side by side (onnx_models.features.window_features), or one series of values in time order.
FEATURES_BY_KIND = {"batch": "machine_windows", "streaming": "series"}
BENCHMARKS_BY_KIND = {"batch": ("skab",), "streaming": ("nab",)}


@dataclass(frozen=True)
class DetectorSpec:
    """What the rest of Vigil needs to know about a detector, declared once in the detector's own file.

    ``in_job``: trained by ``vigil train`` (and the demo), exported to ONNX, scored by the anomaly-scoring job
    per equipment type; its normalised score travels in every verdict's ``scores`` map, and it fires alerts.
    ``benchmarks``: the labelled datasets ``vigil evaluate`` scores it on (``skab`` for batch detectors, ``nab``
    for streaming ones; ``sim`` is every in-job detector). ``benchmark_params``: constructor arguments for those
    runs (the job and ``vigil train`` use the defaults). ``order`` places it in verdicts (lower first).
    """

    name: str
    kind: Literal["batch", "streaming"]
    make: Callable[..., BatchDetector | StreamingDetector]
    features: str
    in_job: bool = False
    benchmarks: tuple[str, ...] = ()
    benchmark_params: Mapping[str, Any] = field(default_factory=dict)
    order: int = 50
    default_threshold: float | None = None  # streaming: the alarm level a benchmark run uses unless told

    def build(self, **params: Any) -> BatchDetector | StreamingDetector:
        return self.make(**params)

    def build_for_benchmark(self, **overrides: Any) -> BatchDetector | StreamingDetector:
        return self.make(**{**self.benchmark_params, **overrides})


_DECLARED: dict[str, DetectorSpec] = {}


def register(
    *,
    in_job: bool = False,
    benchmarks: Sequence[str] | None = None,
    benchmark_params: Mapping[str, Any] | None = None,
    order: int = 50,
) -> Callable[[type], type]:
    """Class decorator: declare a detector (its ``name`` class attribute names it everywhere)."""

    def declare(cls: type) -> type:
        if issubclass(cls, BatchDetector):
            kind: Literal["batch", "streaming"] = "batch"
        elif issubclass(cls, StreamingDetector):
            kind = "streaming"
        else:
            raise TypeError(f"{cls.__name__}: a detector subclasses BatchDetector or StreamingDetector")
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name.isidentifier() or not name.islower():
            raise ValueError(f"{cls.__name__}: name must be a lower-case identifier, got {name!r}")
        if name == "rules":
            raise ValueError(f"{cls.__name__}: 'rules' names the rules' own score in verdicts; pick another name")
        if in_job and (kind != "batch" or not callable(getattr(cls, "to_onnx", None))):
            raise ValueError(f"{name}: only a batch detector with to_onnx() can be scored in the job")
        known = _DECLARED.get(name)
        if known is not None and known.make.__module__ != cls.__module__:  # a reloaded module may re-declare
            raise ValueError(f"detector {name!r} declared twice ({known.make.__module__} and {cls.__module__})")
        _DECLARED[name] = DetectorSpec(
            name=name,
            kind=kind,
            make=cls,
            features=FEATURES_BY_KIND[kind],
            in_job=in_job,
            benchmarks=tuple(benchmarks) if benchmarks is not None else BENCHMARKS_BY_KIND[kind],
            benchmark_params=dict(benchmark_params or {}),
            order=order,
            default_threshold=getattr(cls, "default_threshold", None),
        )
        return cls

    return declare


def declared() -> dict[str, DetectorSpec]:
    """The detectors declared so far (:func:`detectors.all_detectors` imports every module first)."""
    return dict(_DECLARED)
