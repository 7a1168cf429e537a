"""ClickHouse access for the cold path: client, schema, and Kafka JSON records as Arrow tables.

One converter serves every topic: a :class:`RecordSpec` names the JSON contract, the table's
Arrow shape and the checks a record must pass (window stats, anomaly verdicts).

Works against the local chDB-backed server (``operations.stack.clickhouse``) and against any
real ClickHouse; the only difference is ``settings.clickhouse``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from connectors.clickhouse_access import VigilTables
from vigil.contracts import (
    ANOMALY_KINDS,
    INSIGHT_JSON_SCHEMA,
    INSIGHT_SEVERITIES,
    SCORES_FIELD,
    SEVERITIES,
    WINDOW_STATS_JSON_SCHEMA,
    WINDOW_STATS_MARKER_PREFIX,
    anomaly_json_schema,
)
from vigil.settings import PROJECT_ROOT, ClickHouseSettings

log = logging.getLogger(__name__)

SCHEMA_DIR = PROJECT_ROOT / "sql" / "clickhouse"
# Object names; the SQL files get them through placeholders, so they are defined only here.
WINDOW_STATS_TABLE = "window_stats"
# One row per (equipment_id, sensor, window_start): what every reader should query.
WINDOW_STATS_VIEW = "window_stats_latest"
MACHINE_STATE_TABLE = "machine_state"
MALFORMED_REASON = "malformed_window_stats"
ANOMALY_MALFORMED_REASON = "malformed_anomaly"
INSIGHT_MALFORMED_REASON = "malformed_insight"

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AUTH_CODES = {192, 193, 194, 516}  # UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED

_TS = pa.timestamp("ms", tz="UTC")
# LowCardinality columns travel dictionary-encoded: ClickHouse ingests them ~12% faster (measured).
_DICT = pa.dictionary(pa.int32(), pa.string())
# Column order and types of the ClickHouse table (inserted_at is filled by the server).
WINDOW_STATS_ARROW_SCHEMA = pa.schema(
    [
        ("equipment_id", pa.string()),
        ("site", _DICT),
        ("equipment_type", _DICT),
        ("sensor", _DICT),
        ("unit", _DICT),
        ("window_start", _TS),
        ("window_end", _TS),
        ("count", pa.uint32()),
        ("avg", pa.float64()),
        ("stddev", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("emitted_at", _TS),
    ]
)
_UINT32_MAX = 2**32 - 1
_STRINGS = pa.list_(pa.string())
# Column order and types of the anomalies table (sql/clickhouse/002_anomalies.sql).
ANOMALIES_ARROW_SCHEMA = pa.schema(
    [
        ("equipment_id", pa.string()),
        ("site", _DICT),
        ("equipment_type", _DICT),
        ("window_start", _TS),
        ("window_end", _TS),
        ("kind", _DICT),
        ("is_anomaly", pa.uint8()),
        ("severity", _DICT),
        ("score", pa.float64()),
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("detectors", _STRINGS),
        ("rule_hits", _STRINGS),
        ("top_sensors", _STRINGS),
        ("dead_sensors", _STRINGS),
        ("model_versions", _DICT),
        ("summary", pa.string()),
        ("last_seen", _TS),
        ("emitted_at", _TS),
    ]
)
INSIGHTS_ARROW_SCHEMA = pa.schema(
    [
        ("equipment_id", pa.string()),
        ("site", _DICT),
        ("equipment_type", _DICT),
        ("agent", _DICT),
        ("kind", _DICT),
        ("episode_id", pa.string()),
        ("window_start", _TS),
        ("window_end", _TS),
        ("closed", pa.uint8()),
        ("title", pa.string()),
        ("severity", _DICT),
        ("confidence", pa.float64()),
        ("fault_type", _DICT),
        ("sensors", _STRINGS),
        ("details", pa.string()),
        ("emitted_at", _TS),
    ]
)


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached or rejected our credentials."""


@dataclass(frozen=True)
class MalformedRecord:
    """A record that could not become a row; the sink dead-letters it with ``detail``."""

    index: int  # position in the input list (so callers can find the Kafka message)
    value: bytes
    detail: str


# ---------------------------------------------------------------------------------------------
# Client and schema
# ---------------------------------------------------------------------------------------------


