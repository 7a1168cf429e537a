"""The chDB-backed ClickHouse HTTP server, driven by an unmodified clickhouse-connect client."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import orjson
import pandas as pd
import psutil
import pyarrow as pa
import pytest
import requests
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from connectors.clickhouse import (
    WINDOW_STATS_TABLE,
    WINDOW_STATS_VIEW,
    ClickHouseUnavailable,
    apply_schema,
    insert_rows,
    insert_window_stats,
    make_client,
    window_stats_to_arrow,
)
from connectors.clickhouse_access import ensure_passwords
from operations.stack.clickhouse.protocol import _find_insert_format, _split_statement
from operations.stack.clickhouse.server import start_clickhouse_server_process, stop_clickhouse_server_process
from tests.conftest import free_port
from vigil.settings import ClickHouseSettings, Settings

pytestmark = pytest.mark.integration


def _settings(data_dir: Path, database: str = "vigil_test") -> Settings:
    return Settings(
        data_dir=data_dir,
        clickhouse=ClickHouseSettings(port=free_port(), users={"admin": "tester"}, database=database),
    )


@pytest.fixture(scope="module")
def ch_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A ClickHouse server (chDB) on a free port with a fresh data directory, for this module."""
    settings = _settings(tmp_path_factory.mktemp("vigil"))
    proc = start_clickhouse_server_process(settings, settings.logs_dir / "clickhouse.log")
    try:
        yield settings
    finally:
        stop_clickhouse_server_process(proc)


@pytest.fixture(scope="module")
def client(ch_settings: Settings) -> Iterator[Client]:
    client = make_client(ch_settings.clickhouse, "admin")
    apply_schema(client, ch_settings.clickhouse)
    yield client
    client.close()


def _url(settings: Settings) -> str:
    return f"http://{settings.clickhouse.host}:{settings.clickhouse.port}/"


def _stats_record(equipment: str, sensor: str, start_ms: int, avg: float, emitted_ms: int) -> bytes:
    return orjson.dumps(
        {
            "equipment_id": equipment,
            "site": "site-1",
            "equipment_type": "pump",
            "sensor": sensor,
            "unit": "C",
            "window_start_ms": start_ms,
            "window_end_ms": start_ms + 5000,
            "count": 10,
            "avg": avg,
            "stddev": 0.5,
            "min": avg - 1,
            "max": avg + 1,
            "emitted_at_ms": emitted_ms,
        }
    )


def _recent_window_ms() -> int:
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % 5000 - 3_600_000


def test_ping(ch_settings: Settings) -> None:
    response = requests.get(_url(ch_settings) + "ping", timeout=5)
    assert response.status_code == 200
    assert response.text == "Ok.\n"


def test_wrong_password_is_rejected(ch_settings: Settings, tmp_path: Path) -> None:
    ch = ch_settings.clickhouse
    with pytest.raises(DatabaseError, match="Authentication failed") as info:
        clickhouse_connect.get_client(host=ch.host, port=ch.port, username=ch.user("admin"), password="wrong")
    assert info.value.code == 516
    response = requests.post(_url(ch_settings), data=b"SELECT 1", auth=(ch.user("admin"), "wrong"), timeout=5)
    assert response.status_code == 401
    assert response.headers["X-ClickHouse-Exception-Code"] == "516"
    assert requests.post(_url(ch_settings), data=b"SELECT 1", timeout=5).status_code == 401  # no credentials
    # another identity's password does not open this one
    other = ch.password_file("console").read_text().strip()
    wrong_identity = requests.post(_url(ch_settings), data=b"SELECT 1", auth=(ch.user("admin"), other), timeout=5)
    assert wrong_identity.status_code == 401
    # with make_client the message says what to check
    (tmp_path / "admin.password").write_text("wrong\n")
    bad = ch.model_copy(update={"secrets_dir": tmp_path})
    with pytest.raises(ClickHouseUnavailable, match="password file"):
        make_client(bad, "admin")


