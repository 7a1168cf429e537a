"""Fleet simulator: signal shapes, determinism, physics, fault injection, ground truth, runner."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.proto import telemetry_pb2
from edge.simulator.equipment import EQUIPMENT_TYPES, build_machines
from edge.simulator.faults import FaultType
from edge.simulator.fleet import Fleet
from edge.simulator.ground_truth import GroundTruthWriter, read_ground_truth
from edge.simulator.runner import TickStats, run_simulation
from vigil.settings import Settings, SimulatorSettings

T0 = 1_700_000_000_000  # a tick boundary (multiple of 5000 ms)
INTERVAL = 5000


def healthy_fleet(n: int = 8, seed: int = 3, **kw) -> Fleet:
    kw.setdefault("regime_dwell_s", 300.0)
    return Fleet(n, sites=2, seed=seed, fault_rate_per_machine_hour=0.0, **kw)


def run_arrays(fleet: Fleet, ticks: int, first_end: int = T0) -> dict[str, np.ndarray]:
    """Values per type, shaped (machines, sensors, ticks * samples)."""
    acc: dict[str, list[np.ndarray]] = {}
    for k in range(ticks):
        for g in fleet.generate(first_end + k * INTERVAL):
            acc.setdefault(g.etype.name, []).append(g.values)
    return {name: np.concatenate(v, axis=2) for name, v in acc.items()}


def series(batches: list[telemetry_pb2.ReadingBatch], equipment_id: str, sensor: str) -> tuple[list, list]:
    for b in batches:
        if b.equipment_id == equipment_id:
            for s in b.sensors:
                if s.sensor == sensor:
                    return list(s.timestamps_ms), list(s.values)
            return [], []
    raise AssertionError(f"no batch for {equipment_id}")


# -- layout, shapes, determinism ---------------------------------------------------------------
def test_machine_layout_covers_every_type_at_every_site():
    machines = build_machines(40, sites=4)
    assert machines[0].equipment_id == "pump-0001" and machines[4].equipment_id == "pump-0002"
    assert {m.gateway_id for m in machines} == {f"gw-site-{i}" for i in range(1, 5)}
    for site in {m.site for m in machines}:
        assert {m.equipment_type for m in machines if m.site == site} == set(EQUIPMENT_TYPES)
    assert len({m.equipment_id for m in machines}) == 40
    with pytest.raises(ValueError, match="unknown equipment types"):
        build_machines(3, 1, ["turbine"])


def test_shapes_counts_and_timestamps():
    fleet = healthy_fleet(10)
    groups = fleet.generate(T0)
    assert sum(len(g.machine_index) for g in groups) == 10
    for g in groups:
        assert g.values.shape == (len(g.machine_index), len(g.etype.sensors), 10)
    batches = fleet.tick(T0 + INTERVAL)
    assert [b.equipment_id for b in batches] == [m.equipment_id for m in fleet.machines]
    points = 0
    for b, m in zip(batches, fleet.machines, strict=True):
        assert (b.site, b.equipment_type, b.gateway_id) == (m.site, m.equipment_type, m.gateway_id)
        assert [s.sensor for s in b.sensors] == list(EQUIPMENT_TYPES[m.equipment_type].sensor_names)
        for s in b.sensors:
            ts = np.array(s.timestamps_ms)
            assert len(ts) == len(s.values) == 10
            assert np.all(np.diff(ts) > 0)
            assert ts[0] > T0 and ts[-1] <= T0 + INTERVAL  # inside (end - interval, end]
            assert s.unit
            points += len(ts)
    assert fleet.last_points == points


def test_same_seed_same_batches_other_seed_differs():
    def run(seed: int) -> list[bytes]:
        fleet = Fleet(12, sites=3, seed=seed, fault_rate_per_machine_hour=30.0)
        return [b.SerializeToString() for k in range(1, 6) for b in fleet.tick(T0 + k * INTERVAL)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_signals_continuous_across_ticks():
    values = healthy_fleet(8, regime_dwell_s=60.0)
    arrays = run_arrays(values, 120)
    for name, v in arrays.items():
        per_tick = v.reshape(v.shape[0], v.shape[1], -1, 10)
        within = np.abs(np.diff(per_tick, axis=3))
        boundary = np.abs(per_tick[:, :, 1:, 0] - per_tick[:, :, :-1, -1])
        ratio = np.percentile(boundary, 95, axis=(0, 2)) / np.percentile(within, 95, axis=(0, 2, 3))
        assert np.all(ratio < 1.5), (name, ratio)


# -- physics ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hour_of_healthy_data() -> dict[str, np.ndarray]:
    return run_arrays(healthy_fleet(16), 720)  # one hour, regimes switching every ~5 min


def test_healthy_values_stay_in_the_operating_envelope(hour_of_healthy_data):
    for name, v in hour_of_healthy_data.items():
        for s, spec in enumerate(EQUIPMENT_TYPES[name].sensors):
            assert spec.lo <= v[:, s].min() and v[:, s].max() <= spec.hi, (name, spec.name)
            # and the load actually moves them through a good part of the envelope
            if spec.load_gain:
                assert np.ptp(v[:, s]) > 0.2 * abs(spec.load_gain), (name, spec.name)


def corr(v: np.ndarray, etype: str, a: str, b: str, lag: int = 0) -> float:
    ia, ib = EQUIPMENT_TYPES[etype].sensor_index(a), EQUIPMENT_TYPES[etype].sensor_index(b)
    n = v.shape[2] - lag
    return float(np.median([np.corrcoef(v[m, ia, :n], v[m, ib, lag:])[0, 1] for m in range(v.shape[0])]))


def test_load_driven_sensors_are_correlated(hour_of_healthy_data):
    d = hour_of_healthy_data
    assert corr(d["pump"], "pump", "motor_current", "vibration_rms") > 0.7
    assert corr(d["pump"], "pump", "motor_current", "flow") > 0.7
    assert corr(d["pump"], "pump", "flow", "discharge_pressure") < -0.7  # the pump curve
    assert corr(d["motor"], "motor", "current", "power") > 0.7
    assert corr(d["compressor"], "compressor", "motor_current", "discharge_temp") > 0.2
    # temperatures lag the load: current now correlates better with the temperature 5 min later
    assert corr(d["motor"], "motor", "current", "winding_temp", lag=600) > corr(
        d["motor"], "motor", "current", "winding_temp"
    )


# -- faults: each compared with an identical fleet without the fault ---------------------------
FAULT_START = T0 + 2 * INTERVAL + 1234
FAULT_END = FAULT_START + 4 * INTERVAL


def twin_runs(fault_type: str, ticks: int = 10, **kw):
    """(faulty, healthy) timestamps and values of pump-0001 sensor, plus the label."""
    sensors = kw.pop("sensors", ["bearing_temp"])
    faulty, healthy = healthy_fleet(), healthy_fleet()
    label = faulty.inject(fault_type, "pump-0001", FAULT_START, kw.pop("end", FAULT_END), sensors, **kw)
    out = {"faulty": [], "healthy": []}
    for k in range(1, ticks + 1):
        end = T0 + k * INTERVAL
        out["faulty"].append(faulty.tick(end))
        out["healthy"].append(healthy.tick(end))
    return out, label


def flat(batch_lists, sensor: str, equipment_id: str = "pump-0001") -> tuple[np.ndarray, np.ndarray]:
    ts, vs = [], []
    for batches in batch_lists:
        t, v = series(batches, equipment_id, sensor)
        ts += t
        vs += v
    return np.array(ts), np.array(vs)


@pytest.mark.parametrize("fault_type", ["step", "drift", "spike"])
def test_additive_faults_shift_only_inside_their_interval(fault_type):
    end = FAULT_START + 1000 if fault_type == "spike" else FAULT_END
    runs, label = twin_runs(fault_type, magnitude=30.0, end=end)
    t, faulty = flat(runs["faulty"], "bearing_temp")
    _, healthy = flat(runs["healthy"], "bearing_temp")
    inside = (t >= label.start_ms) & (t < label.end_ms)
    diff = faulty - healthy
    assert inside.sum() >= 2
    assert np.allclose(diff[~inside], 0.0)
    if fault_type == "drift":
        assert np.all(np.diff(diff[inside]) > 0) and 0 < diff[inside][-1] <= 30.0
        assert diff[inside][-1] > 25.0
    else:
        assert np.allclose(diff[inside], 30.0)
    # the other sensors of the machine are untouched
    for other in ("vibration_rms", "flow"):
        assert np.array_equal(flat(runs["faulty"], other)[1], flat(runs["healthy"], other)[1])


def test_spike_is_a_large_excursion_out_of_the_envelope():
    spec = EQUIPMENT_TYPES["pump"].sensors[EQUIPMENT_TYPES["pump"].sensor_index("discharge_pressure")]
    runs, label = twin_runs(FaultType.SPIKE, sensors=["discharge_pressure"], end=FAULT_START + 500)
    t, v = flat(runs["faulty"], "discharge_pressure")
    inside = (t >= label.start_ms) & (t < label.end_ms)
    assert inside.sum() == 1  # 500 ms = one sample at 2 Hz
    assert v[inside][0] > spec.hi and np.all(v[~inside] <= spec.hi)
    with pytest.raises(ValueError, match="between samples"):
        healthy_fleet().inject("spike", "pump-0001", FAULT_START, FAULT_START + 100)


def test_degradation_ramps_vibration_and_bearing_temperature_up():
    runs, label = twin_runs(FaultType.DEGRADATION, sensors=None, ticks=8)
    assert set(label.sensors) == {"vibration_rms", "bearing_temp", "motor_current"}
    for sensor in ("vibration_rms", "bearing_temp"):
        t, faulty = flat(runs["faulty"], sensor)
        _, healthy = flat(runs["healthy"], sensor)
        diff = faulty - healthy
        inside = (t >= label.start_ms) & (t < label.end_ms)
        assert np.allclose(diff[t < label.start_ms], 0.0)
        assert np.all(np.diff(diff[inside]) > 0)  # accelerating ramp
        magnitude = label.params["magnitudes"][sensor]
        assert 0.8 * magnitude < diff[inside][-1] <= magnitude
        assert np.allclose(diff[t >= label.end_ms], 0.0)  # repaired at end_ms


def test_stuck_sensor_repeats_one_value():
    runs, label = twin_runs(FaultType.STUCK, sensors=["flow"])
    t, faulty = flat(runs["faulty"], "flow")
    _, healthy = flat(runs["healthy"], "flow")
    inside = (t >= label.start_ms) & (t < label.end_ms)
    assert np.std(faulty[inside]) == 0.0 and np.std(healthy[inside]) > 0.0
    assert faulty[inside][0] == healthy[inside][0]  # holds its first reading
    assert np.array_equal(faulty[~inside], healthy[~inside])


def test_dropout_removes_samples_and_whole_sensors():
    runs, label = twin_runs(FaultType.DROPOUT, sensors=["speed"])
    t_f, v_f = flat(runs["faulty"], "speed")
    t_h, v_h = flat(runs["healthy"], "speed")
    inside = (t_h >= label.start_ms) & (t_h < label.end_ms)
    assert np.array_equal(t_f, t_h[~inside]) and np.array_equal(v_f, v_h[~inside])
    # a tick entirely inside the fault carries no speed series at all, but the other sensors
    tick4 = runs["faulty"][3]
    assert series(tick4, "pump-0001", "speed") == ([], [])
    assert len(series(tick4, "pump-0001", "flow")[0]) == 10

    runs, label = twin_runs(FaultType.DROPOUT, sensors=["speed"], probability=0.5)
    t_f, _ = flat(runs["faulty"], "speed")
    t_h, _ = flat(runs["healthy"], "speed")
    inside = (t_h >= label.start_ms) & (t_h < label.end_ms)
    kept = np.isin(t_h[inside], t_f)
    assert 0 < kept.sum() < inside.sum()
    assert np.isin(t_h[~inside], t_f).all()


def test_machine_with_every_sensor_dropped_sends_nothing():
    fleet = healthy_fleet(4)
    sensors = list(EQUIPMENT_TYPES["motor"].sensor_names)
    fleet.inject("dropout", "motor-0001", T0, T0 + 10 * INTERVAL, sensors)
    batches = fleet.tick(T0 + INTERVAL)
    assert "motor-0001" not in {b.equipment_id for b in batches} and len(batches) == 3


def test_inject_validates_its_arguments():
    fleet = healthy_fleet(4)
    with pytest.raises(KeyError, match="no machine"):
        fleet.inject("step", "pump-9999", T0, T0 + 1000)
    with pytest.raises(KeyError, match="has no sensor"):
        fleet.inject("step", "pump-0001", T0, T0 + 1000, ["voltage"])
    with pytest.raises(ValueError, match="after start_ms"):
        fleet.inject("step", "pump-0001", T0, T0)
    with pytest.raises(ValueError, match="gremlins"):
        fleet.inject("gremlins", "pump-0001", T0, T0 + 1000)


# -- random faults and ground truth ---------------------------------------------------------
def test_random_faults_are_labelled_in_ground_truth(tmp_path):
    path = tmp_path / "gt" / "truth.jsonl"
    with GroundTruthWriter(path) as writer:
        fleet = Fleet(40, sites=4, seed=5, fault_rate_per_machine_hour=60.0, ground_truth=writer)
        late = fleet.inject("step", "fan-0001", T0 + 10**9, T0 + 10**9 + 5000, ["speed"], magnitude=5.0)
        active: list = []
        for k in range(1, 31):
            fleet.tick(T0 + k * INTERVAL)
            active += [lab for lab in fleet.last_labels if lab not in active]
    labels = read_ground_truth(path)
    assert labels == active and len(labels) > 5
    assert late not in labels  # never reached: not written
    assert {lab.fault_type for lab in labels} >= {"step", "spike", "drift", "degradation"}
    for lab in labels:
        machine = fleet.machine(lab.machine)
        assert (lab.site, lab.equipment_type) == (machine.site, machine.equipment_type)
        assert lab.start_ms < lab.end_ms and lab.start_ms <= T0 + 30 * INTERVAL
        assert set(lab.sensors) <= set(EQUIPMENT_TYPES[lab.equipment_type].sensor_names)
    # random faults never overlap on one machine
    by_machine: dict[str, list] = {}
    for lab in labels:
        by_machine.setdefault(lab.machine, []).append(lab)
    for labs in by_machine.values():
        labs.sort(key=lambda lab: lab.start_ms)
        assert all(a.end_ms <= b.start_ms for a, b in zip(labs, labs[1:], strict=False))
    with GroundTruthWriter(path) as writer:  # appends
        writer.write(labels[:1])
    assert len(read_ground_truth(path)) == len(labels) + 1
    assert read_ground_truth(tmp_path / "missing.jsonl") == []
    path.write_text('{"machine": "x"}\n')
    with pytest.raises(ValueError, match="truth.jsonl:1"):
        read_ground_truth(path)


def test_sequence_numbers_increase_per_machine():
    fleet = healthy_fleet(6)
    seen: dict[str, list[int]] = {}
    for end in (T0 + INTERVAL, T0 + 2 * INTERVAL, T0 + 5 * INTERVAL):
        for b in fleet.tick(end):
            seen.setdefault(b.equipment_id, []).append(b.sequence)
            assert b.sent_at_ms == end
    assert all(seqs == sorted(set(seqs)) and len(seqs) == 3 for seqs in seen.values())
    with pytest.raises(ValueError, match="overlaps"):
        fleet.tick(T0 + 5 * INTERVAL + 1000)


# -- runner ----------------------------------------------------------------------------------
def sim_settings(tmp_path, **sim) -> Settings:
    sim.setdefault("sites", 2)
    return Settings(data_dir=tmp_path, simulator=SimulatorSettings(**sim))


class Ack:
    def __init__(self, n: int) -> None:
        self.accepted_batches, self.rejected_batches, self.duplicate_batches = n, 0, 0


def test_fast_mode_runner_sends_every_batch_once(tmp_path):
    settings = sim_settings(tmp_path, fault_rate_per_machine_hour=20.0)
    received: dict[int, list[telemetry_pb2.ReadingBatch]] = {}
    closed = []

    class Client:
        def __init__(self, i: int) -> None:
            self.i = i
            received[i] = []

        def send(self, batches):
            received[self.i].extend(batches)
            return Ack(len(batches))

        def close(self) -> None:
            closed.append(self.i)

    ticks: list[TickStats] = []
    summary = run_simulation(
        settings,
        machines=10,
        duration_s=60,
        realtime=False,
        start_ms=T0,
        streams=3,
        on_tick=ticks.append,
        make_sender=lambda i: Client(i).send,
    )
    assert summary.ticks == len(ticks) == 12 and summary.batches == 120 == summary.accepted_batches
    assert summary.send_errors == 0 and sorted(closed) == [0, 1, 2]
    assert [t.end_ms for t in ticks] == [T0 + k * INTERVAL for k in range(1, 13)]
    everything = [b for batches in received.values() for b in batches]
    assert len(everything) == 120 and summary.points == sum(len(s.values) for b in everything for s in b.sensors)
    for batches in received.values():  # each machine stays on one stream, in order
        per_machine: dict[str, list[int]] = {}
        for b in batches:
            per_machine.setdefault(b.equipment_id, []).append(b.sequence)
        assert all(len(s) == 12 and s == sorted(s) for s in per_machine.values())
    assert len(read_ground_truth(settings.ground_truth_path)) == summary.faults > 0


def test_runner_counts_send_errors_and_keeps_going(tmp_path):
    calls = []

    def flaky(batches):
        calls.append(len(batches))
        if len(calls) % 2:
            raise ConnectionError("edge unreachable")
        return None

    summary = run_simulation(sim_settings(tmp_path), flaky, machines=4, duration_s=20, realtime=False, streams=1)
    assert summary.ticks == 4 and summary.send_errors == 8 and summary.unacknowledged_batches == 8
    with pytest.raises(ValueError, match="exactly one"):
        run_simulation(sim_settings(tmp_path), None, machines=4, duration_s=5, realtime=False)


def test_realtime_runner_follows_the_clock_and_stops(tmp_path):
    settings = sim_settings(tmp_path, batch_interval_s=0.2, samples_per_sensor=4)
    stop = threading.Event()
    ticks: list[TickStats] = []

    def on_tick(stats: TickStats) -> None:
        ticks.append(stats)
        if len(ticks) == 3:
            stop.set()

    summary = run_simulation(settings, lambda b: None, machines=5, duration_s=None, on_tick=on_tick, stop=stop)
    # stop is seen before the next tick unless the machine stalls for a whole interval
    assert summary.ticks in (3, 4) and summary.batches == 5 * summary.ticks
    ends = [t.end_ms for t in ticks]
    assert all(e % 200 == 0 for e in ends) and np.all(np.diff(ends) >= 200)
    assert all(t.lag_s >= 0 for t in ticks)


def test_batches_pass_edge_validation_with_the_fleet_registry(tmp_path):
    from edge.validation import BatchValidator
    from vigil.settings import EdgeSettings

    fleet = Fleet(40, sites=4, seed=9, fault_rate_per_machine_hour=120.0)
    fleet.inject("dropout", "pump-0002", T0, T0 + 60_000, ["flow", "speed"], probability=0.5)
    validator = BatchValidator(EdgeSettings(equipment_registry=fleet.write_registry(tmp_path / "registry.csv")))
    for k in range(1, 13):
        end = T0 + k * INTERVAL
        for batch in fleet.tick(end):
            result = validator.validate(batch, now_ms=end)
            assert result.reason is None, (batch.equipment_id, result.reason, result.detail)
    assert fleet.fault_history
