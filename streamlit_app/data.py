"""One facade over the console's stores, always read as one signed-in principal.

Pages never talk to a store directly: they ask :class:`ConsoleData`, which reads the hot path (Prometheus,
fed by the Pushgateway sink: the last hour of a machine's window statistics), the cold path (ClickHouse:
fleet state, long history, verdicts, the delivery log, the SQL workbench), Alertmanager (active alerts,
silences), the model registry and the simulator's fault labels, and applies the principal's site scope to
every one of them (streamlit_app.access).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
from clickhouse_connect.driver.client import Client

from connectors.alertmanager import AlertmanagerClient
from connectors.clickhouse import make_client, vigil_tables
from connectors.clickhouse_access import COMBINATORS_QUERY, FUNCTIONS_QUERY, FunctionCatalogue
from connectors.monitoring import MonitoringAccess, MonitoringCredentialsMissing, monitoring_access
from streamlit_app.access import (
    MAX_SQL_CHARS,
    AccessError,
    Principal,
    QueryScope,
    check_workbench_sql,
)
from vigil.settings import Settings

log = logging.getLogger(__name__)

STATES = ("critical", "warning", "silent", "healthy")
# The hot path keeps this much history worth charting (Prometheus holds more, at scrape resolution).
HOT_PATH_SPAN = timedelta(hours=1)
# How the hot path folds a chart bucket's samples of each exported window statistic into one point.
HOT_STAT_OVER_TIME = {"avg": "avg_over_time", "stddev": "avg_over_time", "min": "min_over_time", "max": "max_over_time"}


@functools.cache
def _http(access: MonitoringAccess) -> httpx.Client:
    """One pooled HTTP client per set of credentials for the process (thread-safe): ``httpx.get`` builds a
    client, TLS context included, per call (~30-60 ms of CPU on the 2-core VM against ~3 ms for a request on a
    kept connection)."""
    return access.httpx_client()


@functools.cache
def _alertmanager_client(url: str, access: MonitoringAccess) -> AlertmanagerClient:
    """One Alertmanager client (a pooled httpx client: thread-safe) per URL and credentials for the process."""
    return AlertmanagerClient(url, access=access)


class WorkbenchError(ValueError):
    """A workbench query was refused or failed; the message is for the analyst."""


@dataclass(frozen=True)
class MachineHistory:
    """What the Equipment page draws for one machine and time range."""

    windows: pd.DataFrame
    source: str  # which path the window statistics came from
    scores: pd.DataFrame  # the combined score over time (ConsoleData.score_history)
    anomalies: pd.DataFrame  # anomalous verdicts, newest first (ConsoleData.anomalous_windows)
    faults: pd.DataFrame
    insights: pd.DataFrame  # the agents' insights about the machine's episodes (ConsoleData.insights)


@dataclass(frozen=True)
class SqlResult:
    frame: pd.DataFrame
    truncated: bool
    elapsed_s: float


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# One machine's rows in [start, end): the tables' sort keys start with equipment_id, so this reads a few granules.
MACHINE_RANGE = "equipment_id = {e:String} AND window_start >= {s:DateTime64(3)} AND window_start < {t:DateTime64(3)}"


def _machine_range(equipment_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The parameters of :data:`MACHINE_RANGE`."""
    return {"e": equipment_id, "s": _utc(start), "t": _utc(end)}


