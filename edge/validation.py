"""Validation of incoming ``ReadingBatch`` messages against the limits in :class:`EdgeSettings`.

Bad data is rejected at the edge, with a machine-readable reason code and a human detail, so
that downstream (Flink windows, ClickHouse, alerts) can trust every record in the telemetry
topic. Each series is converted to numpy exactly once here; the arrays are handed on to
:func:`edge.chunking.batch_to_records` so the hot path never loops over points in Python.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import numpy as np

from edge.proto import telemetry_pb2
from vigil.settings import EdgeSettings

# Reason codes of the dead-letter contract (see the shared data contracts).
MALFORMED_PROTOBUF = "malformed_protobuf"
EMPTY_EQUIPMENT_ID = "empty_equipment_id"
INVALID_EQUIPMENT_ID = "invalid_equipment_id"
UNKNOWN_EQUIPMENT = "unknown_equipment"
NO_READINGS = "no_readings"
LENGTH_MISMATCH = "length_mismatch"
EMPTY_SENSOR_NAME = "empty_sensor_name"
DUPLICATE_SENSOR = "duplicate_sensor"
NAN_OR_INF = "nan_or_inf"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
OVERSIZED_BATCH = "oversized_batch"
SEQUENCE_JUMP = "sequence_jump"  # decided by the service, which holds the marks (edge/service.py)
FOREIGN_MACHINE = "foreign_machine"  # the registry binds the machine to another gateway than the caller

REASON_CODES: tuple[str, ...] = (
    MALFORMED_PROTOBUF,
    EMPTY_EQUIPMENT_ID,
    INVALID_EQUIPMENT_ID,
    UNKNOWN_EQUIPMENT,
    NO_READINGS,
    LENGTH_MISMATCH,
    EMPTY_SENSOR_NAME,
    DUPLICATE_SENSOR,
    NAN_OR_INF,
    TIMESTAMP_IN_FUTURE,
    TIMESTAMP_TOO_OLD,
    OVERSIZED_BATCH,
    SEQUENCE_JUMP,
    FOREIGN_MACHINE,
)


@dataclass(frozen=True, slots=True)
class SensorArrays:
    """One sensor's samples as numpy arrays (int64 epoch ms, float64 values)."""

    sensor: str
    unit: str
    ts: np.ndarray
    v: np.ndarray


@dataclass(frozen=True, slots=True)
class Validation:
    """Outcome of :meth:`BatchValidator.validate`: either ``ok`` with arrays, or the first problem."""

    reason: str | None = None
    detail: str = ""
    arrays: list[SensorArrays] = field(default_factory=list)
    points: int = 0
    # The gateway's clock error as it measured it (edge clock - gateway clock; 0 when not measured) and the
    # correction added to every time of the batch (whole seconds; 0 unless certain beyond the tolerance).
    clock_error_ms: int = 0
    clock_offset_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


def _fmt_ms(ts_ms: int) -> str:
    """Epoch ms as ISO-8601 UTC for error details (or the raw number if out of range)."""
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms"


@dataclass(frozen=True)
class RegistryEntry:
    """A registered machine; an empty field is one the registry does not fix (its CSV has no such column)."""

    site: str = ""
    equipment_type: str = ""
    gateway_id: str = ""


@lru_cache(maxsize=8)
def _load_registry(path: str, mtime_ns: int) -> Mapping[str, RegistryEntry]:
    """Machines from a CSV with an ``equipment_id`` column (cached per file version)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "equipment_id" not in reader.fieldnames:
            raise ValueError(
                f"equipment registry {path} has no 'equipment_id' column (columns: {reader.fieldnames}); "
                "fix the CSV header or unset edge.equipment_registry"
            )
        return MappingProxyType(
            {
                row["equipment_id"].strip(): RegistryEntry(
                    *((row.get(c) or "").strip() for c in ("site", "equipment_type", "gateway_id"))
                )
                for row in reader
                if row["equipment_id"]
            }
        )


def load_registry(path: Path) -> Mapping[str, RegistryEntry]:
    """Load the equipment registry once (re-read only if the file changed on disk)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"edge.equipment_registry points at {path}, which does not exist; "
            "create the CSV (equipment_id column) or unset the setting"
        )
    return _load_registry(str(path), path.stat().st_mtime_ns)


