"""Every edge reason code, with a detail that names what is wrong; a valid batch passes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge import validation as v
from edge.proto import telemetry_pb2
from vigil.settings import EdgeSettings, Settings, WindowSettings

NOW = 1_750_000_000_000


def make_batch(equipment_id: str = "pump-001", sensors: int = 3, samples: int = 10) -> telemetry_pb2.ReadingBatch:
    batch = telemetry_pb2.ReadingBatch(
        equipment_id=equipment_id, site="site-a", equipment_type="pump", gateway_id="gw", sequence=1
    )
    for s in range(sensors):
        series = batch.sensors.add(sensor=f"sensor_{s}", unit="degC")
        series.timestamps_ms.extend(NOW - 5000 + 500 * i for i in range(samples))
        series.values.extend(float(s * 100 + i) + 0.1 for i in range(samples))
    return batch


@pytest.fixture
def validator() -> v.BatchValidator:
    return v.BatchValidator(EdgeSettings())


def check(validator: v.BatchValidator, batch: telemetry_pb2.ReadingBatch) -> v.Validation:
    return validator.validate(batch, now_ms=NOW)


def test_valid_batch_passes_with_exact_arrays(validator: v.BatchValidator) -> None:
    batch = make_batch()
    result = check(validator, batch)
    assert result.ok, result.detail
    assert result.points == 30
    assert [a.sensor for a in result.arrays] == ["sensor_0", "sensor_1", "sensor_2"]
    assert result.arrays[1].ts.dtype == np.int64 and result.arrays[1].v.dtype == np.float64
    assert result.arrays[1].v.tolist() == list(batch.sensors[1].values)
    assert result.arrays[1].ts.tolist() == list(batch.sensors[1].timestamps_ms)


def test_empty_equipment_id(validator: v.BatchValidator) -> None:
    result = check(validator, make_batch(equipment_id=""))
    assert result.reason == v.EMPTY_EQUIPMENT_ID and "empty" in result.detail


@pytest.mark.parametrize("bad_id", ["-starts-with-dash", "has space", "x" * 65, "pump/1", "pump-1\n"])
def test_invalid_equipment_id(validator: v.BatchValidator, bad_id: str) -> None:
    result = check(validator, make_batch(equipment_id=bad_id))
    assert result.reason == v.INVALID_EQUIPMENT_ID
    assert "does not match the pattern" in result.detail


def test_unknown_equipment_only_with_registry(tmp_path: Path) -> None:
    registry = tmp_path / "registry.csv"
    registry.write_text("equipment_id,site\npump-001,site-a\npump-002,site-a\n")
    validator = v.BatchValidator(EdgeSettings(equipment_registry=registry))
    assert check(validator, make_batch("pump-002")).ok
    result = check(validator, make_batch("pump-999"))
    assert result.reason == v.UNKNOWN_EQUIPMENT
    assert "'pump-999'" in result.detail and str(registry) in result.detail
    # Without a registry any well-formed id is accepted.
    assert check(v.BatchValidator(EdgeSettings()), make_batch("pump-999")).ok


def test_the_registry_binds_machines_to_their_gateway_and_fixes_site_and_type(tmp_path: Path) -> None:
    registry = tmp_path / "registry.csv"
    registry.write_text("equipment_id,site,equipment_type,gateway_id\npump-001,site-a,pump,gw-a\nfan-001,,,\n")
    validator = v.BatchValidator(EdgeSettings(equipment_registry=registry))
    assert validator.registered("pump-001") == v.RegistryEntry("site-a", "pump", "gw-a")
    assert validator.registered("fan-001") == v.RegistryEntry()  # nothing fixed: the batch's claims stand
    assert validator.registered("pump-999") is None
    batch = make_batch("pump-001")
    assert validator.validate(batch, NOW, gateway="gw-a").ok
    result = validator.validate(batch, NOW, gateway="gw-b")
    assert result.reason == v.FOREIGN_MACHINE and "binds it to gateway 'gw-a'" in result.detail
    assert validator.validate(make_batch("fan-001"), NOW, gateway="gw-b").ok  # no gateway column value: any
    assert validator.validate(batch, NOW).ok  # no TLS identity (edge.tls off): nothing to bind


def test_registry_without_equipment_id_column_is_a_clear_error(tmp_path: Path) -> None:
    registry = tmp_path / "bad.csv"
    registry.write_text("machine,site\npump-001,site-a\n")
    with pytest.raises(ValueError, match="no 'equipment_id' column"):
        v.BatchValidator(EdgeSettings(equipment_registry=registry))


def test_no_sensors_and_no_points(validator: v.BatchValidator) -> None:
    result = check(validator, make_batch(sensors=0))
    assert result.reason == v.NO_READINGS and "no sensor series" in result.detail
    result = check(validator, make_batch(sensors=2, samples=0))
    assert result.reason == v.NO_READINGS and "no samples" in result.detail


def test_length_mismatch(validator: v.BatchValidator) -> None:
    batch = make_batch()
    batch.sensors[2].values.append(1.0)
    result = check(validator, batch)
    assert result.reason == v.LENGTH_MISMATCH
    assert result.detail.startswith("sensor 'sensor_2' has 10 timestamps but 11 values")


def test_empty_sensor_name(validator: v.BatchValidator) -> None:
    batch = make_batch()
    batch.sensors[1].sensor = ""
    result = check(validator, batch)
    assert result.reason == v.EMPTY_SENSOR_NAME and "sensors[1]" in result.detail


def test_duplicate_sensor(validator: v.BatchValidator) -> None:
    batch = make_batch()
    batch.sensors[2].sensor = "sensor_0"
    result = check(validator, batch)
    assert result.reason == v.DUPLICATE_SENSOR and "'sensor_0'" in result.detail


@pytest.mark.parametrize(("bad", "shown"), [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_nan_or_inf_names_sensor_and_index(validator: v.BatchValidator, bad: float, shown: str) -> None:
    batch = make_batch()
    batch.sensors[1].values[3] = bad
    result = check(validator, batch)
    assert result.reason == v.NAN_OR_INF
    assert result.detail == f"sensor 'sensor_1' value[3] is {shown}"


def test_timestamp_in_future(validator: v.BatchValidator) -> None:
    batch = make_batch()
    batch.sensors[0].timestamps_ms[7] = NOW + 2_001
    result = check(validator, batch)
    assert result.reason == v.TIMESTAMP_IN_FUTURE
    assert "sensor 'sensor_0' timestamp[7]" in result.detail and "2.0 s ahead" in result.detail
    # Exactly at the skew limit (2 s, below the window's 3-s allowed lateness) is still fine.
    batch.sensors[0].timestamps_ms[7] = NOW + 2_000
    assert check(validator, batch).ok


def test_a_promise_from_the_future_is_refused(validator: v.BatchValidator) -> None:
    """sent_at promises everything before it was sent: one far ahead would close every machine's windows."""
    batch = make_batch()
    batch.sent_at_ms = NOW + 3_600_000
    result = check(validator, batch)
    assert result.reason == v.TIMESTAMP_IN_FUTURE and "sent_at_ms" in result.detail and "NTP" in result.detail
    batch.sent_at_ms = NOW + 2_000
    assert check(validator, batch).ok


