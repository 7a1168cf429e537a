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
overheating cooling or lubrication loss: the type's temperatures ramp up (``+ magnitude * progress``)
           with no rise in vibration (``magnitudes``)
cavitation pump only: suction pressure and flow fall, vibration rises and every one of them gets
           noisier (``magnitudes`` for the shift, ``noise`` {sensor: extra standard deviation})
electrical supply or winding fault: motor current steps up and turns noisy, speed sags; on a motor
           the voltage and power factor drop (``magnitudes``, ``noise``)
========== ===================================================================================

The last three are the plant-level failure modes a maintenance team names; they move several sensors
at once in a pattern (:data:`SIGNATURES`) that the diagnostic agent must recognise. Random faults draw
from :data:`RANDOM_FAULT_WEIGHTS` (generic signal faults, what the detector scorecards were measured on)
or, with ``fault_mix="plant"``, from :data:`PLANT_FAULT_WEIGHTS`.

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
    OVERHEATING = "overheating"
    CAVITATION = "cavitation"
    ELECTRICAL = "electrical"


# Mix of randomly scheduled faults.
RANDOM_FAULT_WEIGHTS: dict[FaultType, float] = {
    FaultType.DEGRADATION: 0.2,
    FaultType.STEP: 0.2,
    FaultType.SPIKE: 0.2,
    FaultType.DRIFT: 0.15,
    FaultType.STUCK: 0.15,
    FaultType.DROPOUT: 0.1,
}
# The plant mix: failure modes and sensor faults as a maintenance team meets them (`fault_mix="plant"`).
PLANT_FAULT_WEIGHTS: dict[FaultType, float] = {
    FaultType.DEGRADATION: 0.15,  # bearing wear
    FaultType.OVERHEATING: 0.15,
    FaultType.CAVITATION: 0.15,  # pumps only: other types redraw among the rest
    FaultType.ELECTRICAL: 0.15,
    FaultType.STUCK: 0.1,
    FaultType.DRIFT: 0.1,
    FaultType.SPIKE: 0.1,
    FaultType.STEP: 0.05,
    FaultType.DROPOUT: 0.05,
}
FAULT_MIXES: dict[str, dict[FaultType, float]] = {"generic": RANDOM_FAULT_WEIGHTS, "plant": PLANT_FAULT_WEIGHTS}

# Multi-sensor failure modes per equipment type: sensor -> (shift, extra noise), both as fractions of the
# sensor's healthy span; the shift ramps in for overheating and steps in for the others.
SIGNATURES: dict[FaultType, dict[str, dict[str, tuple[float, float]]]] = {
    FaultType.OVERHEATING: {
        "pump": {"bearing_temp": (0.45, 0.0)},
        "motor": {"winding_temp": (0.4, 0.0), "bearing_temp": (0.12, 0.0)},
        "compressor": {"discharge_temp": (0.4, 0.0), "oil_pressure": (-0.15, 0.0)},
        "fan": {"bearing_temp": (0.45, 0.0)},
    },
    FaultType.CAVITATION: {
        "pump": {
            "suction_pressure": (-0.3, 0.05),
            "flow": (-0.15, 0.04),
            "vibration_rms": (0.35, 0.08),
            "discharge_pressure": (-0.1, 0.05),
        },
    },
    FaultType.ELECTRICAL: {
        "pump": {"motor_current": (0.2, 0.05), "speed": (-0.05, 0.0)},
        "motor": {"current": (0.2, 0.05), "voltage": (-0.35, 0.05), "power_factor": (-0.35, 0.0)},
        "compressor": {"motor_current": (0.2, 0.05), "speed": (-0.05, 0.0)},
        "fan": {"motor_current": (0.2, 0.05), "speed": (-0.05, 0.0)},
    },
}
RAMPED = (FaultType.DRIFT, FaultType.OVERHEATING)  # shift grows linearly over the interval
STEPPED = (FaultType.STEP, FaultType.SPIKE, FaultType.CAVITATION, FaultType.ELECTRICAL)  # shift is on at once


def supports(fault_type: FaultType | str, equipment_type: str) -> bool:
    """Whether a fault type can happen on this equipment type (cavitation: pumps only)."""
    ftype = FaultType(fault_type)
    return ftype not in SIGNATURES or equipment_type in SIGNATURES[ftype]


