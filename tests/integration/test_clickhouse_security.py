"""Hostile queries against the real local ClickHouse server, through the console's own path, and what each
component's identity may not do.

A site-1 analyst's workbench query goes through ConsoleData.run_sql exactly as the console runs it (the guard,
then the server's checks for the console identity); every query here must be refused with a message saying
why, or be harmless (it sees only site-1 rows and no file, setting or system table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from connectors.clickhouse import make_client, vigil_tables
from connectors.clickhouse_access import render_access_sql
from streamlit_app.access import Principal
from streamlit_app.data import ConsoleData, WorkbenchError
from tests.conftest import clickhouse_server
from vigil.settings import ClickHouseSettings, Settings

pytestmark = pytest.mark.integration

DB = "security_test"
SECRET_MARK = "vigil-secret-marker"
ROWS_PER_SITE = {"site-1": 30, "site-2": 20}


@pytest.fixture(scope="module")
def ch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    with clickhouse_server(tmp_path_factory, DB) as server:
        admin = make_client(server, "admin")
        for site, rows in ROWS_PER_SITE.items():
            admin.command(
                f"INSERT INTO {DB}.window_stats (equipment_id, site, equipment_type, sensor, unit, window_start, "
                "window_end, count, avg, stddev, min, max, emitted_at) SELECT concat('pump-', toString(number)), "
                f"'{site}', 'pump', 'temp', 'C', now64(3) - toIntervalSecond(5 * number), now64(3), 1, 1, 0, 1, 1, "
                f"now64(3) FROM numbers({rows})"
            )
            admin.command(
                f"INSERT INTO {DB}.fault_labels (label_id, equipment_id, site, equipment_type, fault_type, "
                f"diagnosis, sensors, start, end, source) VALUES ('l-{site}', 'pump-1', '{site}', 'pump', "
                f"'{SECRET_MARK}-{site}', 'x', ['temp'], now64(3), now64(3), 'work_order')"
            )
        admin.close()
        yield server


@pytest.fixture(scope="module")
def analyst(ch: ClickHouseSettings, tmp_path_factory: pytest.TempPathFactory) -> ConsoleData:
    settings = Settings(data_dir=tmp_path_factory.mktemp("console"), clickhouse=ch)
    return ConsoleData(settings, Principal("ana", "analyst", frozenset({"site-1"})))


def _refused(analyst: ConsoleData, sql: str, *reasons: str) -> str:
    with pytest.raises(WorkbenchError) as info:
        analyst.run_sql(sql, timeout_s=5)
    message = str(info.value)
    assert any(reason.lower() in message.lower() for reason in reasons), message
    return message


# Functions that reach outside Vigil's tables, in every position a function can stand.
REACHING_OUT = [
    "SELECT file('/etc/hostname')",
    "SELECT count() FROM window_stats WHERE file('/proc/self/environ') != ''",
    "SELECT (SELECT file('/proc/self/cmdline'))",
    "WITH (SELECT file('/etc/passwd')) AS f SELECT f",
    "WITH t AS (SELECT file('/etc/passwd') AS f) SELECT * FROM t",
    "SELECT count() FROM window_stats WHERE site IN (file('/etc/hostname'), 'site-1')",
    "SELECT count() FROM window_stats AS w JOIN (SELECT file('/etc/passwd') AS x) AS j ON 1 = 1",
    "SELECT arrayMap(p -> file(p), ['/etc/passwd'])",
    "SELECT arrayFilter(p -> length(file(p)) > 0, ['/etc/passwd'])",
    "SELECT getSetting('additional_table_filters')",
    "SELECT hostName(), currentUser()",
    "SELECT filesystemAvailable()",
    "SELECT dictGet('d', 'v', 1)",
    "SELECT sleepEachRow(1) FROM window_stats",
    "SELECT FILE('/etc/hostname')",
    "SELECT `file`('/etc/hostname')",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:1/x.csv')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM executable('id', 'LineAsString', 'x String')",
    "SELECT * FROM input('x String')",
    "SELECT * FROM numbers(10)",
    "SELECT * FROM merge('system', '.*')",
    "SELECT * FROM view(SELECT * FROM system.users)",
    "SELECT count() FROM window_stats WHERE site IN (SELECT * FROM file('/etc/hostname', 'LineAsString'))",
]


@pytest.mark.parametrize("sql", REACHING_OUT)
def test_functions_that_reach_outside_vigils_tables_are_refused(analyst: ConsoleData, sql: str) -> None:
    _refused(analyst, sql, "not allowed", "may not call", "is not readable", "may not read")


OUTPUT_AND_SETTINGS = [
    ("SELECT 1 INTO OUTFILE 'pwned.pth'", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE 'pwned.pth' TRUNCATE", "INTO OUTFILE"),
    ("SELECT site FROM window_stats INTO OUTFILE '/tmp/x' FORMAT CSV", "INTO OUTFILE"),
    ("SELECT 1 /* x */ INTO  OUTFILE 'x'", "INTO OUTFILE"),
    ("SELECT 1 FORMAT JSON", "FORMAT"),
    ("SELECT count() FROM window_stats SETTINGS additional_table_filters = {}", "SETTINGS"),
    ("SELECT count() FROM (SELECT * FROM window_stats SETTINGS readonly = 0)", "SETTINGS"),
    ("WITH t AS (SELECT * FROM window_stats SETTINGS max_memory_usage = 0) SELECT count() FROM t", "SETTINGS"),
    (
        "SELECT count() FROM window_stats WHERE site IN (SELECT site FROM window_stats SETTINGS max_threads = 1)",
        "SETTINGS",
    ),
    ("SET additional_table_filters = {}", "only a SELECT", "may not run"),
    ("SELECT 1; INSERT INTO window_stats (equipment_id) VALUES ('x')", "multi-statement", "one statement"),
    ("SELECT 1; DROP TABLE window_stats", "multi-statement", "one statement"),
    ("INSERT INTO window_stats (equipment_id) VALUES ('x')", "only a SELECT", "may not run"),
    ("DROP TABLE window_stats", "only a SELECT", "may not run"),
    ("SHOW TABLES", "only a SELECT", "may not run"),
    ("EXPLAIN SELECT 1", "only a SELECT", "may not run"),
]


@pytest.mark.parametrize(("sql", "reasons"), [(sql, reasons) for sql, *reasons in OUTPUT_AND_SETTINGS])
def test_output_clauses_settings_and_other_statements_are_refused(
    analyst: ConsoleData, sql: str, reasons: list[str]
) -> None:
    _refused(analyst, sql, *reasons)
    assert not list(Path.cwd().glob("pwned*"))


SYSTEM_TABLES = [
    "SELECT * FROM system.tables",
    "SELECT name FROM system.users AS u",
    "SELECT * FROM `system`.`tables`",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM information_schema.columns",
    "SELECT 1 WHERE 1 IN system.one",
    "SELECT count() FROM window_stats WHERE site IN system.parts",
    "SELECT count() FROM window_stats AS w, system.processes AS p",
    "SELECT * FROM window_stats AS w LEFT JOIN system.settings AS s ON 1 = 1",
    "SELECT * FROM (SELECT * FROM system.query_log) AS q",
    "WITH q AS (SELECT * FROM system.query_log) SELECT * FROM q",
    "SELECT 1 UNION ALL SELECT count() FROM system.databases",
    f"SELECT * FROM {DB}.machine_state_mv",
    "SELECT * FROM default.anything",
]


@pytest.mark.parametrize("sql", SYSTEM_TABLES)
def test_system_and_other_tables_are_refused_through_aliases_joins_and_subqueries(
    analyst: ConsoleData, sql: str
) -> None:
    _refused(analyst, sql, "is not readable", "may not read")


def test_resource_exhaustion_is_stopped_by_the_identitys_limits(analyst: ConsoleData) -> None:
    _refused(
        analyst,
        "SELECT length(arrayStringConcat(arrayMap(x -> repeat('a', 1000000), range(5000))))",
        "memory limit",
        "too large",
        "maximum",
    )
    _refused(
        analyst,
        "SELECT count() FROM window_stats a, window_stats b, window_stats c, window_stats d, "
        "window_stats e, window_stats f",
        "timeout",
        "limit",
    )
    _refused(analyst, "SELECT repeat('a', 1000000000)", "maximum", "too large", "memory limit")


SITE_ESCAPES = [
    "SELECT count() FROM window_stats",
    "SELECT count() FROM window_stats WHERE site = 'site-2'",
    "SELECT count() FROM window_stats WHERE 1 OR site = 'site-2'",
    f"SELECT count() FROM {DB}.window_stats",
    "SELECT count() FROM window_stats FINAL",
    "SELECT count() FROM window_stats_latest",
    "SELECT count() FROM (SELECT * FROM window_stats)",
    "WITH s AS (SELECT * FROM window_stats) SELECT count() FROM s",
    "SELECT count() FROM window_stats AS a JOIN window_stats AS b USING (equipment_id, sensor, window_start)",
    "SELECT (SELECT count() FROM window_stats WHERE site = 'site-2') + count() FROM window_stats WHERE 0",
    "SELECT count() FROM (SELECT site FROM window_stats UNION ALL SELECT site FROM window_stats WHERE 0)",
    "SELECT count() FROM window_stats WHERE equipment_id IN (SELECT equipment_id FROM window_stats_latest)",
]


@pytest.mark.parametrize("sql", SITE_ESCAPES)
def test_a_site_1_analyst_sees_only_site_1_rows_whatever_the_query_says(analyst: ConsoleData, sql: str) -> None:
    value = int(analyst.run_sql(sql).frame.iloc[0, 0])
    assert value <= ROWS_PER_SITE["site-1"], f"{sql} counted {value} rows: more than site-1 holds"


def test_other_sites_labels_and_sites_are_invisible(analyst: ConsoleData) -> None:
    labels = analyst.run_sql("SELECT fault_type, site FROM fault_labels").frame
    assert labels.values.tolist() == [[f"{SECRET_MARK}-site-1", "site-1"]]
    sites = analyst.run_sql("SELECT DISTINCT site FROM window_stats UNION DISTINCT SELECT site FROM fault_labels")
    assert set(sites.frame.iloc[:, 0]) == {"site-1"}
    assert (
        ConsoleData(analyst.settings, Principal("new", "analyst", frozenset()))
        .run_sql("SELECT count() FROM window_stats")
        .frame.iloc[0, 0]
        == 0
    )
    admin = ConsoleData(analyst.settings, Principal("root", "admin", None))
    assert admin.run_sql("SELECT count() FROM window_stats").frame.iloc[0, 0] == sum(ROWS_PER_SITE.values())


def _console(ch: ClickHouseSettings) -> Client:
    return make_client(ch, "console", autogenerate_session_id=False)


def test_the_console_identity_cannot_lift_its_profile_or_filter_from_the_client(ch: ClickHouseSettings) -> None:
    """Whatever a client of the console identity sends (not only what the guard lets through)."""
    with contextlib.closing(_console(ch)) as client:
        scope = {"role": "vigil_site_site-1"}
        assert client.query("SELECT count() FROM window_stats", settings=scope).result_rows == [(30,)]
        for name, value in (
            ("additional_table_filters", "{}"),
            ("max_memory_usage", "0"),
            ("readonly", "0"),
            ("max_execution_time", "3600"),
            ("allow_introspection_functions", "1"),
        ):
            with pytest.raises(DatabaseError, match="Cannot modify"):
                client.query("SELECT count() FROM window_stats", settings={**scope, name: value})
        # a lower limit than the profile's is a query's own business (ClickHouse's MAX constraint)
        assert client.query("SELECT 1", settings={**scope, "max_execution_time": 5}).result_rows == [(1,)]
        for sql in (
            "INSERT INTO window_stats (equipment_id) VALUES ('x')",
            "CREATE TABLE t (a Int8) ENGINE = Memory",
            "DROP TABLE window_stats",
            "ALTER TABLE window_stats DELETE WHERE 1",
            "SYSTEM FLUSH LOGS",
            "USE system",
            "SET readonly = 0",
            "SELECT file('/etc/hostname')",
            "SHOW USERS",
        ):
            with pytest.raises(DatabaseError, match="may not|ACCESS_DENIED|only one statement"):
                client.command(sql, settings=scope)
    url = f"http://{ch.host}:{ch.port}/"
    auth = (ch.user("console"), ch.password_file("console").read_text().strip())
    other_db = requests.post(url, params={"database": "system"}, data=b"SELECT 1", auth=auth, timeout=10)
    assert other_db.status_code == 403 and "privileges" in other_db.text


def test_each_component_identity_can_do_only_what_it_needs(ch: ClickHouseSettings) -> None:
    clients = {name: make_client(ch, name) for name in ("sink", "relay", "agents", "api")}
    try:
        denied = {
            "sink": [
                "SELECT count() FROM window_stats",
                "SELECT * FROM anomalies",
                "SELECT * FROM fault_labels",
                "SELECT * FROM alert_deliveries",
                "INSERT INTO alert_deliveries (receiver) VALUES ('x')",
                "INSERT INTO fault_labels (label_id) VALUES ('x')",
                "DROP TABLE window_stats",
            ],
            "relay": [
                "SELECT count() FROM alert_deliveries",
                "INSERT INTO window_stats (equipment_id) VALUES ('x')",
                "SELECT * FROM insights",
            ],
            "agents": [
                "INSERT INTO insights (agent) VALUES ('x')",
                "SELECT * FROM alert_deliveries",
                "SELECT * FROM fault_labels",
            ],
            "api": [
                "INSERT INTO window_stats (equipment_id) VALUES ('x')",
                "SELECT * FROM system.tables",
                "SELECT file('/etc/hostname')",
            ],
        }
        for name, statements in denied.items():
            for sql in statements:
                with pytest.raises(DatabaseError, match="may not"):
                    clients[name].command(sql)
        # ...and each can do its own work
        clients["sink"].command(
            "INSERT INTO window_stats (equipment_id, site, equipment_type, sensor, unit, window_start, window_end, "
            "count, avg, stddev, min, max, emitted_at) VALUES ('sink-1', 'site-3', 'pump', 'temp', 'C', now64(3), "
            "now64(3), 1, 1, 0, 1, 1, now64(3))"
        )
        clients["relay"].command("INSERT INTO alert_deliveries (receiver, recipient) VALUES ('r', 'p')")
        assert clients["agents"].query("SELECT count() FROM window_stats WHERE site = 'site-3'").result_rows == [(1,)]
        assert clients["api"].query("SELECT count() FROM window_stats", settings={"role": ""}).result_rows == [(0,)]
    finally:
        for client in clients.values():
            client.close()


def test_a_client_cannot_bypass_the_checks_with_raw_http(ch: ClickHouseSettings) -> None:
    url = f"http://{ch.host}:{ch.port}/"
    auth = (ch.user("console"), ch.password_file("console").read_text().strip())
    for body in (
        b"SELECT file('/etc/hostname')",
        b"SELECT 1;\nSELECT file('/etc/hostname')",
        b"SELECT * FROM system.users FORMAT TSV",
        b"SELECT 1 INTO OUTFILE 'x'",
    ):
        response = requests.post(url, data=body, auth=auth, timeout=10)
        assert response.status_code in (400, 403), (body, response.text)
    via_param = requests.post(url, params={"query": "SELECT file('/etc/hostname')"}, auth=auth, timeout=10)
    assert via_param.status_code == 403 and "file()" in via_param.text
    via_role = requests.post(
        url,
        params={"role": "vigil_site_site-1", "additional_table_filters": "{}"},
        data=b"SELECT count() FROM window_stats",
        auth=auth,
        timeout=10,
    )
    assert via_role.status_code == 403


def test_the_production_access_sql_parses_in_the_engine(ch: ClickHouseSettings) -> None:
    statements = render_access_sql(vigil_tables(ch), ch.users, {name: "ab" * 32 for name in ch.users}, ["site-1"])
    with contextlib.closing(make_client(ch, "admin")) as admin:
        for sql in statements:
            formatted = admin.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0]
            assert formatted.split()[0] in ("CREATE", "GRANT", "SET"), sql
