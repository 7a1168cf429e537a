"""Sensor residual: how far each sensor's recent level sits from where the others say it should be.

Faults that grow slowly (bearing wear, a drifting transmitter) move one or a few sensors away from the
relation all of a machine's sensors keep with its load, while a change of operating point moves them all
together. ``pca_t2q`` reads every window statistic and its short history, so a large load change is a
heavy-tailed event for it and its calibrated limit sits far above a slow fault's early signature. This
model reads only each sensor's rolling mean of its window averages (noise and a change's first windows
averaged out) and scores only Q, the part that breaks the sensors' joint structure: T2, a far but
consistent operating point, is no fault. Same maths and ONNX graph as :class:`PcaT2Q` (its feature set and
statistic), so the job scores it like any model.
"""

from __future__ import annotations

from detectors.base import register
from detectors.pca_t2q import PcaT2Q


# No public benchmark: its features are the fleet's window statistics (``.avg`` per sensor), which raw benchmark
# rows (SKAB's, NAB's) do not have.
@register(in_job=True, benchmarks=(), order=15)
class SensorResidual(PcaT2Q):
    """PCA Q of the smoothed sensor averages (``<sensor>.avg__mean<h>``)."""

    name = "sensor_residual"

    def __init__(self, variance: float = 0.9, limit_quantile: float = 0.99, threads: int = 1) -> None:
        super().__init__(variance, limit_quantile, threads, features="smoothed_avg", statistic="q")