def test_passwords_are_files_of_their_own_never_arguments(ch_settings: Settings) -> None:
    ch = ch_settings.clickhouse
    assert ch.secrets_dir is not None and (ch.secrets_dir.stat().st_mode & 0o777) == 0o700
    passwords = {name: ch.password_file(name).read_text().strip() for name in ch.users}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 24 for p in passwords.values())
    assert all((ch.password_file(name).stat().st_mode & 0o777) == 0o600 for name in ch.users)
    server = [
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if "operations.stack.clickhouse.server" in " ".join(p.info["cmdline"] or [])
        and str(ch.port) in " ".join(p.info["cmdline"] or [])
    ]
    assert server, "the test server's process was not found"
    environ = server[0].info["environ"] or {}
    seen = " ".join(server[0].info["cmdline"]) + " ".join(f"{k}={v}" for k, v in environ.items())
    assert not [name for name, password in passwords.items() if password in seen]


def test_other_auth_forms_accepted(ch_settings: Settings) -> None:
    ch = ch_settings.clickhouse
    secret = ch.password_file("admin").read_text().strip()
    by_headers = requests.post(
        _url(ch_settings),
        data=b"SELECT 40 + 2",
        headers={"X-ClickHouse-User": ch.user("admin"), "X-ClickHouse-Key": secret},
        timeout=5,
    )
    assert (by_headers.status_code, by_headers.text) == (200, "42\n")
    by_params = requests.get(
        _url(ch_settings), params={"user": ch.user("admin"), "password": secret, "query": "SELECT 7"}, timeout=5
    )
    assert (by_params.status_code, by_params.text) == (200, "7\n")


def test_unreachable_server_gives_actionable_error() -> None:
    with pytest.raises(ClickHouseUnavailable, match="vigil stack up"):
        make_client(ClickHouseSettings(port=free_port()), "admin")


