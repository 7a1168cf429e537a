"""Schemas agree with each other: protobuf <-> generated code, edge records <-> Flink DDL <-> ClickHouse."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from connectors.clickhouse import render_schema, window_stats_to_arrow
from edge.chunking import batch_to_records
from edge.proto import telemetry_pb2
from edge.validation import BatchValidator
from jobs.flink_env import render_sql
from jobs.registry import FLINK_JOBS
from tests.conftest import job_settings
from vigil.settings import PROJECT_ROOT, Settings

PROTO_DIR = PROJECT_ROOT / "edge" / "proto"


def test_generated_protobuf_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "telemetry.proto",
        ],
        check=True,
    )
    assert (tmp_path / "telemetry_pb2.py").read_text() == (PROTO_DIR / "telemetry_pb2.py").read_text(), (
        "edge/proto/telemetry_pb2.py is stale: regenerate it with `make proto`"
    )


def test_reading_batch_round_trips() -> None:
    batch = telemetry_pb2.ReadingBatch(
        equipment_id="pump-0001",
        site="site-1",
        equipment_type="pump",
        gateway_id="gw",
        sequence=3,
        sensors=[telemetry_pb2.SensorSeries(sensor="flow", unit="m3/h", timestamps_ms=[1, 2], values=[0.1, 0.2])],
    )
    again = telemetry_pb2.ReadingBatch.FromString(batch.SerializeToString())
    assert again == batch
    assert list(again.sensors[0].values) == [0.1, 0.2]


def _columns(ddl: str) -> list[str]:
    body = ddl[ddl.index("(") + 1 : ddl.rindex(") WITH")]
    names = []
    for line in body.splitlines():
        match = re.match(r"\s*`?([a-z0-9_]+)`?\s+[A-Z]", line)
        if match and not re.search(r"\bAS\b|METADATA|WATERMARK", line):
            names.append(match.group(1))
    return names


def test_edge_records_carry_exactly_the_flink_source_columns() -> None:
    settings = job_settings()
    now = 1_795_000_000_000
    batch = telemetry_pb2.ReadingBatch(
        equipment_id="pump-0001",
        site="site-1",
        equipment_type="pump",
        gateway_id="gw",
        sequence=1,
        sensors=[
            telemetry_pb2.SensorSeries(sensor="flow", unit="m3/h", timestamps_ms=[now, now + 1], values=[1.0, 2.0])
        ],
    )
    validation = BatchValidator(settings.edge).validate(batch, now_ms=now)
    assert validation.ok, validation.detail
    ((_, value),) = batch_to_records(batch, validation.arrays, settings.window.size_ms, now)
    record = orjson.loads(value)
    assert set(record) == set(_columns(render_sql("window_stats/telemetry_source", settings)))
    assert set(record["sensors"][0]) == {"sensor", "unit", "ts", "v"}


def test_flink_window_stats_output_is_what_the_cold_path_parses() -> None:
    settings = job_settings()
    columns = _columns(render_sql("window_stats/window_stats_sink", settings))
    record = dict.fromkeys(columns, 1)
    record |= {
        "equipment_id": "m",
        "site": "s",
        "equipment_type": "t",
        "sensor": "x",
        "unit": "u",
        "window_start_ms": 1_795_000_000_000,
        "window_end_ms": 1_795_000_005_000,
        "emitted_at_ms": 1_795_000_006_000,
        "avg": 1.5,
        "stddev": 0.5,
        "min": 1.0,
        "max": 2.0,
        "count": 2,
    }
    table, malformed = window_stats_to_arrow([orjson.dumps(record)])
    assert not malformed
    assert table.num_rows == 1
    assert table.column("avg").to_pylist() == [1.5]


@pytest.mark.parametrize("name", list(FLINK_JOBS))
def test_every_flink_job_renders_without_placeholders(name: str) -> None:
    job = importlib.import_module(FLINK_JOBS[name].module).JOB
    assert job.entry is FLINK_JOBS[name], "the module's JOB must be its registry entry's"
    sql = job.statements(job_settings())
    assert sql.ddl and sql.inserts
    for statement in sql.statements:
        assert not re.search(r"\{[a-z_]+\}", statement), statement


def test_clickhouse_schema_is_partitioned_ordered_and_has_ttl() -> None:
    ddl = "\n".join(render_schema(Settings().clickhouse))
    assert "PARTITION BY toDate(window_start)" in ddl
    assert "ORDER BY (equipment_id, sensor, window_start)" in ddl
    assert "TTL" in ddl and "ReplacingMergeTree" in ddl


def test_scoring_job_reads_exactly_what_the_window_job_writes() -> None:
    from jobs.anomaly_scoring import JOB

    settings = job_settings()
    ddl = JOB.statements(settings).ddl
    source = next(statement for statement in ddl if "CREATE TABLE window_stats_in" in statement)
    assert _columns(source) == _columns(render_sql("window_stats/window_stats_sink", settings))


def test_scoring_job_writes_exactly_the_anomaly_contract() -> None:
    from jobs.anomaly_scoring import JOB
    from vigil.contracts import anomaly_json_schema

    ddl = JOB.statements(job_settings()).ddl
    sink = next(statement for statement in ddl if "CREATE TABLE anomalies_out" in statement)
    assert _columns(sink) == list(anomaly_json_schema([]).names)
    assert "scores MAP<STRING, DOUBLE>," in sink
