"""Labelled fault injection on top of healthy signals.

A fault is one :class:`FaultLabel`: a type, a machine, the affected sensors, an interval
``[start_ms, end_ms)`` (samples with ``start_ms <= t < end_ms`` are affected) and parameters:

========== ===================================================================================
type       effect on each affected sensor (``params``)
========== ===================================================================================
degradation bearing wear: ``+ magnitude * progress ** exponent`` (progress 0 -> 1 over the
           interval) on the type's wear sensors (vibration, bearing temperature, current)
           (``magnitudes`` {sensor: units at end_ms}, ``exponent``)
step       ``+ magnitude`` for the whole interval (``magnitudes``)
spike      ``+ magnitude`` for one to a few samples (``magnitudes``); far outside the envelope
drift      ``+ magnitude * progress`` -- slow calibration drift (``magnitudes``)
stuck      the sensor repeats its first reading in the interval: zero variance (no params)
dropout    each sample is missing with ``probability`` (1.0: the sensor is absent from batches)
========== ===================================================================================

Magnitudes are in the sensor's own unit; random faults draw them as fractions of the sensor's
healthy envelope (``hi - lo``), so they are visible but not always trivial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from edge.simulator.equipment import EquipmentType, Machine

MS_PER_MINUTE = 60_000


class FaultType(StrEnum):
    DEGRADATION = "degradation"
    STEP = "step"
    SPIKE = "spike"
    DRIFT = "drift"
    STUCK = "stuck"
    DROPOUT = "dropout"


# Mix of randomly scheduled faults.
RANDOM_FAULT_WEIGHTS: dict[FaultType, float] = {
    FaultType.DEGRADATION: 0.2,
    FaultType.STEP: 0.2,
    FaultType.SPIKE: 0.2,
    FaultType.DRIFT: 0.15,
    FaultType.STUCK: 0.15,
    FaultType.DROPOUT: 0.1,
}
# Duration ranges (minutes) of random faults; spikes last 1-3 samples instead.
RANDOM_DURATION_MIN: dict[FaultType, tuple[float, float]] = {
    FaultType.DEGRADATION: (30.0, 120.0),
    FaultType.STEP: (5.0, 30.0),
    FaultType.DRIFT: (30.0, 90.0),
    FaultType.STUCK: (5.0, 30.0),
    FaultType.DROPOUT: (1.0, 10.0),
}
# Magnitude as a fraction of the sensor's healthy span (sign random for random faults).
MAGNITUDE_SPAN_FRACTION: dict[FaultType, tuple[float, float]] = {
    FaultType.STEP: (0.15, 0.3),
    FaultType.SPIKE: (0.6, 1.0),
    FaultType.DRIFT: (0.2, 0.4),
}
DEGRADATION_EXPONENT = 2.0  # wear accelerates towards the end
ADDITIVE = (FaultType.DEGRADATION, FaultType.STEP, FaultType.SPIKE, FaultType.DRIFT)


@dataclass(frozen=True)
class FaultLabel:
    """Ground truth for one injected fault (also what is written to the ground-truth JSONL)."""

    machine: str  # equipment_id
    site: str
    equipment_type: str
    sensors: tuple[str, ...]
    fault_type: str  # a FaultType value
    start_ms: int
    end_ms: int
    params: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, start_ms: int, end_ms: int) -> bool:
        """Whether the fault affects any instant of the interval (start_ms, end_ms]."""
        return self.start_ms <= end_ms and self.end_ms > start_ms + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "site": self.site,
            "equipment_type": self.equipment_type,
            "sensors": list(self.sensors),
            "fault_type": self.fault_type,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultLabel:
        return cls(
            machine=str(data["machine"]),
            site=str(data["site"]),
            equipment_type=str(data["equipment_type"]),
            sensors=tuple(data["sensors"]),
            fault_type=str(FaultType(data["fault_type"])),
            start_ms=int(data["start_ms"]),
            end_ms=int(data["end_ms"]),
            params=dict(data.get("params") or {}),
        )


def make_fault(
    machine: Machine,
    etype: EquipmentType,
    fault_type: FaultType | str,
    start_ms: int,
    end_ms: int,
    sensors: Sequence[str] | None = None,
    magnitude: float | Mapping[str, float] | None = None,
    probability: float = 1.0,
    sample_interval_ms: float | None = None,
) -> FaultLabel:
    """A validated fault; defaults: degradation hits the wear sensors, others ``vibration_rms``.

    ``magnitude`` (sensor units) may be one number for all sensors or a {sensor: value} mapping;
    by default it is the middle of the random range, upwards. A spike must last at least one
    sample interval, or it could fall between two samples and never show.
    """
    ftype = FaultType(fault_type)
    if end_ms <= start_ms:
        raise ValueError(f"fault end_ms ({end_ms}) must be after start_ms ({start_ms})")
    if sensors is None:
        sensors = [n for n, _ in etype.wear] if ftype is FaultType.DEGRADATION else ["vibration_rms"]
    sensors = tuple(sensors)
    if not sensors:
        raise ValueError("a fault needs at least one sensor")
    for name in sensors:
        etype.sensor_index(name)  # raises a KeyError naming the valid sensors
    if ftype is FaultType.SPIKE and sample_interval_ms and end_ms - start_ms < sample_interval_ms:
        raise ValueError(
            f"a spike of {end_ms - start_ms} ms may fall between samples {sample_interval_ms:g} ms apart; "
            "make it at least one sample interval long"
        )
    params: dict[str, Any] = {}
    if ftype in ADDITIVE:
        params["magnitudes"] = {name: _magnitude(ftype, etype, name, magnitude) for name in sensors}
        if ftype is FaultType.DEGRADATION:
            params["exponent"] = DEGRADATION_EXPONENT
    elif ftype is FaultType.DROPOUT:
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"dropout probability must be in (0, 1], got {probability}")
        params["probability"] = float(probability)
    return FaultLabel(
        machine=machine.equipment_id,
        site=machine.site,
        equipment_type=machine.equipment_type,
        sensors=sensors,
        fault_type=ftype.value,
        start_ms=int(start_ms),
        end_ms=int(end_ms),
        params=params,
    )


def _magnitude(
    ftype: FaultType, etype: EquipmentType, sensor: str, magnitude: float | Mapping[str, float] | None
) -> float:
    if isinstance(magnitude, Mapping):
        if sensor not in magnitude:
            raise ValueError(f"no magnitude given for sensor {sensor!r}; got {sorted(magnitude)}")
        return float(magnitude[sensor])
    if magnitude is not None:
        return float(magnitude)
    spec = etype.sensors[etype.sensor_index(sensor)]
    if ftype is FaultType.DEGRADATION:
        return dict(etype.wear).get(sensor, 0.3) * spec.span
    lo, hi = MAGNITUDE_SPAN_FRACTION[ftype]
    return (lo + hi) / 2 * spec.span


def random_fault(
    machine: Machine, etype: EquipmentType, start_ms: int, sample_interval_ms: float, rng: np.random.Generator
) -> FaultLabel:
    """One randomly typed, sized and timed fault starting at ``start_ms``."""
    types = list(RANDOM_FAULT_WEIGHTS)
    weights = np.array([RANDOM_FAULT_WEIGHTS[t] for t in types])
    ftype = types[rng.choice(len(types), p=weights / weights.sum())]
    if ftype is FaultType.SPIKE:
        duration = int(np.ceil(sample_interval_ms * rng.integers(1, 4)))
    else:
        lo, hi = RANDOM_DURATION_MIN[ftype]
        duration = int(rng.uniform(lo, hi) * MS_PER_MINUTE)
    if ftype is FaultType.DEGRADATION:
        sensors = [n for n, _ in etype.wear]
        magnitude: dict[str, float] | None = {
            n: frac * etype.sensors[etype.sensor_index(n)].span * rng.uniform(0.8, 1.2) for n, frac in etype.wear
        }
    else:
        sensors = [etype.sensors[rng.integers(len(etype.sensors))].name]
        magnitude = None
        if ftype in MAGNITUDE_SPAN_FRACTION:
            spec = etype.sensors[etype.sensor_index(sensors[0])]
            sign = 1.0 if rng.random() < 0.5 else -1.0
            magnitude = {sensors[0]: sign * rng.uniform(*MAGNITUDE_SPAN_FRACTION[ftype]) * spec.span}
    probability = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.3, 0.8))
    return make_fault(
        machine, etype, ftype, start_ms, start_ms + duration, sensors, magnitude, probability, sample_interval_ms
    )


@dataclass
class ActiveFault:
    """A fault compiled against its machine's position in the signal arrays."""

    label: FaultLabel
    row: int  # machine's row in its equipment-type group
    sensor_idx: np.ndarray  # (k,) sensor columns
    magnitudes: np.ndarray  # (k,) additive magnitudes (0 for stuck/dropout)
    stuck_values: np.ndarray  # (k,) captured at the first stuck sample, NaN until then
    written: bool = False  # ground truth already recorded

    @classmethod
    def compile(cls, label: FaultLabel, row: int, etype: EquipmentType) -> ActiveFault:
        idx = np.array([etype.sensor_index(s) for s in label.sensors], dtype=np.intp)
        mags = label.params.get("magnitudes", {})
        magnitudes = np.array([float(mags.get(s, 0.0)) for s in label.sensors])
        return cls(label, row, idx, magnitudes, np.full(len(idx), np.nan))