class BatchValidator:
    """Checks batches against one :class:`EdgeSettings`; build it once per process (compiles, loads CSV)."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self._id_pattern = re.compile(settings.equipment_id_pattern)
        self._registry = load_registry(settings.equipment_registry) if settings.equipment_registry else None
        self._future_ms = int(settings.max_future_skew_s * 1000)
        self._past_ms = int(settings.max_past_age_s * 1000)
        self._clock_tolerance_ms = settings.clock_tolerance_ms

    def _clock_correction(self, batch: telemetry_pb2.ReadingBatch, arrived_ms: int) -> tuple[int, int]:
        """(the gateway's clock error, the correction of the batch's times), both 0 unless measured.

        The error is the gateway's own two-way measurement (``clock_offset_ms``, uncertain by
        ``clock_uncertainty_ms``); the batch moves by it in whole seconds (the residual stays below the
        tolerance) only when it is certain beyond the tolerance, and consistent with the one-way view: a call
        cannot arrive before it was sent, so arrival - clock_ms must not be below the offset (else the clock
        was stepped since it was measured). Assumes the clock was off by as much when it sampled a replay."""
        uncertainty = batch.clock_uncertainty_ms
        if uncertainty <= 0 or not batch.clock_ms:
            return 0, 0
        error = batch.clock_offset_ms
        tolerance = self._clock_tolerance_ms
        if abs(error) - uncertainty <= tolerance or arrived_ms - batch.clock_ms < error - uncertainty - tolerance:
            return error, 0
        return error, round(error / 1000) * 1000

    def registered(self, equipment_id: str) -> RegistryEntry | None:
        """The machine's registry entry (None: no registry, or not in it)."""
        return None if self._registry is None else self._registry.get(equipment_id)

    def validate(
        self,
        batch: telemetry_pb2.ReadingBatch,
        now_ms: int | None = None,
        arrived_ms: int | None = None,
        gateway: str | None = None,
    ) -> Validation:
        """Return ``Validation(ok)`` with the numpy arrays, or the FIRST problem found.

        ``arrived_ms``: when the request carrying the batch reached the edge (default ``now_ms``), before it
        waited for a worker: the instant its ``clock_ms`` is checked against. ``gateway``: the caller's
        authenticated identity, which must be the machine's gateway when the registry names one."""
        s = self.settings
        eid = batch.equipment_id
        if not eid.strip():
            return Validation(EMPTY_EQUIPMENT_ID, "equipment_id is empty; every batch must name its machine")
        if not self._id_pattern.fullmatch(eid):
            return Validation(
                INVALID_EQUIPMENT_ID,
                f"equipment_id {eid[:80]!r} does not match the pattern {s.equipment_id_pattern!r}",
            )
        if self._registry is not None and eid not in self._registry:
            return Validation(
                UNKNOWN_EQUIPMENT,
                f"equipment_id {eid!r} is not in the equipment registry {s.equipment_registry}; "
                "register the machine there first",
            )
        if gateway is not None and self._registry is not None:
            owner = self._registry[eid].gateway_id
            if owner and owner != gateway:
                return Validation(
                    FOREIGN_MACHINE,
                    f"gateway {gateway[:80]!r} may not report for {eid!r}: the equipment registry binds it to "
                    f"gateway {owner!r}",
                )
        if not batch.sensors:
            return Validation(NO_READINGS, f"batch for {eid!r} has no sensor series")

        # Cheap size checks first, before any array is built.
        total = 0
        names: set[str] = set()
        for i, series in enumerate(batch.sensors):
            name = series.sensor
            if not name.strip():
                return Validation(EMPTY_SENSOR_NAME, f"sensors[{i}] of {eid!r} has an empty sensor name")
            if name in names:
                return Validation(DUPLICATE_SENSOR, f"sensor {name!r} appears more than once in the batch")
            names.add(name)
            n_ts, n_v = len(series.timestamps_ms), len(series.values)
            if n_ts != n_v:
                return Validation(
                    LENGTH_MISMATCH,
                    f"sensor {name!r} has {n_ts} timestamps but {n_v} values; they must be parallel arrays",
                )
            total += n_v
        if total == 0:
            return Validation(NO_READINGS, f"batch for {eid!r} has sensor series but no samples")
        if total > s.max_points_per_batch:
            return Validation(
                OVERSIZED_BATCH,
                f"batch for {eid!r} has {total} points, more than max_points_per_batch="
                f"{s.max_points_per_batch}; split it into smaller batches",
            )

        if now_ms is None:
            now_ms = int(time.time() * 1000)
        clock_error, offset = self._clock_correction(batch, arrived_ms or now_ms)
        newest_ok = now_ms + self._future_ms
        oldest_ok = now_ms - self._past_ms
        sent_at = batch.sent_at_ms + offset if batch.sent_at_ms else 0
        if sent_at > newest_ok:
            return Validation(
                TIMESTAMP_IN_FUTURE,
                f"sent_at_ms={batch.sent_at_ms} ({_fmt_ms(sent_at)}) is {(sent_at - now_ms) / 1000:.1f} s ahead of "
                f"the service clock (limit {s.max_future_skew_s:g} s): a promise from the future would close other "
                "machines' windows early; check the gateway's clock (NTP)",
            )
        arrays: list[SensorArrays] = []
        for series in batch.sensors:
            n = len(series.values)
            if n == 0:
                continue  # a sensor that produced nothing this interval is harmless
            v = np.fromiter(series.values, dtype=np.float64, count=n)
            ts = np.fromiter(series.timestamps_ms, dtype=np.int64, count=n)
            if offset:
                ts += offset
            name = series.sensor
            finite = np.isfinite(v)
            if not finite.all():
                idx = int(np.argmin(finite))
                what = "NaN" if np.isnan(v[idx]) else f"{float(v[idx])!r}"
                return Validation(NAN_OR_INF, f"sensor {name!r} value[{idx}] is {what}")
            t_max_i, t_min_i = int(ts.argmax()), int(ts.argmin())
            t_max, t_min = int(ts[t_max_i]), int(ts[t_min_i])
            if t_max > newest_ok:
                return Validation(
                    TIMESTAMP_IN_FUTURE,
                    f"sensor {name!r} timestamp[{t_max_i}]={t_max} ({_fmt_ms(t_max)}) is "
                    f"{(t_max - now_ms) / 1000:.1f} s ahead of the service clock (limit "
                    f"{s.max_future_skew_s:g} s)"
                    + (f" after correcting the gateway's clock by {offset / 1000:+.0f} s" if offset else "")
                    + "; check the gateway's clock (NTP)",
                )
            if t_min < oldest_ok:
                return Validation(
                    TIMESTAMP_TOO_OLD,
                    f"sensor {name!r} timestamp[{t_min_i}]={t_min} ({_fmt_ms(t_min)}) is "
                    f"{(now_ms - t_min) / 1000:.1f} s old (limit {s.max_past_age_s:g} s)",
                )
            arrays.append(SensorArrays(name, series.unit, ts, v))
        return Validation(arrays=arrays, points=total, clock_error_ms=clock_error, clock_offset_ms=offset)
