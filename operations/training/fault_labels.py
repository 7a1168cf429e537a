"""Known faults in ClickHouse: what the diagnostic agent's classifier learns from (``vigil labels import``).

Two sources, one table (sql/clickhouse/006_fault_labels.sql):

- the simulator's ground truth (JSON lines, ``settings.ground_truth_path``: machine, site, equipment_type,
  sensors, fault_type, start_ms, end_ms, params), whose fault types map to the agent's classes exactly as
  the offline evaluation maps them (agents.diagnostic.DIAGNOSIS_OF_FAULT);
- a plant's confirmed faults, e.g. exported from its maintenance system: CSV with ``equipment_id,
  fault_type, start, end`` and optionally ``site, equipment_type, sensors`` (``;``-separated names),
  fault_type one of the agent's classes (``bearing_wear``, ``overheating``, ...), times in ISO 8601
  (UTC when they carry no zone).

Every label gets a ``label_id`` digest of its content, so importing a file twice changes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from agents.diagnostic import DIAGNOSIS_OF_FAULT
from edge.simulator.faults import FaultLabel
from operations.evaluate.sim import fault_category
from vigil.settings import Settings

CLASSES = frozenset(DIAGNOSIS_OF_FAULT.values())
COLUMNS = (
    "label_id",
    "equipment_id",
    "site",
    "equipment_type",
    "fault_type",
    "diagnosis",
    "sensors",
    "start_ms",
    "end_ms",
    "source",
)


class LabelFileError(ValueError):
    """A label file that cannot be imported; the message names the line or column."""


def _label_id(frame: pd.DataFrame) -> pd.Series:
    parts = (
        frame["equipment_id"]
        + "\x1f"
        + frame["fault_type"]
        + "\x1f"
        + frame["start_ms"].astype(str)
        + "\x1f"
        + frame["end_ms"].astype(str)
        + "\x1f"
        + frame["sensors"].map(";".join)
    )
    return parts.map(lambda text: hashlib.sha256(text.encode()).hexdigest()[:24])


def read_simulator_labels(path: Path) -> pd.DataFrame:
    """The simulator's ground-truth JSON lines as label rows (:data:`COLUMNS`)."""
    rows = []
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
                label = FaultLabel(
                    machine=data["machine"],
                    site=data.get("site", ""),
                    equipment_type=data["equipment_type"],
                    sensors=tuple(data.get("sensors", ())),
                    fault_type=data["fault_type"],
                    start_ms=int(data["start_ms"]),
                    end_ms=int(data["end_ms"]),
                    params=data.get("params") or {},
                )
                diagnosis = DIAGNOSIS_OF_FAULT[fault_category(label)]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise LabelFileError(f"{path}:{number}: not a simulator fault label ({exc!r})") from exc
            rows.append(
                (
                    label.machine,
                    label.site,
                    label.equipment_type,
                    label.fault_type,
                    diagnosis,
                    list(label.sensors),
                    label.start_ms,
                    label.end_ms,
                )
            )
    return _frame(rows, "simulator")


def read_work_orders(path: Path) -> pd.DataFrame:
    """A CSV of confirmed faults (see the module docstring) as label rows."""
    try:
        data = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise LabelFileError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in ("equipment_id", "fault_type", "start", "end") if c not in data.columns]
    if missing:
        raise LabelFileError(
            f"{path}: columns {missing} missing; need equipment_id, fault_type, start, end "
            "(optional: site, equipment_type, sensors)"
        )
    unknown = sorted(set(data["fault_type"]) - CLASSES)
    if unknown:
        raise LabelFileError(f"{path}: fault_type {unknown} is not a diagnostic class; use one of {sorted(CLASSES)}")
    try:
        start = pd.to_datetime(data["start"], utc=True, format="ISO8601")  # each row may spell it its own way
        end = pd.to_datetime(data["end"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise LabelFileError(f"{path}: unreadable start/end time ({exc})") from exc
    bad = np.flatnonzero((end <= start).to_numpy())
    if bad.size:
        raise LabelFileError(f"{path}: row {int(bad[0]) + 2}: end is not after start")
    sensors = data.get("sensors", pd.Series([""] * len(data))).map(lambda s: [x for x in s.split(";") if x])
    rows = list(
        zip(
            data["equipment_id"],
            data.get("site", [""] * len(data)),
            data.get("equipment_type", [""] * len(data)),
            data["fault_type"],
            data["fault_type"],
            sensors,
            start.astype("int64") // 1_000_000,
            end.astype("int64") // 1_000_000,
            strict=True,
        )
    )
    return _frame(rows, "work_order")


def _frame(rows: list[tuple], source: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows,
        columns=["equipment_id", "site", "equipment_type", "fault_type", "diagnosis", "sensors", "start_ms", "end_ms"],
    )
    frame["start_ms"] = frame["start_ms"].astype(np.int64)
    frame["end_ms"] = frame["end_ms"].astype(np.int64)
    frame["source"] = source
    frame["label_id"] = _label_id(frame) if len(frame) else pd.Series(dtype=str)
    return frame[list(COLUMNS)]


def read_label_file(path: Path) -> pd.DataFrame:
    """Simulator JSON lines (``.jsonl``/``.json``) or a work-order CSV, by extension."""
    path = Path(path)
    if not path.exists():
        raise LabelFileError(f"{path} does not exist")
    return read_simulator_labels(path) if path.suffix in (".jsonl", ".json") else read_work_orders(path)


def insert_labels(client: Client, settings: Settings, labels: pd.DataFrame) -> int:
    """Write label rows to the fault-labels table; returns how many."""
    if labels.empty:
        return 0
    table = pa.table(
        {
            "label_id": labels["label_id"].to_numpy(str),
            "equipment_id": labels["equipment_id"].to_numpy(str),
            "site": labels["site"].to_numpy(str),
            "equipment_type": labels["equipment_type"].to_numpy(str),
            "fault_type": labels["fault_type"].to_numpy(str),
            "diagnosis": labels["diagnosis"].to_numpy(str),
            "sensors": pa.array(labels["sensors"].tolist(), type=pa.list_(pa.string())),
            "start": labels["start_ms"].to_numpy(np.int64).astype("datetime64[ms]"),
            "end": labels["end_ms"].to_numpy(np.int64).astype("datetime64[ms]"),
            "source": labels["source"].to_numpy(str),
        }
    )
    client.insert_arrow(settings.clickhouse.fault_labels_table, table)
    return table.num_rows


def query_labels(client: Client, settings: Settings, start_ms: int, end_ms: int) -> pd.DataFrame:
    """Labels overlapping [start_ms, end_ms), one row per label (duplicates of a re-import collapsed)."""
    frame = client.query_df(
        "SELECT label_id, any(equipment_id) AS equipment_id, any(site) AS site, "
        "any(equipment_type) AS equipment_type, any(fault_type) AS fault_type, any(diagnosis) AS diagnosis, "
        "any(sensors) AS sensors, toUnixTimestamp64Milli(any(start)) AS start_ms, "
        "toUnixTimestamp64Milli(any(end)) AS end_ms, any(source) AS source "
        f"FROM {settings.clickhouse.fault_labels_table} "
        "WHERE start < fromUnixTimestamp64Milli({e:Int64}) AND end > fromUnixTimestamp64Milli({s:Int64}) "
        "GROUP BY label_id ORDER BY equipment_id, start_ms",
        parameters={"s": start_ms, "e": end_ms},
    )
    if frame.empty:  # an empty result has no columns
        return pd.DataFrame(columns=list(COLUMNS))
    return frame[list(COLUMNS)]