def make_client(settings: ClickHouseSettings, identity: str, **kwargs: object) -> Client:
    """A clickhouse-connect client connected as ``identity`` (its password from its file), in ``settings.database``.

    Works before the database exists (``apply_schema`` creates it). Raises
    :class:`ClickHouseUnavailable` with what to do when the server is down or refuses us.
    """
    where = f"{settings.host}:{settings.port}"
    user = settings.user(identity)
    try:
        password = settings.password_file(identity).read_text().strip()
    except FileNotFoundError:
        raise ClickHouseUnavailable(
            f"no password file for ClickHouse identity {identity!r} at {settings.password_file(identity)}: the local "
            "stack writes it at its first start (`vigil stack up`); for a real cluster, put that user's password there"
        ) from None
    params: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "username": user,
        "password": password,
        "secure": settings.secure,
        "connect_timeout": 5,
        **kwargs,
    }
    try:
        client = clickhouse_connect.get_client(**params)
    except OperationalError as exc:
        raise ClickHouseUnavailable(
            f"cannot reach ClickHouse at {where}: {exc}. Start the local stack with `vigil stack up`, "
            "or point VIGIL_CLICKHOUSE__HOST / VIGIL_CLICKHOUSE__PORT at a running server."
        ) from exc
    except DatabaseError as exc:
        if getattr(exc, "code", None) in _AUTH_CODES:
            raise ClickHouseUnavailable(
                f"ClickHouse at {where} rejected user {user!r} (identity {identity}): check its password file "
                f"{settings.password_file(identity)} and VIGIL_CLICKHOUSE__USERS."
            ) from exc
        raise
    # Set after connecting rather than passed to get_client, which fails while the database does
    # not exist yet (apply_schema creates it); queries then run in it as usual.
    client.database = settings.database
    return client


def vigil_tables(settings: ClickHouseSettings) -> VigilTables:
    """Vigil's tables and views under their configured names (what identities are granted and filtered on)."""
    return VigilTables(
        database=settings.database,
        window_stats=WINDOW_STATS_TABLE,
        window_stats_view=WINDOW_STATS_VIEW,
        anomalies=settings.anomalies_table,
        anomalies_view=settings.anomalies_view,
        machine_state=MACHINE_STATE_TABLE,
        insights=settings.insights_table,
        insights_view=f"{settings.insights_table}_latest",
        fault_labels=settings.fault_labels_table,
        deliveries=settings.deliveries_table,
    )


def require_tables(client: Client, settings: ClickHouseSettings, tables: list[str]) -> None:
    """Fail with what to do when the schema is not applied (a component's identity may not create it)."""
    for table in tables:
        if not int(client.command(f"EXISTS TABLE {settings.database}.{table}", use_database=False)):
            raise ClickHouseUnavailable(
                f"ClickHouse table {settings.database}.{table} does not exist: apply the schema as the admin "
                "identity (`vigil stack up` does it when it starts ClickHouse)"
            )