def test_future_skew_may_not_exceed_the_allowed_lateness() -> None:
    with pytest.raises(ValueError, match="must not exceed window.allowed_lateness_ms"):
        Settings(edge=EdgeSettings(max_future_skew_s=60.0))
    assert Settings(edge=EdgeSettings(max_future_skew_s=60.0), window=WindowSettings(allowed_lateness_ms=60_000))


def behind(batch, ms: int):  # noqa: ANN001, ANN201
    """``batch`` sampled on a clock ``ms`` behind the edge's: every sample time ``ms`` earlier."""
    for series in batch.sensors:
        shifted = [t - ms for t in series.timestamps_ms]
        del series.timestamps_ms[:]
        series.timestamps_ms.extend(shifted)
    return batch


def measured(batch, offset_ms: int, uncertainty_ms: int, clock_ms: int | None = None):  # noqa: ANN001, ANN201
    """``batch`` stamped as the gateway client does: its clock, and the offset it measured against the edge."""
    batch.clock_offset_ms, batch.clock_uncertainty_ms = offset_ms, uncertainty_ms
    batch.clock_ms = NOW - offset_ms if clock_ms is None else clock_ms
    return batch


def test_a_gateway_clock_off_by_more_than_the_tolerance_is_corrected_in_whole_seconds(
    validator: v.BatchValidator,
) -> None:
    """The gateway measured its clock against the edge's (offset, uncertain by half a round trip): the edge
    moves every time of the batch by it, rounded to seconds, so a few ms never move a sample across a window."""
    batch = measured(behind(make_batch(), 30_000), 30_037, 20)  # 30 s behind, measured to within 20 ms
    original = list(batch.sensors[0].timestamps_ms)
    result = check(validator, batch)
    assert result.ok, result.detail
    assert (result.clock_error_ms, result.clock_offset_ms) == (30_037, 30_000)
    assert result.arrays[0].ts.tolist() == [t + 30_000 for t in original]
    measured(batch, 1_000, 20)  # within the tolerance (1 s): untouched
    assert check(validator, batch).arrays[0].ts.tolist() == original
    measured(batch, 0, 0, clock_ms=NOW - 30_000)  # not measured: a one-way view alone moves nothing
    assert check(validator, batch).clock_offset_ms == 0
    # A clock far ahead: corrected back, then within the future limit (uncorrected it would be refused).
    ahead = make_batch()
    for series in ahead.sensors:
        shifted = [t + 120_000 for t in series.timestamps_ms]
        del series.timestamps_ms[:]
        series.timestamps_ms.extend(shifted)
    assert check(validator, ahead).reason == v.TIMESTAMP_IN_FUTURE
    corrected = check(validator, measured(ahead, -120_000, 15))
    assert corrected.ok and corrected.clock_offset_ms == -120_000
    assert corrected.arrays[2].ts.tolist() == list(make_batch().sensors[2].timestamps_ms)