class ConsoleData:
    """Everything a console page reads or changes, scoped to ``principal``."""

    def __init__(
        self,
        settings: Settings,
        principal: Principal,
        clickhouse: Client | None = None,
        connect: Callable[[], Client] | None = None,
    ) -> None:
        """``clickhouse``: a client to use; else ``connect`` makes one on the first query (by default a client of
        this facade's own), so pages that need no ClickHouse (active alerts) still work while it is down."""
        self.settings = settings
        self.principal = principal
        self._clickhouse = clickhouse
        self._connect = connect
        self.tables = vigil_tables(settings.clickhouse)
        self.scope = QueryScope(principal, self.tables)
        self.last_query: tuple[str, dict[str, Any], dict[str, Any]] | None = None
        self._catalogue: FunctionCatalogue | None = None

    # -- cold path (ClickHouse) ----------------------------------------------------------------------------
    @property
    def clickhouse(self) -> Client:
        if self._clickhouse is None:
            # No HTTP session: every query's site roles apply to that query alone.
            if self._connect is not None:
                self._clickhouse = self._connect()
            else:
                self._clickhouse = make_client(self.settings.clickhouse, "console", autogenerate_session_id=False)
        return self._clickhouse

    def query(self, sql: str, settings: dict[str, Any] | None = None, **params: Any) -> pd.DataFrame:
        """A console query under the principal's site scope (kept in ``last_query`` for benchmarks).

        An empty result still has its columns (the client returns a frame without any: they are asked of
        ClickHouse with DESCRIBE), so callers select and rename columns without a special case."""
        merged = {**self.scope.settings(), **(settings or {})}
        self.last_query = (sql, params, merged)
        return self._query_df(sql, params, merged)

    def _query_df(self, sql: str, params: dict[str, Any], settings: dict[str, Any]) -> pd.DataFrame:
        frame = self.clickhouse.query_df(sql, parameters=params, settings=settings)
        if frame.columns.empty:
            described = self.clickhouse.query(f"DESCRIBE ({sql})", parameters=params, settings=settings)
            frame = pd.DataFrame(columns=list(described.result_columns[0]))
        return frame

    def fleet(self) -> pd.DataFrame:
        """One row per visible machine: its newest verdict and a state (critical/warning/silent/healthy)."""
        silent_s = self.settings.prometheus.machine_silent_after_s
        frame = self.query(
            "SELECT equipment_id, site, equipment_type, window_end, severity, score, top_sensors, dead_sensors, "
            "summary, last_seen, "
            "multiIf(kind = 'dead_machine' OR last_seen < now64(3) - toIntervalSecond({silent:UInt32}), 'silent', "
            "severity = 'critical', 'critical', severity = 'warning', 'warning', 'healthy') AS state "
            "FROM machine_state FINAL ORDER BY site, equipment_id",
            silent=silent_s,
        )
        registry = self.equipment_registry()
        if registry is not None:
            frame = frame.merge(registry[["equipment_id", "line"]], on="equipment_id", how="left")
        if "line" not in frame:
            frame["line"] = ""
        frame["line"] = frame["line"].fillna("")
        return frame

    def equipment_registry(self) -> pd.DataFrame | None:
        """The edge's equipment registry (site, line, type per machine) when one is configured."""
        path = self.settings.edge.equipment_registry
        if path is None or not Path(path).exists():
            return None
        return pd.read_csv(path, dtype=str)

    def machines(self) -> list[str]:
        """Visible machine ids (from the fleet state)."""
        frame = self.query("SELECT DISTINCT equipment_id FROM machine_state ORDER BY equipment_id")
        return [] if frame.empty else frame["equipment_id"].tolist()

    def find_machines(self, text: str, limit: int = 20) -> list[str]:
        """Visible machine ids containing ``text`` (case-insensitive), first ``limit`` in id order: the
        Equipment page's search, instead of a 10,000-option list the browser takes ~0.5 s to mount."""
        frame = self.query(
            "SELECT DISTINCT equipment_id FROM machine_state "
            "WHERE positionCaseInsensitive(equipment_id, {q:String}) > 0 ORDER BY equipment_id LIMIT {n:UInt32}",
            q=text.strip(),
            n=limit,
        )
        return [] if frame.empty else frame["equipment_id"].tolist()

    def machine(self, equipment_id: str) -> dict[str, Any] | None:
        """The machine's newest state, or None when it does not exist or is not the principal's to see."""
        frame = self.query(
            "SELECT equipment_id, site, equipment_type, window_end, severity, score, top_sensors, summary, last_seen "
            "FROM machine_state FINAL WHERE equipment_id = {e:String} LIMIT 1",
            e=equipment_id,
        )
        return None if frame.empty else frame.iloc[0].to_dict()

    def bucket_s(self, start: datetime, end: datetime) -> int:
        """Seconds per chart point: one window while the range fits ``console.chart_points`` windows."""
        window_s = max(1, self.settings.window.size_ms // 1000)
        points = self.settings.console.chart_points
        return max(window_s, math.ceil((_utc(end) - _utc(start)).total_seconds() / points / window_s) * window_s)

    def cold_windows(self, equipment_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Window statistics of one machine from ClickHouse (the dedup view; the sort key prunes to it).

        Ranges longer than ``console.chart_points`` windows are aggregated into that many buckets per sensor in
        ClickHouse: count-weighted mean, pooled standard deviation, min of minima, max of maxima."""
        bucket = self.bucket_s(start, end)
        where = f"FROM window_stats_latest WHERE {MACHINE_RANGE}"
        if bucket * 1000 <= self.settings.window.size_ms:
            return self.query(
                f"SELECT window_start, window_end, sensor, unit, count, avg, stddev, min, max {where} "
                "ORDER BY sensor, window_start",
                **_machine_range(equipment_id, start, end),
            )
        frame = self.query(
            "SELECT toStartOfInterval(window_start, toIntervalSecond({b:UInt32})) AS bucket, "
            "max(window_end) AS bucket_end, sensor, any(unit) AS unit, sum(count) AS n, "
            "sum(avg * count) / n AS mean, "
            "sqrt(greatest(sum(count * (stddev * stddev + avg * avg)) / n - mean * mean, 0)) AS pooled_stddev, "
            f"min(min) AS lowest, max(max) AS highest {where} GROUP BY sensor, bucket ORDER BY sensor, bucket",
            b=bucket,
            **_machine_range(equipment_id, start, end),
        )
        return frame.rename(
            columns={
                "bucket": "window_start",
                "bucket_end": "window_end",
                "n": "count",
                "mean": "avg",
                "pooled_stddev": "stddev",
                "lowest": "min",
                "highest": "max",
            }
        )

    def score_history(self, equipment_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        """The machine's combined score over time, at most ``console.chart_points`` points: longer ranges keep
        each bucket's highest score (an anomaly is never averaged away) with that window's severity."""
        bucket = self.bucket_s(start, end)
        frame = self.query(
            "SELECT toStartOfInterval(window_start, toIntervalSecond({b:UInt32})) AS bucket, "
            "max(window_end) AS bucket_end, max(score) AS top_score, argMax(severity, score) AS top_severity, "
            f"argMax(summary, score) AS top_summary FROM anomalies_latest WHERE {MACHINE_RANGE} AND kind = 'window' "
            "GROUP BY bucket ORDER BY bucket",
            b=bucket,
            **_machine_range(equipment_id, start, end),
        )
        return frame.drop(columns="bucket").rename(
            columns={
                "bucket_end": "window_end",
                "top_score": "score",
                "top_severity": "severity",
                "top_summary": "summary",
            }
        )

    def anomalous_windows(self, equipment_id: str, start: datetime, end: datetime, limit: int = 500) -> pd.DataFrame:
        """The machine's anomalous verdicts in the range (newest ``limit``), with their detectors and sensors."""
        return self.query(
            "SELECT window_start, window_end, kind, severity, score, detectors, rule_hits, top_sensors, summary "
            f"FROM anomalies_latest WHERE {MACHINE_RANGE} AND is_anomaly = 1 "
            "ORDER BY window_start DESC LIMIT {n:UInt32}",
            n=limit,
            **_machine_range(equipment_id, start, end),
        )

    def insights(
        self, start: datetime, end: datetime, equipment_id: str | None = None, limit: int = 500
    ) -> pd.DataFrame:
        """The agents' insights about episodes ending in [start, end), newest first: one machine's, or those of
        every visible machine (shared causes included). ``details`` is parsed from its JSON."""
        machine = " AND equipment_id = {e:String}" if equipment_id is not None else ""
        frame = self.query(
            "SELECT window_start, window_end, equipment_id, site, equipment_type, agent, kind, title, severity, "
            f"confidence, fault_type, sensors, details FROM {self.settings.clickhouse.insights_table}_latest "
            "WHERE window_end >= {s:DateTime64(3)} AND window_end < {t:DateTime64(3)}"
            + machine
            + " ORDER BY window_end DESC, agent LIMIT {n:UInt32}",
            s=_utc(start),
            t=_utc(end),
            e=equipment_id or "",
            n=limit,
        )
        frame["details"] = frame["details"].map(orjson.loads)
        return frame

    def deliveries(self, hours: int = 24, limit: int = 500) -> pd.DataFrame:
        """The relay's delivery log (who was told what, when, and how it went)."""
        return self.query(
            "SELECT time, receiver, recipient, alertname, equipment_id, site, severity, alert_status, status, "
            "attempt, http_status, error, latency_ms FROM alert_deliveries "
            "WHERE time >= now64(3) - toIntervalHour({h:UInt32}) ORDER BY time DESC LIMIT {n:UInt32}",
            h=hours,
            n=limit,
        )

    def anomaly_history(self, hours: int = 24, limit: int = 500) -> pd.DataFrame:
        """Anomalous windows of the visible fleet, newest first."""
        return self.query(
            "SELECT window_end, equipment_id, site, equipment_type, severity, score, detectors, top_sensors, summary "
            "FROM anomalies WHERE is_anomaly = 1 AND window_start >= now64(3) - toIntervalHour({h:UInt32}) "
            "ORDER BY window_end DESC LIMIT {n:UInt32}",
            h=hours,
            n=limit,
        )

    # -- hot path (Prometheus) -----------------------------------------------------------------------------
    def hot_windows(self, equipment_id: str, start: datetime, end: datetime, site: str) -> pd.DataFrame:
        """The machine's window statistics as Prometheus scraped them from the Pushgateway.

        A step longer than the scrape interval aggregates the samples of each step (mean of the means and
        standard deviations, lowest minimum, highest maximum), so a bucketed chart keeps every extreme. Every
        statistic comes in one range query (each labelled with its ``stat``): one round trip, not one per
        statistic."""
        self.principal.check_site(site, "read the machine's live statistics")
        scrape = self.settings.prometheus.scrape_interval_s
        step = max(scrape, self.bucket_s(start, end))
        selector = f'equipment_id="{_promql_escape(equipment_id)}",site="{_promql_escape(site)}"'
        parts = []
        for stat in self.settings.prometheus.exported_stats:
            if stat in HOT_STAT_OVER_TIME:
                promql = f"vigil_window_{stat}{{{selector}}}"
                if step > scrape:
                    promql = f"{HOT_STAT_OVER_TIME[stat]}({promql}[{step}s])"
                parts.append(f'label_replace({promql}, "stat", "{stat}", "", "")')
        series = self._prometheus_range(" or ".join(parts), start, end, step) if parts else []
        frames = []
        for one in series:
            points = np.asarray(one.get("values", []), dtype=float).reshape(-1, 2)  # [unix seconds, value] pairs
            frames.append(
                pd.DataFrame(
                    {
                        "t": points[:, 0],
                        "sensor": one["metric"].get("sensor", ""),
                        "stat": one["metric"]["stat"],
                        "value": points[:, 1],
                    }
                )
            )
        if not frames:
            return pd.DataFrame(columns=["window_end", "sensor", "avg"])
        long = pd.concat(frames, ignore_index=True)
        wide = long.pivot_table(index=["t", "sensor"], columns="stat", values="value").reset_index()
        wide.columns.name = None
        wide.insert(0, "window_end", pd.to_datetime(wide.pop("t"), unit="s", utc=True))
        return wide.sort_values(["sensor", "window_end"]).reset_index(drop=True)

    def _prometheus_range(self, promql: str, start: datetime, end: datetime, step: int) -> list[dict[str, Any]]:
        url = f"{self.settings.prometheus.prometheus_url}/api/v1/query_range"
        params = {"query": promql, "start": _utc(start).timestamp(), "end": _utc(end).timestamp(), "step": step}
        resp = _http(monitoring_access(self.settings)).get(url, params=params, timeout=5.0)
        resp.raise_for_status()
        return resp.json()["data"]["result"]

    def live_windows(self, equipment_id: str, site: str, start: datetime, end: datetime) -> tuple[pd.DataFrame, str]:
        """The last hour from the hot path, anything longer (or a hot path without data) from ClickHouse."""
        if datetime.now(UTC) - _utc(start) <= HOT_PATH_SPAN + timedelta(minutes=1):
            try:
                frame = self.hot_windows(equipment_id, start, end, site)
                if not frame.empty:
                    return frame, "hot path (Prometheus)"
            except (httpx.HTTPError, KeyError, ValueError, MonitoringCredentialsMissing) as exc:
                log.warning("hot path unavailable, reading ClickHouse: %s", exc)
        return self.cold_windows(equipment_id, start, end), "cold path (ClickHouse)"

    def machine_history(self, equipment_id: str, site: str, start: datetime, end: datetime) -> MachineHistory:
        """Windows, scores, anomalies, fault labels and insights of one machine, fetched concurrently (the client has no
        HTTP session, so its connection pool serves parallel queries): the page waits for the slowest, not the sum."""
        _ = self.clickhouse  # create the client before the threads share it
        with ThreadPoolExecutor(max_workers=5, thread_name_prefix="console-fetch") as pool:
            windows = pool.submit(self.live_windows, equipment_id, site, start, end)
            scores = pool.submit(self.score_history, equipment_id, start, end)
            anomalies = pool.submit(self.anomalous_windows, equipment_id, start, end)
            faults = pool.submit(self.faults, equipment_id, start, end)
            insights = pool.submit(self.insights, start, end, equipment_id)
            frame, source = windows.result()
            return MachineHistory(
                frame, source, scores.result(), anomalies.result(), faults.result(), insights.result()
            )

    # -- fault labels (simulator ground truth) -------------------------------------------------------------
    def faults(self, equipment_id: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Injected faults of one machine overlapping [start, end) (the simulator's labels, when present)."""
        path = self.settings.ground_truth_path
        columns = ["fault_type", "sensors", "start", "end"]
        if not Path(path).exists():
            return pd.DataFrame(columns=columns)
        lo, hi = _utc(start).timestamp() * 1000, _utc(end).timestamp() * 1000
        rows = []
        with Path(path).open("rb") as handle:
            for line in handle:
                if equipment_id.encode() not in line:
                    continue
                label = orjson.loads(line)
                if label.get("machine") != equipment_id or label["end_ms"] < lo or label["start_ms"] >= hi:
                    continue
                rows.append(
                    [
                        label.get("fault_type", ""),
                        ", ".join(label.get("sensors", [])),
                        pd.Timestamp(label["start_ms"], unit="ms", tz="UTC"),
                        pd.Timestamp(label["end_ms"], unit="ms", tz="UTC"),
                    ]
                )
        return pd.DataFrame(rows, columns=columns)

    # -- Alertmanager --------------------------------------------------------------------------------------
    def _alertmanager(self) -> AlertmanagerClient:
        return _alertmanager_client(self.settings.prometheus.alertmanager_url, monitoring_access(self.settings))

    def active_alerts(self) -> list[dict[str, Any]]:
        """Active, silenced and inhibited alerts whose site the principal sees (site-less pipeline alerts too)."""
        alerts = self._alertmanager().get_alerts()
        return [a for a in alerts if "site" not in a["labels"] or self.principal.sees_site(a["labels"]["site"])]

    def acknowledge(self, labels: dict[str, str], comment: str, hours: float) -> str:
        """Silence one alert (by its identifying labels) with the principal as author; returns the silence id."""
        self.principal.require("engineer", "acknowledge alerts")
        if "site" in labels:
            self.principal.check_site(labels["site"], "acknowledge alerts")
        else:
            self.principal.require("admin", "acknowledge an alert that is not about one site")
        keys = [k for k in ("alertname", "site", "equipment_id", "sensor", "detector") if k in labels]
        matchers = [{"name": k, "value": labels[k]} for k in keys]
        return self._alertmanager().create_silence(matchers, timedelta(hours=hours), comment, self.principal.name)

    def silences(self) -> list[dict[str, Any]]:
        silences = self._alertmanager().list_silences()
        return [s for s in silences if self._may_see_silence(s)]

    def _may_see_silence(self, silence: dict[str, Any]) -> bool:
        sites = [m["value"] for m in silence.get("matchers", []) if m["name"] == "site" and not m.get("isRegex")]
        return self.principal.sites is None or (bool(sites) and all(self.principal.sees_site(s) for s in sites))

    def unsilence(self, silence_id: str) -> None:
        self.principal.require("engineer", "end silences")
        am = self._alertmanager()
        silence = next((s for s in am.list_silences() if s["id"] == silence_id), None)
        if silence is None:
            raise AccessError(f"no active silence {silence_id!r}")
        if not self._may_see_silence(silence):
            raise AccessError(f"{self.principal.name} may not end silence {silence_id}: it covers other sites")
        am.expire_silence(silence_id)

    # -- SQL workbench -------------------------------------------------------------------------------------
    def _function_catalogue(self) -> FunctionCatalogue:
        if self._catalogue is None:
            functions = self.clickhouse.query(FUNCTIONS_QUERY, settings=self.scope.settings()).result_rows
            combinators = self.clickhouse.query(COMBINATORS_QUERY, settings=self.scope.settings()).result_rows
            self._catalogue = FunctionCatalogue.from_rows(functions, [row[0] for row in combinators])
        return self._catalogue

    def run_sql(self, sql: str, max_rows: int | None = None, timeout_s: float | None = None) -> SqlResult:
        """An analyst's SELECT, checked by ClickHouse's own parser, read-only, site-scoped, row-limited (the
        server's profile for the console's identity bounds its time, memory and bytes read)."""
        console = self.settings.console
        max_rows = max_rows or console.sql_max_rows
        timeout_s = timeout_s or console.sql_timeout_s
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise WorkbenchError("write a SELECT query first")
        if len(sql) > MAX_SQL_CHARS:
            raise WorkbenchError(f"the query is {len(sql):,} characters; the workbench takes at most {MAX_SQL_CHARS:,}")
        try:
            # No fmt: the client would append a FORMAT clause to the explained query (the server answers TSV).
            ast = self.clickhouse.raw_query(f"EXPLAIN AST {sql}", settings=self.scope.settings())
            catalogue = self._function_catalogue()
        except Exception as exc:  # the engine's own syntax error, for the analyst
            raise WorkbenchError(_clickhouse_message(exc)) from exc
        problems = check_workbench_sql(ast.decode().splitlines(), sql, self.tables, catalogue)
        if problems:
            raise WorkbenchError("; ".join(problems))
        # Rows and time are the workbench's own limits (the server lets a query lower its profile's limits, never
        # raise them); memory and bytes read are the console identity's profile.
        started = datetime.now(UTC)
        try:
            # Newlines around the analyst's text: a trailing comment must not swallow the closing parenthesis.
            frame = self._query_df(
                f"SELECT * FROM (\n{sql}\n) LIMIT {int(max_rows) + 1}",
                {},
                {**self.scope.settings(), "max_execution_time": timeout_s},
            )
        except Exception as exc:
            raise WorkbenchError(_clickhouse_message(exc)) from exc
        elapsed = (datetime.now(UTC) - started).total_seconds()
        truncated = len(frame) > max_rows  # one row more than the limit was asked for: there is more
        return SqlResult(frame.head(max_rows), truncated, elapsed)


def _promql_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _clickhouse_message(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Code: \d+\. DB::Exception: (.*?)(?: \(([A-Z_]+)\))?(?:\s*\(version.*)?$", text, re.S)
    return (match.group(1).strip() if match else text.strip())[:800]