def schema_files(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """The numbered ``*.sql`` files, in the order they must run."""
    return sorted(schema_dir.glob("[0-9][0-9][0-9]_*.sql"))


def render_schema(settings: ClickHouseSettings, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every schema statement with names and TTLs filled in from settings."""
    for field in (
        "database",
        "anomalies_table",
        "anomalies_view",
        "insights_table",
        "fault_labels_table",
        "deliveries_table",
    ):
        value = getattr(settings, field)
        if not _IDENTIFIER_RE.match(value):
            raise ValueError(
                f"VIGIL_CLICKHOUSE__{field.upper()}={value!r} is not a plain identifier (letters, digits, _)"
            )
    values = {
        "database": settings.database,
        "window_stats_table": WINDOW_STATS_TABLE,
        "window_stats_view": WINDOW_STATS_VIEW,
        "anomalies_table": settings.anomalies_table,
        "anomalies_view": settings.anomalies_view,
        "insights_table": settings.insights_table,
        "fault_labels_table": settings.fault_labels_table,
        "deliveries_table": settings.deliveries_table,
        "window_ttl_days": settings.window_ttl_days,
        "raw_ttl_days": settings.raw_ttl_days,
    }
    statements: list[str] = []
    for path in schema_files(schema_dir):
        text = path.read_text().format_map(values)
        statements += [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", text) if _strip_comments(s).strip()]
    return statements


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def apply_schema(client: Client, settings: ClickHouseSettings) -> None:
    """Create the database, tables and views if missing. Safe to run at every start."""
    for statement in render_schema(settings):
        client.command(statement, use_database=False)
    log.info("ClickHouse schema applied to database %s", settings.database)


# ---------------------------------------------------------------------------------------------
# JSON records -> Arrow, one converter for every topic
# ---------------------------------------------------------------------------------------------

# Contract checks beyond presence: (mask of violating rows, reason) pairs, vectorised over a batch.
Checks = Callable[[pa.Table], list[tuple[pa.ChunkedArray, str]]]


@dataclass(frozen=True)
class RecordSpec:
    """How the JSON records of one topic become rows of one ClickHouse table."""

    name: str  # what the records are, for log messages
    json_schema: pa.Schema  # the contract (vigil.contracts)
    arrow_schema: pa.Schema  # the table's columns; ``<name>`` timestamps come from ``<name>_ms``
    malformed_reason: str  # dead-letter reason of records that cannot become rows
    checks: Checks
    nullable: frozenset[str] = frozenset()  # contract fields that may be null; all others are required
    skip: Callable[[pa.Table], pa.ChunkedArray] | None = None  # rows that are not records (progress markers)


def _window_stats_checks(raw: pa.Table) -> list[tuple[pa.ChunkedArray, str]]:
    checks = [_empty(raw, name) for name in ("equipment_id", "sensor")]
    count = pc.fill_null(raw.column("count"), 0)
    checks.append((pc.or_(pc.less(count, 0), pc.greater(count, _UINT32_MAX)), "count out of range"))
    checks.append(_empty_window(raw))
    return checks


def _anomaly_checks(raw: pa.Table) -> list[tuple[pa.ChunkedArray, str]]:
    return [
        _empty(raw, "equipment_id"),
        _empty_window(raw),
        _not_in(raw, "kind", ANOMALY_KINDS),
        _not_in(raw, "severity", SEVERITIES),
    ]


def _empty(raw: pa.Table, name: str) -> tuple[pa.ChunkedArray, str]:
    return pc.equal(pc.fill_null(pc.utf8_length(raw.column(name)), 0), 0), f"empty {name}"


def _empty_window(raw: pa.Table) -> tuple[pa.ChunkedArray, str]:
    start, end = raw.column("window_start_ms"), raw.column("window_end_ms")
    return pc.fill_null(pc.less_equal(end, start), False), "window_end_ms <= window_start_ms"


def _not_in(raw: pa.Table, name: str, allowed: tuple[str, ...]) -> tuple[pa.ChunkedArray, str]:
    mask = pc.invert(pc.is_in(raw.column(name), value_set=pa.array(allowed)))
    return mask, f"{name} is not one of {', '.join(allowed)}"


def _insight_checks(raw: pa.Table) -> list[tuple[pa.ChunkedArray, str]]:
    confidence = pc.fill_null(raw.column("confidence"), -1.0)
    return [
        _empty(raw, "agent"),
        _empty(raw, "kind"),
        _empty(raw, "episode_id"),
        _empty_window(raw),
        _not_in(raw, "severity", INSIGHT_SEVERITIES),
        (pc.or_(pc.less(confidence, 0.0), pc.greater(confidence, 1.0)), "confidence outside [0, 1]"),
    ]


def _window_stats_markers(raw: pa.Table) -> pa.ChunkedArray:
    marker = pc.starts_with(raw.column("equipment_id"), WINDOW_STATS_MARKER_PREFIX)
    return pc.and_(marker, pc.equal(raw.column("count"), 0))


WINDOW_STATS_RECORDS = RecordSpec(
    name="window-stats",
    json_schema=WINDOW_STATS_JSON_SCHEMA,
    arrow_schema=WINDOW_STATS_ARROW_SCHEMA,
    malformed_reason=MALFORMED_REASON,
    checks=_window_stats_checks,
    skip=_window_stats_markers,
)


def anomaly_records(score_names: Sequence[str]) -> RecordSpec:
    """Verdict records, reading these scores out of each record's ``scores`` object (others are ignored)."""
    return RecordSpec(
        name="anomaly",
        json_schema=anomaly_json_schema(score_names),
        arrow_schema=ANOMALIES_ARROW_SCHEMA,
        malformed_reason=ANOMALY_MALFORMED_REASON,
        checks=_anomaly_checks,
        nullable=frozenset({SCORES_FIELD}),  # a verdict without scores has an empty map
    )


INSIGHT_RECORDS = RecordSpec(
    name="insight",
    json_schema=INSIGHT_JSON_SCHEMA,
    arrow_schema=INSIGHTS_ARROW_SCHEMA,
    malformed_reason=INSIGHT_MALFORMED_REASON,
    checks=_insight_checks,  # equipment_id may be "": a shared cause is about a line, not one machine
)


def window_stats_to_arrow(values: list[bytes]) -> tuple[pa.Table, list[MalformedRecord]]:
    """Window-stats JSON records -> rows of the window_stats table (see :func:`records_to_arrow`)."""
    return records_to_arrow(values, WINDOW_STATS_RECORDS)


def anomalies_to_arrow(values: list[bytes], score_names: Sequence[str]) -> tuple[pa.Table, list[MalformedRecord]]:
    """Anomaly-verdict JSON records -> rows of the anomalies table (see :func:`records_to_arrow`)."""
    return records_to_arrow(values, anomaly_records(score_names))


def records_to_arrow(values: list[bytes], spec: RecordSpec) -> tuple[pa.Table, list[MalformedRecord]]:
    """Parse JSON records into a table shaped like ``spec``'s ClickHouse table.

    The whole batch is parsed in one vectorised ``pyarrow.json`` call. If the batch does not
    parse, it is bisected to isolate the bad records (a few extra parses per bad record), so one
    broken record never costs the batch. Records that parse but break the contract (missing
    field, wrong range) are returned as malformed too; none are dropped silently.
    """
    malformed: list[MalformedRecord] = []
    lines, good_idx = values, list(range(len(values)))
    # The parser is line-based: a record must not be empty or contain newlines. Checked at C
    # speed for the whole batch; only a batch that fails goes through the per-record path.
    joined: bytes | None = b"\n".join(values)
    if values and (min(map(len, values)) == 0 or joined.count(b"\n") != len(values) - 1):  # type: ignore[union-attr]
        joined = None
        lines, good_idx = [], []
        for i, value in enumerate(values):
            if not value or not value.strip():
                malformed.append(MalformedRecord(i, value or b"", "empty record"))
                continue
            if b"\n" in value or b"\r" in value:  # JSON allows newlines only as whitespace
                value = value.replace(b"\r", b" ").replace(b"\n", b" ")
            good_idx.append(i)
            lines.append(value)

    chunks: list[pa.Table] = []
    parsed_idx: list[int] = []
    if lines:
        # A block must hold the longest record; big blocks let pyarrow parse in parallel.
        parse = _Parse(
            read=pa_json.ReadOptions(block_size=max(8 << 20, 2 * max(map(len, lines)))),
            parse=pa_json.ParseOptions(explicit_schema=spec.json_schema, unexpected_field_behavior="ignore"),
            lines=lines,
            idx=good_idx,
            values=values,
            chunks=chunks,
            parsed_idx=parsed_idx,
            malformed=malformed,
        )
        parse.bisect(0, len(lines), joined)
    if not chunks:
        malformed.sort(key=lambda m: m.index)
        return spec.arrow_schema.empty_table(), malformed
    raw = pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]
    if spec.skip is not None:  # neither rows nor malformed: dropped here, before the contract checks
        keep = pc.invert(pc.fill_null(spec.skip(raw), False))
        if raw.num_rows and not pc.all(keep).as_py():
            parsed_idx = np.asarray(parsed_idx, dtype=np.int64)[keep.to_numpy(zero_copy_only=False)].tolist()
            raw = raw.filter(keep)

    bad_mask, reasons = _contract_violations(raw, spec)
    if bad_mask is not None:
        bad_rows = pc.indices_nonzero(bad_mask).to_pylist()
        reason_list = reasons.to_pylist()
        for row in bad_rows:
            idx = parsed_idx[row]
            malformed.append(MalformedRecord(idx, values[idx], reason_list[row]))
        raw = raw.filter(pc.invert(bad_mask))
    malformed.sort(key=lambda m: m.index)
    return _to_clickhouse_shape(raw, spec.arrow_schema), malformed


@dataclass
class _Parse:
    """One batch's parse by bisection: good chunks and their input positions, and the bad records."""

    read: pa_json.ReadOptions
    parse: pa_json.ParseOptions
    lines: list[bytes]
    idx: list[int]
    values: list[bytes]
    chunks: list[pa.Table]
    parsed_idx: list[int]
    malformed: list[MalformedRecord]

    def bisect(self, lo: int, hi: int, joined: bytes | None = None) -> None:
        if lo >= hi:
            return
        detail = ""
        try:
            table = pa_json.read_json(
                pa.py_buffer(joined if joined is not None else b"\n".join(self.lines[lo:hi])),
                read_options=self.read,
                parse_options=self.parse,
            )
            if table.num_rows == hi - lo:
                self.chunks.append(table)
                self.parsed_idx.extend(self.idx[lo:hi])
                return
            detail = "not exactly one JSON object"
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            detail = str(exc)
        if hi - lo == 1:
            index = self.idx[lo]
            self.malformed.append(MalformedRecord(index, self.values[index], f"invalid JSON record: {detail}"[:500]))
            return
        mid = (lo + hi) // 2
        self.bisect(lo, mid)
        self.bisect(mid, hi)


def _contract_violations(raw: pa.Table, spec: RecordSpec) -> tuple[pa.ChunkedArray | None, pa.ChunkedArray]:
    """A mask of rows breaking the contract, and the reason for each (vectorised)."""
    checks: list[tuple[pa.ChunkedArray | pa.Array, str]] = []
    for name in spec.json_schema.names:
        column = raw.column(name)
        if name not in spec.nullable and column.null_count:
            checks.append((pc.is_null(column), f"missing or null field {name!r}"))
        if pa.types.is_list(column.type):
            null_elements = _has_null_element(column)
            if null_elements is not None:
                checks.append((null_elements, f"null element in {name!r}"))
    checks += spec.checks(raw)
    reasons = pa.nulls(raw.num_rows, pa.string())
    mask = None
    for check, reason in reversed(checks):  # the first failing check names the reason
        check = pc.fill_null(check, False)
        reasons = pc.if_else(check, pa.scalar(reason), reasons)
        mask = check if mask is None else pc.or_(mask, check)
    if mask is None or not pc.any(mask).as_py():
        return None, reasons
    return mask, reasons


def _has_null_element(column: pa.ChunkedArray) -> pa.Array | None:
    """Rows of a list column holding a null element (ClickHouse's Array(String) cannot store it)."""
    lists = column.combine_chunks()
    flat = pc.list_flatten(lists)
    if not flat.null_count:
        return None
    rows = pc.list_parent_indices(lists).to_numpy()[pc.is_null(flat).to_numpy(zero_copy_only=False)]
    mask = np.zeros(len(lists), dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def _to_clickhouse_shape(raw: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for field in schema:
        if field.type == _TS:
            column = raw.column(f"{field.name}_ms").cast(pa.int64()).cast(_TS)
        elif field.type == _DICT:
            column = pc.dictionary_encode(raw.column(field.name)).cast(_DICT)
        elif pa.types.is_map(field.type):
            column = struct_to_map(raw.column(field.name))
        else:
            column = raw.column(field.name).cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def struct_to_map(column: pa.ChunkedArray | pa.Array) -> pa.MapArray:
    """A struct of float fields (the JSON reader's view of an object) -> map<string, double>, vectorised.

    Null fields (and every field of a null struct) are left out of the row's map.
    """
    struct = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    names = [f.name for f in struct.type]
    n = len(struct)
    if names:
        fields = struct.flatten()  # honours the struct's own nulls
        values = np.column_stack([f.to_numpy(zero_copy_only=False).astype(np.float64) for f in fields])
    else:
        values = np.zeros((n, 0))
    present = ~np.isnan(values)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    keys = np.broadcast_to(np.asarray(names, dtype=object), values.shape)[present]
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(keys, pa.string()), pa.array(values[present], pa.float64())
    )


def insert_rows(client: Client, table_name: str, table: pa.Table, dedup_token: str | None = None) -> int:
    """Insert an Arrow table shaped like ``table_name``; returns the rows inserted into it.

    ``dedup_token`` names the block (sql/clickhouse/007_insert_deduplication.sql): a retry with the same token
    after an answer that never arrived writes nothing twice."""
    if table.num_rows == 0:
        return 0
    # optimize_on_insert=0: skip de-duplicating inside each inserted block (FINAL and merges do
    # it anyway); measured 120 -> 75 ms for 200K rows.
    settings: dict[str, object] = {"optimize_on_insert": 0}
    if dedup_token:
        settings["insert_deduplication_token"] = dedup_token
    client.insert_arrow(table_name, table, settings=settings)
    # The whole block is in (an insert is atomic or raises). Not the summary's written_rows: it also counts
    # what materialized views wrote (machine_state from anomalies), i.e. twice the rows.
    return table.num_rows


def insert_window_stats(client: Client, table: pa.Table) -> int:
    """Insert rows shaped by :func:`window_stats_to_arrow`; returns the rows ClickHouse wrote."""
    return insert_rows(client, WINDOW_STATS_TABLE, table)