_CODES = {t: i for i, t in enumerate(FaultType)}


def apply_faults(values: np.ndarray, t_ms: np.ndarray, faults: Sequence[ActiveFault], rng: np.random.Generator) -> None:
    """Apply active faults in place to one group's values (machines, sensors, samples).

    Vectorised over all (fault, sensor) rows: additive effects first, then stuck sensors (a stuck
    sensor reads constant whatever else happens), then dropouts, which become NaN (the batch
    builder leaves those samples out).
    """
    if not faults:
        return
    counts = [len(f.sensor_idx) for f in faults]
    m_idx = np.repeat([f.row for f in faults], counts)
    s_idx = np.concatenate([f.sensor_idx for f in faults])
    code = np.repeat([_CODES[FaultType(f.label.fault_type)] for f in faults], counts)
    start = np.repeat([f.label.start_ms for f in faults], counts)
    end = np.repeat([f.label.end_ms for f in faults], counts)
    mag = np.concatenate([f.magnitudes for f in faults])
    times = t_ms[m_idx]  # (rows, samples)
    inwin = (times >= start[:, None]) & (times < end[:, None])
    if not inwin.any():
        return
    progress = np.clip((times - start[:, None]) / (end - start)[:, None], 0.0, 1.0)

    shape = np.zeros(times.shape)
    for ftype in (FaultType.STEP, FaultType.SPIKE):
        shape[code == _CODES[ftype]] = 1.0
    drift = code == _CODES[FaultType.DRIFT]
    shape[drift] = progress[drift]
    degr = code == _CODES[FaultType.DEGRADATION]
    shape[degr] = progress[degr] ** DEGRADATION_EXPONENT
    additive = shape.any(axis=1)
    if additive.any():
        np.add.at(values, (m_idx[additive], s_idx[additive]), (mag[:, None] * shape * inwin)[additive])

    stuck = np.flatnonzero((code == _CODES[FaultType.STUCK]) & inwin.any(axis=1))
    if stuck.size:
        captured = np.concatenate([f.stuck_values for f in faults])[stuck]
        current = values[m_idx[stuck], s_idx[stuck]]
        first = inwin[stuck].argmax(axis=1)
        fresh = np.isnan(captured)
        captured[fresh] = current[fresh, first[fresh]]
        values[m_idx[stuck], s_idx[stuck]] = np.where(inwin[stuck], captured[:, None], current)
        offsets = np.cumsum([0, *counts])
        owner = np.searchsorted(offsets, stuck, side="right") - 1
        for row, f_i, v in zip(stuck, owner, captured, strict=True):
            faults[f_i].stuck_values[row - offsets[f_i]] = v

    drop_rows = np.flatnonzero((code == _CODES[FaultType.DROPOUT]) & inwin.any(axis=1))
    if drop_rows.size:
        prob = np.repeat([float(f.label.params.get("probability", 1.0)) for f in faults], counts)[drop_rows]
        drop = inwin[drop_rows] & (rng.random((drop_rows.size, times.shape[1])) < prob[:, None])
        cur = values[m_idx[drop_rows], s_idx[drop_rows]]
        values[m_idx[drop_rows], s_idx[drop_rows]] = np.where(drop, np.nan, cur)
