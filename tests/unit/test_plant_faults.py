"""The simulator's plant failure modes (overheating, cavitation, electrical): multi-sensor signatures."""

from __future__ import annotations

import numpy as np
import pytest

from edge.simulator.equipment import EQUIPMENT_TYPES
from edge.simulator.faults import SIGNATURES, FaultType
from edge.simulator.fleet import Fleet

T0 = 1_795_564_800_000
INTERVAL = 5000


def values_of(fleet: Fleet, equipment_id: str, ticks: int) -> np.ndarray:
    """(sensors, ticks * samples) of one machine."""
    out = []
    for k in range(ticks):
        for g in fleet.generate(T0 + k * INTERVAL):
            ids = [fleet.machines[i].equipment_id for i in g.machine_index]
            if equipment_id in ids:
                out.append(g.values[ids.index(equipment_id)])
    return np.concatenate(out, axis=1)


def test_cavitation_is_a_pump_fault() -> None:
    fleet = Fleet(4, sites=1, seed=1, fault_rate_per_machine_hour=0.0)
    motor = next(m for m in fleet.machines if m.equipment_type == "motor")
    with pytest.raises(ValueError, match="cavitation does not happen on a motor.*pump"):
        fleet.inject(FaultType.CAVITATION, motor.equipment_id, T0, T0 + 60_000)


def test_cavitation_drops_suction_pressure_and_makes_the_pump_noisy() -> None:
    fleet = Fleet(4, sites=1, seed=2, fault_rate_per_machine_hour=0.0, regime_dwell_s=1e6)
    pump = next(m for m in fleet.machines if m.equipment_type == "pump").equipment_id
    label = fleet.inject(FaultType.CAVITATION, pump, T0 + 30 * INTERVAL, T0 + 60 * INTERVAL)
    assert set(label.sensors) == set(SIGNATURES[FaultType.CAVITATION]["pump"]) and label.params["noise"]
    v = values_of(fleet, pump, 60)
    spec = EQUIPMENT_TYPES["pump"]
    suction = spec.sensor_index("suction_pressure")
    per_tick = v.shape[1] // 60
    before, during = v[:, 10 * per_tick : 30 * per_tick], v[:, 31 * per_tick : 59 * per_tick]
    span = spec.sensors[suction].span
    assert np.nanmean(during[suction]) - np.nanmean(before[suction]) == pytest.approx(-0.3 * span, abs=0.05 * span)
    vib = spec.sensor_index("vibration_rms")
    assert np.nanstd(np.diff(during[vib])) > 3 * np.nanstd(np.diff(before[vib]))


def test_the_plant_mix_draws_failure_modes_and_the_generic_mix_does_not() -> None:
    def types(mix: str) -> set[str]:
        fleet = Fleet(40, sites=2, seed=5, fault_rate_per_machine_hour=60.0, fault_mix=mix)
        for k in range(40):
            fleet.generate(T0 + k * INTERVAL)
        return {f.fault_type for f in fleet.fault_history}

    plant, generic = types("plant"), types("generic")
    assert {"overheating", "electrical", "cavitation"} <= plant
    assert not {"overheating", "electrical", "cavitation"} & generic
    with pytest.raises(ValueError, match="unknown fault mix"):
        Fleet(2, fault_mix="nope")