def test_arrow_round_trip_exact_values_and_types(client: Client) -> None:
    client.command("DROP TABLE IF EXISTS rt")
    client.command(
        "CREATE TABLE rt (id UInt32, machine LowCardinality(String), ts DateTime64(3, 'UTC'), v Float64) "
        "ENGINE = MergeTree ORDER BY id"
    )
    ts = [datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC), datetime(2024, 5, 1, 12, 0, 5, 7000, tzinfo=UTC)]
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.uint32()),
            "machine": pa.array(["m-1", "m-2"]).dictionary_encode(),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "v": pa.array([1.25, -3.5e-7]),
        }
    )
    summary = client.insert_arrow("rt", table)
    assert summary.written_rows == 2

    types = dict(
        client.query(
            "SELECT name, type FROM system.columns WHERE table = 'rt' AND database = currentDatabase()"
        ).result_rows
    )
    assert types == {
        "id": "UInt32",
        "machine": "LowCardinality(String)",
        "ts": "DateTime64(3, 'UTC')",
        "v": "Float64",
    }
    df = client.query_df("SELECT * FROM rt ORDER BY id")
    assert df["id"].tolist() == [1, 2]
    assert df["machine"].tolist() == ["m-1", "m-2"]
    assert [t.value // 1_000_000 for t in pd.to_datetime(df["ts"], utc=True)] == [int(t.timestamp() * 1000) for t in ts]
    assert df["v"].tolist() == [1.25, -3.5e-7]

    back = client.query_arrow("SELECT id, ts FROM rt ORDER BY id")
    assert back.column("ts").cast(pa.int64()).to_pylist() == [int(t.timestamp() * 1000) for t in ts]

    rows = client.query("SELECT machine, ts FROM rt WHERE id = {id:UInt32}", parameters={"id": 2}).result_rows
    assert rows == [("m-2", ts[1].replace(tzinfo=None))]  # clickhouse-connect: naive UTC for a UTC column


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_insert_df_with_each_compression(ch_settings: Settings, compress: str | bool) -> None:
    """clickhouse-connect streams Native blocks (chunked, one compressed frame per block)."""
    ch = ch_settings.clickhouse
    client = make_client(ch, "admin", compress=compress)
    table = f"comp_{compress or 'none'}"
    client.command(f"DROP TABLE IF EXISTS {table}")
    client.command(f"CREATE TABLE {table} (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    n = 300_000  # several insert blocks
    df = pd.DataFrame({"k": range(n), "s": [f"row-{i % 97}" for i in range(n)]})
    client.insert_df(table, df)
    assert client.query(f"SELECT count(), sum(k), uniqExact(s) FROM {table}").result_rows == [(n, n * (n - 1) // 2, 97)]
    client.close()


def test_raw_http_forms(ch_settings: Settings, client: Client) -> None:
    """The query in the URL with data in the body, a gzip body, and INSERT ... VALUES."""
    ch = ch_settings.clickhouse
    auth = (ch.user("admin"), ch.password_file("admin").read_text().strip())
    client.command("DROP TABLE IF EXISTS raw_forms")
    client.command("CREATE TABLE raw_forms (a UInt8, b String) ENGINE = MergeTree ORDER BY a")
    base = {"database": ch.database}
    ok = requests.post(
        _url(ch_settings),
        params={**base, "query": "INSERT INTO raw_forms FORMAT TSV"},
        data=b"1\tx\n2\ty\n",
        auth=auth,
        timeout=5,
    )
    assert ok.status_code == 200, ok.text
    ok = requests.post(
        _url(ch_settings),
        params=base,
        data=gzip.compress(b'INSERT INTO raw_forms FORMAT CSV\n3,"z,z"\n'),
        headers={"Content-Encoding": "gzip"},
        auth=auth,
        timeout=5,
    )
    assert ok.status_code == 200, ok.text
    ok = requests.post(_url(ch_settings), params=base, data=b"INSERT INTO raw_forms VALUES (4, 'w')", auth=auth)
    assert ok.status_code == 200, ok.text
    result = requests.post(
        _url(ch_settings),
        params={**base, "default_format": "JSONEachRow"},
        data=b"SELECT * FROM raw_forms ORDER BY a",
        auth=auth,
        timeout=5,
    )
    assert result.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert [orjson.loads(line) for line in result.text.splitlines()] == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 3, "b": "z,z"},
        {"a": 4, "b": "w"},
    ]


def test_bad_query_raises_database_error_with_clickhouse_message(client: Client) -> None:
    with pytest.raises(DatabaseError, match=r"Code: 62\. DB::Exception: Syntax error") as info:
        client.query("SELEC 1")
    assert info.value.code == 62
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        client.command("SELECT * FROM no_such_table")
    with pytest.raises(DatabaseError, match="Cannot parse"):  # bad data inside a streamed insert
        client.raw_insert("rt", ["id"], b"not-a-number\n", fmt="TSV")


def test_an_insert_the_engine_refuses_is_an_error_never_a_silent_ok(client: Client) -> None:
    """chDB's streaming insert answers a refused insert (TOO_MANY_PARTS) with 0 rows and no error: a sink would
    commit past data that never landed. The server must pass the refusal on, in every insert format."""
    client.command("DROP TABLE IF EXISTS refusing")
    client.command("CREATE TABLE refusing (id UInt32) ENGINE = MergeTree ORDER BY id")
    client.command("INSERT INTO refusing VALUES (1)")
    client.command("ALTER TABLE refusing MODIFY SETTING parts_to_throw_insert = 1")
    attempts = {
        "arrow": lambda: client.insert_arrow("refusing", pa.table({"id": pa.array([2], pa.uint32())})),
        "native": lambda: client.insert("refusing", [[3]], column_names=["id"]),
        "tsv": lambda: client.raw_insert("refusing", ["id"], b"4\n", fmt="TSV"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(DatabaseError, match="TOO_MANY_PARTS|Too many parts") as info:
            attempt()
        assert info.value.code == 252, name
    client.command("ALTER TABLE refusing RESET SETTING parts_to_throw_insert")
    assert client.insert("refusing", [[5]], column_names=["id"]).written_rows == 1
    assert client.insert_arrow("refusing", pa.table({"id": pa.array([], pa.uint32())})).written_rows == 0
    assert sorted(r[0] for r in client.query("SELECT id FROM refusing").result_rows) == [1, 5]


def test_session_settings_persist_within_a_session(ch_settings: Settings) -> None:
    client = make_client(ch_settings.clickhouse, "admin")
    client.command("SET max_threads = 1")
    assert client.command("SELECT getSetting('max_threads')") == 1
    other = make_client(ch_settings.clickhouse, "admin")
    assert other.command("SELECT getSetting('max_threads')") != 1
    assert client.query("SELECT getSetting('max_threads')", settings={"max_threads": 3}).result_rows == [(3,)]
    client.close()
    other.close()


def test_concurrent_clients(ch_settings: Settings, client: Client) -> None:
    """Each client (its own HTTP session, so its own engine connection) inserts and reads in parallel."""
    client.command("DROP TABLE IF EXISTS conc")
    client.command("CREATE TABLE conc (worker UInt8, i UInt32) ENGINE = MergeTree ORDER BY (worker, i)")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            own = make_client(ch_settings.clickhouse, "admin")
            for batch in range(5):
                rows = pa.table(
                    {
                        "worker": pa.array([worker] * 1000, pa.uint8()),
                        "i": pa.array(range(batch * 1000, (batch + 1) * 1000), pa.uint32()),
                    }
                )
                own.insert_arrow("conc", rows)
                seen = own.command("SELECT count() FROM conc WHERE worker = {w:UInt8}", parameters={"w": worker})
                assert seen == (batch + 1) * 1000
            own.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert client.query(
        "SELECT worker, count(), uniqExact(i) FROM conc GROUP BY worker ORDER BY worker"
    ).result_rows == [(w, 5000, 5000) for w in range(4)]


def test_apply_schema_twice_is_fine(client: Client, ch_settings: Settings) -> None:
    apply_schema(client, ch_settings.clickhouse)
    apply_schema(client, ch_settings.clickhouse)
    names = {row[0] for row in client.query("SHOW TABLES").result_rows}
    assert {WINDOW_STATS_TABLE, WINDOW_STATS_VIEW} <= names
    ddl = client.command(f"SHOW CREATE TABLE {WINDOW_STATS_TABLE}")
    assert "ReplacingMergeTree(emitted_at)" in ddl
    days = ch_settings.clickhouse.window_ttl_days
    assert f"toIntervalDay({days})" in ddl or f"INTERVAL {days} DAY" in ddl


def test_same_window_twice_is_one_row_newest_wins(client: Client) -> None:
    client.command(f"TRUNCATE TABLE {WINDOW_STATS_TABLE}")
    start = _recent_window_ms()  # old rows would be dropped by the table TTL
    first, _ = window_stats_to_arrow([_stats_record("m-dup", "temp", start, 1.0, start + 6000)])
    replay, _ = window_stats_to_arrow(
        [
            _stats_record("m-dup", "temp", start, 2.0, start + 9000),
            _stats_record("m-dup", "rpm", start, 5.0, start + 6000),
        ]
    )
    assert insert_window_stats(client, replay) == 2
    assert insert_window_stats(client, first) == 1  # an older emission re-delivered late
    assert client.command(f"SELECT count() FROM {WINDOW_STATS_TABLE}") == 3  # not merged yet
    rows = client.query(f"SELECT sensor, avg, count FROM {WINDOW_STATS_VIEW} ORDER BY sensor").result_rows
    assert rows == [("rpm", 5.0, 10), ("temp", 2.0, 10)]
    final = client.query(f"SELECT sensor, avg FROM {WINDOW_STATS_TABLE} FINAL ORDER BY sensor").result_rows
    assert final == [("rpm", 5.0), ("temp", 2.0)]


def test_a_retried_insert_with_its_token_is_written_once(client: Client, ch_settings: Settings) -> None:
    """ClickHouse committed the insert but its answer was lost (the server crashed): the sink retries the same
    batch with the same token (its Kafka offsets) and a FINAL-free read still sees one row. Another batch with
    the same rows but another token (re-read after a restart) is written, for the ReplacingMergeTree key."""
    apply_schema(client, ch_settings.clickhouse)
    client.command(f"TRUNCATE TABLE {WINDOW_STATS_TABLE}")
    start = _recent_window_ms()
    batch, _ = window_stats_to_arrow([_stats_record("m-retry", "temp", start, 1.0, start + 6000)])
    assert insert_rows(client, WINDOW_STATS_TABLE, batch, "vigil.window-stats/0:10-19") == 1
    insert_rows(client, WINDOW_STATS_TABLE, batch, "vigil.window-stats/0:10-19")  # the retry
    assert client.command(f"SELECT count() FROM {WINDOW_STATS_TABLE}") == 1
    insert_rows(client, WINDOW_STATS_TABLE, batch, "vigil.window-stats/0:10-25")
    assert client.command(f"SELECT count() FROM {WINDOW_STATS_TABLE}") == 2


def test_data_survives_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path, database="restart_db")
    log_path = tmp_path / "clickhouse.log"
    proc = start_clickhouse_server_process(settings, log_path)
    try:
        client = make_client(settings.clickhouse, "admin")
        apply_schema(client, settings.clickhouse)
        start = _recent_window_ms()
        table, _ = window_stats_to_arrow([_stats_record("m-7", "temp", start, 4.5, start + 6000)])
        insert_window_stats(client, table)
        client.close()
    finally:
        assert stop_clickhouse_server_process(proc) == 0
    proc = start_clickhouse_server_process(settings, log_path)
    try:
        client = make_client(settings.clickhouse, "admin")
        rows = client.query(f"SELECT equipment_id, sensor, avg FROM {WINDOW_STATS_VIEW}").result_rows
        assert rows == [("m-7", "temp", 4.5)]
        client.close()
    finally:
        stop_clickhouse_server_process(proc)


# -- request parsing (no server needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (b"INSERT INTO t (a, b) FORMAT Native\n", "Native"),
        (b"insert into `format` (`FORMAT x`) SETTINGS a=1 format Arrow\n", "Arrow"),
        (b"INSERT INTO t VALUES ('FORMAT x')", None),
        (b"INSERT INTO t SELECT * FROM s FORMAT x", None),
        (b"INSERT INTO t /* FORMAT CSV */ FORMAT TSV\n", "TSV"),
    ],
)
def test_find_insert_format(sql: bytes, expected: str | None) -> None:
    found = _find_insert_format(sql)
    assert (found[1] if isinstance(found, tuple) else None) == expected


def test_split_statement_data_starts_after_first_newline() -> None:
    body = iter([b"INSERT INTO t FORMAT TSV", b"\n\t1\n", b"2\n"])
    statement = _split_statement(b"", body)
    assert (statement.sql, statement.insert_format) == (b"INSERT INTO t", "TSV")
    assert b"".join(statement.data or []) == b"\t1\n2\n"
    statement = _split_statement(b"SELECT 1\n", iter([]))
    assert (statement.sql, statement.insert_format) == (b"SELECT 1\n", None)


def test_refuses_a_non_loopback_bind_with_a_weak_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, clickhouse=ClickHouseSettings(host="0.0.0.0", port=free_port()))
    ensure_passwords(settings.clickhouse.secrets_dir)
    settings.clickhouse.password_file("sink").write_text("vigil\n")
    with pytest.raises(RuntimeError, match="refusing to listen on 0.0.0.0: identity 'sink'"):
        start_clickhouse_server_process(settings, tmp_path / "clickhouse.log", timeout=30)
