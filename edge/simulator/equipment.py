"""Equipment types, their sensors, and the machines of a simulated fleet.

Every sensor follows one linear model driven by the machine's load (0 = idle, 1 = full duty)
and the site's ambient temperature::

    steady = base + load_gain * load + ambient_gain * (ambient_degC - 20)
    value  = first_order_lag(steady, tau_s) + noise

so current, vibration and temperatures rise with load (temperatures lag it, with ``tau_s``),
while e.g. a pump's discharge pressure falls as its flow rises (``load_gain < 0``: the pump
curve). ``lo``/``hi`` bound the healthy operating envelope: healthy signals stay inside it and
fault magnitudes are expressed as fractions of ``hi - lo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SensorSpec:
    name: str
    unit: str
    base: float  # reading at zero load and 20 degC ambient
    load_gain: float  # added at full load (negative: falls with load)
    noise: float  # standard deviation of white measurement noise, in ``unit``
    lo: float  # healthy operating envelope
    hi: float
    tau_s: float = 0.0  # first-order lag behind load/ambient (thermal mass); 0 = instantaneous
    ambient_gain: float = 0.0  # d(value)/d(ambient degC)

    @property
    def span(self) -> float:
        return self.hi - self.lo


@dataclass(frozen=True)
class EquipmentType:
    name: str
    sensors: tuple[SensorSpec, ...]
    # Sensors a bearing-wear degradation drives, with its magnitude as a fraction of the span.
    wear: tuple[tuple[str, float], ...]

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)

    def sensor_index(self, name: str) -> int:
        for i, spec in enumerate(self.sensors):
            if spec.name == name:
                return i
        raise KeyError(f"{self.name} has no sensor {name!r}; it has {', '.join(self.sensor_names)}")

    def column(self, attr: str) -> np.ndarray:
        """One attribute of every sensor as a float array (vectorised signal generation)."""
        return np.array([getattr(s, attr) for s in self.sensors], dtype=np.float64)


S = SensorSpec

PUMP = EquipmentType(
    "pump",
    (  # centrifugal pump on a variable-speed drive
        S("suction_pressure", "bar", 1.8, -0.5, 0.02, 0.8, 2.6),
        S("discharge_pressure", "bar", 10.0, -3.0, 0.06, 5.5, 11.5),
        S("flow", "m3/h", 8.0, 112.0, 1.0, 0.0, 140.0),
        S("motor_current", "A", 14.0, 46.0, 0.5, 5.0, 75.0),
        S("bearing_temp", "degC", 42.0, 20.0, 0.15, 20.0, 85.0, tau_s=600.0, ambient_gain=0.7),
        S("vibration_rms", "mm/s", 1.0, 1.8, 0.08, 0.2, 4.5),
        S("speed", "rpm", 1150.0, 1750.0, 3.0, 800.0, 3300.0),
    ),
    wear=(("vibration_rms", 0.9), ("bearing_temp", 0.4), ("motor_current", 0.1)),
)

MOTOR = EquipmentType(
    "motor",
    (  # 75 kW induction motor on a fixed-frequency supply
        S("current", "A", 45.0, 90.0, 0.8, 20.0, 160.0),
        S("voltage", "V", 401.0, -5.0, 1.2, 385.0, 415.0),
        S("power", "kW", 5.0, 65.0, 0.6, 0.0, 85.0),
        S("power_factor", "1", 0.72, 0.15, 0.004, 0.6, 0.95),
        S("speed", "rpm", 1496.0, -18.0, 0.6, 1465.0, 1505.0),
        S("winding_temp", "degC", 45.0, 50.0, 0.2, 20.0, 130.0, tau_s=900.0, ambient_gain=0.8),
        S("bearing_temp", "degC", 38.0, 18.0, 0.15, 20.0, 80.0, tau_s=600.0, ambient_gain=0.7),
        S("vibration_rms", "mm/s", 0.7, 1.4, 0.06, 0.1, 3.5),
    ),
    wear=(("vibration_rms", 0.9), ("bearing_temp", 0.4)),
)

COMPRESSOR = EquipmentType(
    "compressor",
    (  # oil-injected screw air compressor on a variable-speed drive
        S("discharge_pressure", "bar", 7.2, 0.6, 0.04, 6.0, 8.8),
        S("inlet_temp", "degC", 22.0, 1.5, 0.1, -10.0, 50.0, tau_s=120.0, ambient_gain=1.0),
        S("discharge_temp", "degC", 72.0, 20.0, 0.2, 45.0, 110.0, tau_s=300.0, ambient_gain=0.5),
        S("oil_pressure", "bar", 3.8, -0.5, 0.03, 2.5, 4.8),
        S("motor_current", "A", 35.0, 110.0, 0.8, 15.0, 180.0),
        S("vibration_rms", "mm/s", 1.4, 2.2, 0.1, 0.3, 5.5),
        S("air_flow", "m3/min", 2.0, 13.0, 0.15, 0.0, 18.0),
        S("speed", "rpm", 1450.0, 1500.0, 3.0, 1100.0, 3300.0),
    ),
    wear=(("vibration_rms", 0.9), ("discharge_temp", 0.4), ("motor_current", 0.1)),
)

FAN = EquipmentType(
    "fan",
    (  # centrifugal process fan
        S("speed", "rpm", 450.0, 950.0, 2.0, 250.0, 1600.0),
        S("air_flow", "m3/s", 3.0, 17.0, 0.2, 0.0, 24.0),
        S("static_pressure", "Pa", 180.0, 1250.0, 8.0, 50.0, 1700.0),
        S("motor_current", "A", 9.0, 36.0, 0.4, 3.0, 55.0),
        S("bearing_temp", "degC", 35.0, 15.0, 0.15, 15.0, 75.0, tau_s=600.0, ambient_gain=0.8),
        S("vibration_rms", "mm/s", 1.2, 1.6, 0.08, 0.3, 4.5),
    ),
    wear=(("vibration_rms", 0.9), ("bearing_temp", 0.4)),
)

del S

EQUIPMENT_TYPES: dict[str, EquipmentType] = {t.name: t for t in (PUMP, MOTOR, COMPRESSOR, FAN)}
MACHINES_PER_LINE = 25


@dataclass(frozen=True)
class Machine:
    index: int  # position in the fleet (and in every batch list the fleet returns)
    equipment_id: str  # e.g. "pump-0001"
    equipment_type: str
    site: str  # "site-1".."site-N"
    line: str  # production line within the site, "line-1".. (MACHINES_PER_LINE machines each)
    gateway_id: str  # one edge gateway per site


def gateway_for_site(site: str) -> str:
    return f"gw-{site}"


def build_machines(
    n_machines: int, sites: int, types: Sequence[str] | None = None, id_prefix: str = ""
) -> list[Machine]:
    """Lay out a fleet deterministically.

    Types rotate machine by machine and sites take contiguous blocks, so every site gets every
    type and ids stay stable when the fleet grows at the end. ``id_prefix`` keeps the ids of two
    simulated fleets that share one stack apart (e.g. "plant-b-pump-0001").
    """
    if n_machines < 1 or sites < 1:
        raise ValueError(f"need at least one machine and one site, got {n_machines} machines, {sites} sites")
    names = list(types) if types else list(EQUIPMENT_TYPES)
    unknown = [t for t in names if t not in EQUIPMENT_TYPES]
    if unknown:
        raise ValueError(f"unknown equipment types {unknown}; choose from {sorted(EQUIPMENT_TYPES)}")
    counters = dict.fromkeys(names, 0)
    site_counts = [0] * sites
    machines = []
    for i in range(n_machines):
        etype = names[i % len(names)]
        counters[etype] += 1
        site_idx = min(i * sites // n_machines, sites - 1)
        pos = site_counts[site_idx]
        site_counts[site_idx] += 1
        site = f"site-{site_idx + 1}"
        machines.append(
            Machine(
                index=i,
                equipment_id=f"{id_prefix}{etype}-{counters[etype]:04d}",
                equipment_type=etype,
                site=site,
                line=f"line-{pos // MACHINES_PER_LINE + 1}",
                gateway_id=gateway_for_site(site),
            )
        )
    return machines