def test_a_clock_error_the_path_could_explain_or_a_stale_one_moves_nothing(validator: v.BatchValidator) -> None:
    # Measured over a slow path (a round trip of 20 s): 9 s behind is within what the delay could make it look.
    assert check(validator, measured(make_batch(), 9_000, 10_000)).clock_offset_ms == 0
    assert check(validator, measured(behind(make_batch(), 12_000), 12_000, 10_000)).clock_offset_ms == 12_000
    # The gateway says its clock is 30 s behind, but this call arrived as stamped: its clock was stepped since.
    assert check(validator, measured(make_batch(), 30_000, 20, clock_ms=NOW)).clock_offset_ms == 0


def test_timestamp_too_old(validator: v.BatchValidator) -> None:
    batch = make_batch()
    batch.sensors[2].timestamps_ms[0] = NOW - 2 * 3600 * 1000 - 1
    result = check(validator, batch)
    assert result.reason == v.TIMESTAMP_TOO_OLD
    assert "sensor 'sensor_2' timestamp[0]" in result.detail and "limit 7200 s" in result.detail


def test_oversized_batch() -> None:
    validator = v.BatchValidator(EdgeSettings(max_points_per_batch=29))
    result = check(validator, make_batch(sensors=3, samples=10))
    assert result.reason == v.OVERSIZED_BATCH
    assert "30 points" in result.detail and "max_points_per_batch=29" in result.detail
    assert v.BatchValidator(EdgeSettings(max_points_per_batch=30)).validate(make_batch(), NOW).ok


def test_first_problem_wins(validator: v.BatchValidator) -> None:
    """The equipment id is checked before the samples: only the first problem is reported."""
    batch = make_batch(equipment_id="")
    batch.sensors[0].values[0] = math.nan
    assert check(validator, batch).reason == v.EMPTY_EQUIPMENT_ID


def test_every_reason_code_is_exercised() -> None:
    """Guard: a new reason code needs a test here (malformed_protobuf and sequence_jump: in the service's)."""
    tested = {
        v.EMPTY_EQUIPMENT_ID,
        v.INVALID_EQUIPMENT_ID,
        v.UNKNOWN_EQUIPMENT,
        v.NO_READINGS,
        v.LENGTH_MISMATCH,
        v.EMPTY_SENSOR_NAME,
        v.DUPLICATE_SENSOR,
        v.NAN_OR_INF,
        v.TIMESTAMP_IN_FUTURE,
        v.TIMESTAMP_TOO_OLD,
        v.OVERSIZED_BATCH,
        v.MALFORMED_PROTOBUF,
        v.SEQUENCE_JUMP,  # the service's (tests/integration/test_edge_service.py)
        v.FOREIGN_MACHINE,
    }
    assert tested == set(v.REASON_CODES)