# Duration ranges (minutes) of random faults; spikes last 1-3 samples instead.
RANDOM_DURATION_MIN: dict[FaultType, tuple[float, float]] = {
    FaultType.DEGRADATION: (30.0, 120.0),
    FaultType.STEP: (5.0, 30.0),
    FaultType.DRIFT: (30.0, 90.0),
    FaultType.STUCK: (5.0, 30.0),
    FaultType.DROPOUT: (1.0, 10.0),
    FaultType.OVERHEATING: (20.0, 60.0),
    FaultType.CAVITATION: (5.0, 30.0),
    FaultType.ELECTRICAL: (5.0, 30.0),
}
# Magnitude as a fraction of the sensor's healthy span (sign random for random faults).
MAGNITUDE_SPAN_FRACTION: dict[FaultType, tuple[float, float]] = {
    FaultType.STEP: (0.15, 0.3),
    FaultType.SPIKE: (0.6, 1.0),
    FaultType.DRIFT: (0.2, 0.4),
}
DEGRADATION_EXPONENT = 2.0  # wear accelerates towards the end
ADDITIVE = (FaultType.DEGRADATION, FaultType.STEP, FaultType.SPIKE, FaultType.DRIFT, *SIGNATURES)


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
    if not supports(ftype, etype.name):
        raise ValueError(f"{ftype.value} does not happen on a {etype.name}; it does on: {', '.join(SIGNATURES[ftype])}")
    if sensors is None and ftype in SIGNATURES:
        sensors = list(SIGNATURES[ftype][etype.name])
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
        if ftype in SIGNATURES:
            signature = SIGNATURES[ftype][etype.name]
            noise = {n: signature.get(n, (0.0, 0.0))[1] * etype.sensors[etype.sensor_index(n)].span for n in sensors}
            params["noise"] = {n: v for n, v in noise.items() if v > 0}
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
    if ftype in SIGNATURES:
        return SIGNATURES[ftype][etype.name].get(sensor, (0.0, 0.0))[0] * spec.span
    lo, hi = MAGNITUDE_SPAN_FRACTION[ftype]
    return (lo + hi) / 2 * spec.span


def random_fault(
    machine: Machine,
    etype: EquipmentType,
    start_ms: int,
    sample_interval_ms: float,
    rng: np.random.Generator,
    mix: Mapping[FaultType, float] = RANDOM_FAULT_WEIGHTS,
) -> FaultLabel:
    """One randomly typed (from ``mix``: type -> weight), sized and timed fault starting at ``start_ms``."""
    types = [t for t in mix if supports(t, etype.name)]
    weights = np.array([mix[t] for t in types])
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
    elif ftype in SIGNATURES:
        signature = SIGNATURES[ftype][etype.name]
        sensors = list(signature)
        scale = rng.uniform(0.8, 1.2)
        spans = {n: etype.sensors[etype.sensor_index(n)].span for n in sensors}
        magnitude = {n: shift * spans[n] * scale for n, (shift, _) in signature.items()}
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
    noise: np.ndarray  # (k,) extra white-noise standard deviation while active (0: none)
    stuck_values: np.ndarray  # (k,) captured at the first stuck sample, NaN until then
    written: bool = False  # ground truth already recorded

    @classmethod
    def compile(cls, label: FaultLabel, row: int, etype: EquipmentType) -> ActiveFault:
        idx = np.array([etype.sensor_index(s) for s in label.sensors], dtype=np.intp)
        mags = label.params.get("magnitudes", {})
        magnitudes = np.array([float(mags.get(s, 0.0)) for s in label.sensors])
        noise = np.array([float(label.params.get("noise", {}).get(s, 0.0)) for s in label.sensors])
        return cls(label, row, idx, magnitudes, noise, np.full(len(idx), np.nan))


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
    for ftype in STEPPED:
        shape[code == _CODES[ftype]] = 1.0
    for ftype in RAMPED:
        ramp = code == _CODES[ftype]
        shape[ramp] = progress[ramp]
    degr = code == _CODES[FaultType.DEGRADATION]
    shape[degr] = progress[degr] ** DEGRADATION_EXPONENT
    additive = shape.any(axis=1)
    if additive.any():
        np.add.at(values, (m_idx[additive], s_idx[additive]), (mag[:, None] * shape * inwin)[additive])
    noise = np.concatenate([f.noise for f in faults])
    noisy = np.flatnonzero((noise > 0) & inwin.any(axis=1))
    if noisy.size:  # drawn only when such a fault is active: runs without one keep their random stream
        jitter = rng.normal(size=(noisy.size, times.shape[1])) * noise[noisy, None] * inwin[noisy]
        np.add.at(values, (m_idx[noisy], s_idx[noisy]), jitter)

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
