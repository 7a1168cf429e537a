"""A fleet of simulated machines producing one ReadingBatch per machine per tick."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.proto import telemetry_pb2
from edge.simulator.equipment import EQUIPMENT_TYPES, EquipmentType, Machine, build_machines
from edge.simulator.faults import (
    FAULT_MIXES,
    ActiveFault,
    FaultLabel,
    FaultType,
    apply_faults,
    make_fault,
    random_fault,
)
from edge.simulator.ground_truth import GroundTruthWriter
from edge.simulator.signals import SignalGenerator, SiteClimate

if TYPE_CHECKING:
    from vigil.settings import Settings

MS_PER_HOUR = 3_600_000


@dataclass
class GroupArrays:
    """One equipment type's samples for a tick (before conversion to protobuf)."""

    etype: EquipmentType
    machine_index: np.ndarray  # (m,) fleet positions of the group's machines
    t_ms: np.ndarray  # (m, samples) int64 epoch ms
    values: np.ndarray  # (m, sensors, samples) float64, NaN where a sample dropped out


@dataclass
class _Group:
    etype: EquipmentType
    machine_index: np.ndarray
    generator: SignalGenerator


class Fleet:
    """Machines of several equipment types; :meth:`tick` returns their batches for one interval.

    Deterministic for a given seed and sequence of ``tick``/``inject`` calls: signals, per-machine
    variation, random faults and dropouts each draw from their own seeded stream, so injecting a
    fault explicitly does not change the healthy signals of other machines.
    """

    def __init__(
        self,
        n_machines: int,
        sites: int = 4,
        seed: int = 7,
        samples_per_sensor: int = 10,
        batch_interval_s: float = 5.0,
        fault_rate_per_machine_hour: float = 0.5,
        ground_truth: GroundTruthWriter | None = None,
        equipment_types: Sequence[str] | None = None,
        regime_dwell_s: float = 1200.0,
        id_prefix: str = "",
        fault_mix: str = "generic",
    ) -> None:
        if fault_mix not in FAULT_MIXES:
            raise ValueError(f"unknown fault mix {fault_mix!r}; choose one of {', '.join(FAULT_MIXES)}")
        self.fault_mix = FAULT_MIXES[fault_mix]
        self.interval_ms = int(round(batch_interval_s * 1000))
        if self.interval_ms < samples_per_sensor:
            raise ValueError(
                f"{samples_per_sensor} samples per sensor do not fit in {self.interval_ms} ms at 1 ms resolution"
            )
        self.samples = samples_per_sensor
        self.fault_rate = fault_rate_per_machine_hour
        self.ground_truth = ground_truth
        self.machines: list[Machine] = build_machines(n_machines, sites, equipment_types, id_prefix)
        self._by_id = {m.equipment_id: m for m in self.machines}
        seeds = np.random.SeedSequence(seed).spawn(4 + len(EQUIPMENT_TYPES))
        climate_rng, phase_rng, self._fault_rng, self._dropout_rng = (np.random.default_rng(s) for s in seeds[:4])
        self.climate = SiteClimate.random(sites, climate_rng)
        # Sample k of a tick ending at E is at E - interval + offsets[k] - phase[machine]: gateways do
        # not sample in lockstep, and every sample stays inside (E - interval, E].
        self._offsets = np.round(np.arange(1, samples_per_sensor + 1) * self.interval_ms / samples_per_sensor)
        self._offsets = self._offsets.astype(np.int64)
        min_spacing = int(np.diff(np.concatenate([[0], self._offsets])).min())
        self.phase_ms = phase_rng.integers(0, min_spacing, n_machines).astype(np.int64)
        self.sample_interval_ms = self.interval_ms / samples_per_sensor

        site_idx = np.array([int(m.site.rsplit("-", 1)[1]) - 1 for m in self.machines])
        self._groups: dict[str, _Group] = {}
        self._row: dict[str, tuple[str, int]] = {}  # equipment_id -> (type, row in group)
        for i, name in enumerate(EQUIPMENT_TYPES):
            idx = np.array([m.index for m in self.machines if m.equipment_type == name], dtype=np.intp)
            if idx.size == 0:
                continue
            gen = SignalGenerator(
                EQUIPMENT_TYPES[name],
                site_idx[idx],
                self.climate,
                np.random.default_rng(seeds[4 + i]),
                samples_per_sensor,
                self.interval_ms,
                regime_dwell_s,
            )
            self._groups[name] = _Group(EQUIPMENT_TYPES[name], idx, gen)
            for row, mi in enumerate(idx):
                self._row[self.machines[mi].equipment_id] = (name, row)

        self._faults: list[ActiveFault] = []  # scheduled or active, not yet over
        self._busy_until = np.zeros(n_machines, dtype=np.int64)  # random faults never overlap on a machine
        self.fault_history: list[FaultLabel] = []  # every fault ever scheduled, in order
        self.last_end_ms: int | None = None
        self.last_labels: list[FaultLabel] = []  # faults affecting the last tick
        self.last_points = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, machines: int | None = None, ground_truth: GroundTruthWriter | None = None
    ) -> Fleet:
        sim = settings.simulator
        return cls(
            machines or sim.machines,
            sites=sim.sites,
            seed=sim.seed,
            samples_per_sensor=sim.samples_per_sensor,
            batch_interval_s=sim.batch_interval_s,
            fault_rate_per_machine_hour=sim.fault_rate_per_machine_hour,
            ground_truth=ground_truth,
            fault_mix=sim.fault_mix,
        )

    # -- faults ---------------------------------------------------------------------------
    def inject(
        self,
        fault_type: FaultType | str,
        equipment_id: str,
        start_ms: int,
        end_ms: int,
        sensors: Sequence[str] | None = None,
        magnitude: float | Mapping[str, float] | None = None,
        probability: float = 1.0,
    ) -> FaultLabel:
        """Schedule a fault on one machine (see :func:`edge.simulator.faults.make_fault` for defaults)."""
        machine = self.machine(equipment_id)
        label = make_fault(
            machine,
            EQUIPMENT_TYPES[machine.equipment_type],
            fault_type,
            start_ms,
            end_ms,
            sensors,
            magnitude,
            probability,
            self.sample_interval_ms,
        )
        self.add_fault(label)
        return label

    def add_fault(self, label: FaultLabel) -> None:
        """Schedule a fault given as a label (e.g. replayed from a ground-truth file)."""
        name, row = self._row_of(label.machine)
        self._faults.append(ActiveFault.compile(label, row, self._groups[name].etype))
        mi = self._by_id[label.machine].index
        self._busy_until[mi] = max(self._busy_until[mi], label.end_ms)
        self.fault_history.append(label)

    def machine(self, equipment_id: str) -> Machine:
        try:
            return self._by_id[equipment_id]
        except KeyError:
            raise KeyError(
                f"no machine {equipment_id!r} in this fleet of {len(self.machines)} "
                f"(ids look like {self.machines[0].equipment_id})"
            ) from None

    def _row_of(self, equipment_id: str) -> tuple[str, int]:
        self.machine(equipment_id)
        return self._row[equipment_id]

    def _schedule_random(self, tick_start: int) -> None:
        """Poisson arrivals per machine at ``fault_rate`` per hour, starting inside this tick."""
        n = len(self.machines)
        draws = self._fault_rng.random(n)
        if self.fault_rate <= 0:
            return
        p = 1.0 - np.exp(-self.fault_rate * self.interval_ms / MS_PER_HOUR)
        for mi in np.flatnonzero((draws < p) & (self._busy_until <= tick_start)):
            machine = self.machines[mi]
            start = tick_start + 1 + int(self._fault_rng.integers(self.interval_ms))
            label = random_fault(
                machine,
                EQUIPMENT_TYPES[machine.equipment_type],
                start,
                self.sample_interval_ms,
                self._fault_rng,
                self.fault_mix,
            )
            self.add_fault(label)

    # -- ticks ----------------------------------------------------------------------------
    def sample_times(self, end_ms: int) -> np.ndarray:
        """Sample timestamps (machines, samples), all in (end_ms - interval, end_ms]."""
        return (end_ms - self.interval_ms + self._offsets)[None, :] - self.phase_ms[:, None]

    def generate(self, end_ms: int) -> list[GroupArrays]:
        """Advance the simulation by one interval ending at ``end_ms`` and return the raw arrays."""
        end_ms = int(end_ms)
        if self.last_end_ms is not None and end_ms - self.last_end_ms < self.interval_ms:
            raise ValueError(
                f"tick ending at {end_ms} overlaps the previous one ending at {self.last_end_ms}; "
                f"ticks must advance by at least the batch interval ({self.interval_ms} ms)"
            )
        tick_start = end_ms - self.interval_ms
        self._schedule_random(tick_start)
        self._faults = [f for f in self._faults if f.label.end_ms > tick_start + 1]
        active = [f for f in self._faults if f.label.overlaps(tick_start, end_ms)]
        t_all = self.sample_times(end_ms)
        out = []
        for name, group in self._groups.items():
            t_ms = t_all[group.machine_index]
            values = group.generator.generate(t_ms, end_ms)
            faults = [f for f in active if f.label.equipment_type == name]
            apply_faults(values, t_ms, faults, self._dropout_rng)
            out.append(GroupArrays(group.etype, group.machine_index, t_ms, values))
        self.last_labels = [f.label for f in active]
        new = [f for f in active if not f.written]
        for f in new:
            f.written = True
        if self.ground_truth is not None and new:
            self.ground_truth.write(f.label for f in new)
        self.last_end_ms = end_ms
        return out

    def tick(self, end_ms: int, sent_at_ms: int | None = None) -> list[telemetry_pb2.ReadingBatch]:
        """One batch per machine (fleet order) covering (end_ms - interval, end_ms].

        ``sequence`` is the tick's index since the epoch (``end_ms // interval``): increasing per
        machine and never re-used by a restarted simulator, so the edge's re-send detection holds.
        Sensors that dropped out entirely are left out; a machine with no sensor left sends nothing.
        ``self.last_labels`` then holds the faults affecting this tick.
        """
        groups = self.generate(end_ms)
        sequence = end_ms // self.interval_ms
        sent = end_ms if sent_at_ms is None else sent_at_ms
        batches: list[telemetry_pb2.ReadingBatch | None] = [None] * len(self.machines)
        points = 0
        batch_cls = telemetry_pb2.ReadingBatch
        for g in groups:
            meta = [(s.name, s.unit) for s in g.etype.sensors]
            missing = np.isnan(g.values)
            points += g.values.size - int(missing.sum())
            partial = missing.any(axis=2)
            partial_rows = set(np.flatnonzero(partial.any(axis=1)).tolist())
            vals = g.values.tolist()
            times = g.t_ms.tolist()
            for row, mi in enumerate(g.machine_index.tolist()):
                m = self.machines[mi]
                batch = batch_cls(
                    equipment_id=m.equipment_id,
                    site=m.site,
                    equipment_type=m.equipment_type,
                    gateway_id=m.gateway_id,
                    sequence=sequence,
                    sent_at_ms=sent,
                )
                add = batch.sensors.add
                ts_row, v_row = times[row], vals[row]
                if row not in partial_rows:
                    for s, (name, unit) in enumerate(meta):
                        add(sensor=name, unit=unit, timestamps_ms=ts_row, values=v_row[s])
                else:
                    for s, (name, unit) in enumerate(meta):
                        if not partial[row, s]:
                            add(sensor=name, unit=unit, timestamps_ms=ts_row, values=v_row[s])
                            continue
                        keep = ~missing[row, s]
                        if keep.any():
                            add(
                                sensor=name,
                                unit=unit,
                                timestamps_ms=g.t_ms[row][keep].tolist(),
                                values=g.values[row, s][keep].tolist(),
                            )
                    if not batch.sensors:
                        continue
                batches[mi] = batch
        self.last_points = points
        return [b for b in batches if b is not None]

    # -- metadata -------------------------------------------------------------------------
    def write_registry(self, path: Path | str) -> Path:
        """CSV of the fleet (equipment_id first), usable as ``settings.edge.equipment_registry``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["equipment_id", "site", "line", "equipment_type", "gateway_id"])
            for m in self.machines:
                writer.writerow([m.equipment_id, m.site, m.line, m.equipment_type, m.gateway_id])
        return path
