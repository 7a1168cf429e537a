"""`vigil bench console`: how fast the console's pages and the ClickHouse queries behind them are at fleet scale.

Seeds a dedicated ClickHouse database (``<database>_console_bench``, the stack's server) with a fleet of N
machines (default 10,000, 8 sensors each): ``minutes`` of 5-s window statistics and one verdict per machine and
window (which also fills ``machine_state`` through its materialized view), vectorised with numpy and inserted
as Arrow. Then it times, as an admin (every site, so no filter narrows the work) and as a one-site analyst:

- each console query (median and max of ``repeats`` runs) with the rows ClickHouse read, against the table's
  size: a one-machine view must read a few granules, never the table;
- each page's first render and refresh (streamlit AppTest: the script run, queries and chart specs included;
  a browser paints on top of that);
- Fleet and Equipment in headless Chromium: navigation to the page until its tables / charts are visible, and
  an alert link (in a new tab of the signed-in browser; in a fresh browser, sign-in first) until that
  machine's charts are drawn.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from connectors.clickhouse import apply_schema, make_client
from operations.bench.throughput import machine_description
from operations.stack.services import Stack
from streamlit_app.access import Principal, set_user
from streamlit_app.data import ConsoleData
from vigil.settings import PROJECT_ROOT, Settings, get_settings

SENSORS = (
    "bearing_temp",
    "discharge_pressure",
    "flow",
    "motor_current",
    "oil_pressure",
    "suction_pressure",
    "vibration_rms",
    "winding_temp",
)
SITES = 4
WINDOW_MS = 5000


@dataclass
class QueryTiming:
    name: str
    who: str
    median_ms: float
    max_ms: float
    rows: int
    read_rows: int
    table_rows: int


@dataclass
class ConsoleBenchResult:
    machines: int
    minutes: int
    when: str
    machine_description: str
    seed_s: float
    window_rows: int
    verdict_rows: int
    queries: list[QueryTiming] = field(default_factory=list)
    pages: dict[str, dict[str, float]] = field(default_factory=dict)  # page -> {first, refresh} seconds
    browser: dict[str, float] = field(default_factory=dict)  # page -> seconds until visible


def bench_settings(settings: Settings) -> Settings:
    ch = settings.clickhouse.model_copy(update={"database": f"{settings.clickhouse.database}_console_bench"})
    return settings.model_copy(update={"clickhouse": ch})


def console_settings(settings: Settings) -> Settings:
    """The bench's own console service: its own run directory, port and users file, so a running demo
    console (and its users) are left alone; the same ClickHouse server, bench database."""
    console = settings.console.model_copy(update={"port": settings.console.port + 7, "users_path": None})
    return settings.model_copy(update={"data_dir": settings.data_dir / "console-bench", "console": console})


def _machines(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    types = np.array(["pump", "motor", "compressor", "fan"])
    ids = np.array([f"{types[i % 4]}-{i // 4 + 1:05d}" for i in range(n)])
    sites = np.array([f"site-{i % SITES + 1}" for i in range(n)])
    return ids, sites, types[np.arange(n) % 4]


def seed(
    settings: Settings, machines: int, minutes: int, console: Console, reuse: bool = False
) -> tuple[float, int, int]:
    """Fill the bench database (``reuse``: keep one of the same size); returns (seconds, window rows, verdicts)."""

    client = make_client(settings.clickhouse, "admin", autogenerate_session_id=False)
    if reuse:
        try:
            counts = client.query(
                "SELECT (SELECT uniqExact(equipment_id) FROM machine_state), "
                "(SELECT count() FROM window_stats), (SELECT count() FROM anomalies)"
            ).result_rows[0]
        except Exception:  # noqa: BLE001 - no bench database yet: seed it
            counts = (0, 0, 0)
        if counts[0] == machines and counts[1] == machines * len(SENSORS) * minutes * 12:
            console.print(f"reusing the seeded database {settings.clickhouse.database}")
            return 0.0, int(counts[1]), int(counts[2])
    client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    apply_schema(client, settings.clickhouse)
    ids, sites, types = _machines(machines)
    end_ms = int(time.time() * 1000) // WINDOW_MS * WINDOW_MS
    windows = minutes * 60_000 // WINDOW_MS
    rng = np.random.default_rng(3)
    started = time.perf_counter()
    window_rows = verdict_rows = 0
    with Progress(console=console) as progress:
        task = progress.add_task(f"seeding {machines:,} machines x {minutes} min", total=windows)
        for w in range(windows):
            start_ms = end_ms - (windows - w) * WINDOW_MS
            starts = np.full(machines * len(SENSORS), start_ms, dtype="datetime64[ms]")
            avg = rng.normal(50.0, 5.0, machines * len(SENSORS))
            stats = pa.table(
                {
                    "equipment_id": np.repeat(ids, len(SENSORS)),
                    "site": np.repeat(sites, len(SENSORS)),
                    "equipment_type": np.repeat(types, len(SENSORS)),
                    "sensor": np.tile(SENSORS, machines),
                    "unit": np.full(machines * len(SENSORS), "u"),
                    "window_start": starts,
                    "window_end": starts + np.timedelta64(WINDOW_MS, "ms"),
                    "count": np.full(machines * len(SENSORS), 10, dtype=np.uint32),
                    "avg": avg,
                    "stddev": np.abs(rng.normal(1.0, 0.2, avg.size)),
                    "min": avg - 2.0,
                    "max": avg + 2.0,
                    "emitted_at": starts + np.timedelta64(WINDOW_MS + 1500, "ms"),
                }
            )
            client.insert_arrow("window_stats", stats, settings={"optimize_on_insert": 0})
            window_rows += stats.num_rows
            score = np.abs(rng.normal(0.3, 0.25, machines))
            severity = np.where(score > 1.5, "critical", np.where(score > 1.0, "warning", "normal"))
            mstarts = np.full(machines, start_ms, dtype="datetime64[ms]")
            empty = pa.array([[]] * machines, type=pa.list_(pa.string()))
            top = pa.array(
                [[SENSORS[i % len(SENSORS)]] if s > 1.0 else [] for i, s in enumerate(score)],
                type=pa.list_(pa.string()),
            )
            verdicts = pa.table(
                {
                    "equipment_id": ids,
                    "site": sites,
                    "equipment_type": types,
                    "window_start": mstarts,
                    "window_end": mstarts + np.timedelta64(WINDOW_MS, "ms"),
                    "kind": np.full(machines, "window"),
                    "is_anomaly": (score > 1.0).astype(np.uint8),
                    "severity": severity,
                    "score": score,
                    "scores": pa.MapArray.from_arrays(
                        pa.array(np.arange(0, 3 * machines + 1, 3), pa.int32()),
                        pa.array(np.tile(["pca_t2q", "isolation_forest", "rules"], machines)),
                        pa.array(np.column_stack([score, score * 0.9, np.zeros(machines)]).ravel()),
                    ),
                    "detectors": pa.array([["pca_t2q"] if s > 1.0 else [] for s in score], type=pa.list_(pa.string())),
                    "rule_hits": empty,
                    "top_sensors": top,
                    "dead_sensors": empty,
                    "model_versions": np.full(machines, "pca_t2q=v0001"),
                    "summary": np.where(score > 1.0, "pca_t2q above its threshold", ""),
                    "last_seen": mstarts + np.timedelta64(WINDOW_MS, "ms"),
                    "emitted_at": mstarts + np.timedelta64(WINDOW_MS + 2500, "ms"),
                }
            )
            client.insert_arrow("anomalies", verdicts, settings={"optimize_on_insert": 0})
            verdict_rows += verdicts.num_rows
            progress.advance(task)
    return time.perf_counter() - started, window_rows, verdict_rows


def _time_queries(settings: Settings, who: Any, repeats: int) -> list[QueryTiming]:
    """Every query behind Fleet and Equipment, timed through the same facade the pages use."""

    data = ConsoleData(settings, who)
    machines = data.machines()
    machine = machines[len(machines) // 2]
    now = datetime.now(UTC)
    sizes = {
        t: data.clickhouse.query(f"SELECT count() FROM {t}").result_rows[0][0]
        for t in ("window_stats", "anomalies", "machine_state")
    }
    cases = [
        ("fleet state (all visible machines)", "machine_state", data.fleet),
        ("machine list", "machine_state", data.machines),
        ("one machine: newest state", "machine_state", lambda: data.machine(machine)),
        (
            "one machine: 15 min of window stats",
            "window_stats",
            lambda: data.cold_windows(machine, now - timedelta(minutes=15), now),
        ),
        (
            "one machine: 1 h of window stats",
            "window_stats",
            lambda: data.cold_windows(machine, now - timedelta(hours=1), now),
        ),
        (
            "one machine: 24 h of window stats (aggregated)",
            "window_stats",
            lambda: data.cold_windows(machine, now - timedelta(hours=24), now),
        ),
        ("one machine: 1 h of scores", "anomalies", lambda: data.score_history(machine, now - timedelta(hours=1), now)),
        (
            "one machine: 1 h of anomalous windows",
            "anomalies",
            lambda: data.anomalous_windows(machine, now - timedelta(hours=1), now),
        ),
        ("anomaly history (24 h, 500 newest)", "anomalies", lambda: data.anomaly_history(24)),
    ]
    timings = []
    for name, table, run in cases:
        seconds, rows = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            result = run()
            seconds.append(time.perf_counter() - started)
            rows = len(result) if isinstance(result, pd.DataFrame | list) else 1
        read = _estimated_rows(data)
        timings.append(
            QueryTiming(
                name, who.name, statistics.median(seconds) * 1000, max(seconds) * 1000, rows, read, sizes[table]
            )
        )
    return timings


def _estimated_rows(data: Any) -> int:
    """Rows ClickHouse plans to read for the facade's newest query after primary-key and partition pruning
    (EXPLAIN ESTIMATE), the figure that tells a one-machine read from a table scan."""
    sql, params, settings = data.last_query
    rows = data.clickhouse.query(f"EXPLAIN ESTIMATE {sql}", parameters=params, settings=settings).named_results()
    return sum(int(row["rows"]) for row in rows)


def _time_pages(settings: Settings, who: Any) -> dict[str, dict[str, float]]:
    """First render and refresh of each page script (AppTest runs the script as a browser session would)."""

    from streamlit.testing.v1 import AppTest

    os.environ.update(settings.to_env())
    get_settings.cache_clear()
    out: dict[str, dict[str, float]] = {}
    for name in ("fleet", "equipment", "alerts", "sql", "models"):
        app = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app" / "views" / f"{name}.py"), default_timeout=120)
        app.session_state["vigil_principal"] = who
        started = time.perf_counter()
        app.run()
        first = time.perf_counter() - started
        if app.exception:
            raise RuntimeError(f"the {name} page failed: {[e.value for e in app.exception]}")
        started = time.perf_counter()
        app.run()
        out[name] = {"first": first, "refresh": time.perf_counter() - started}
    return out


# Playwright's expect() re-checks with a growing back-off (20, 50, 100, 100, then every 500 ms: its
# retryWithProgressAndBackoff), so what it times lags the page by up to half a second, and each check
# (text and visibility of every match) runs on the page's busy main thread. This checks on every frame instead.
_SHOWN_JS = """([selector, texts, count]) => {
    const shown = [...document.querySelectorAll(selector)].filter(e => e.getBoundingClientRect().height > 0);
    return shown.length >= count && texts.every(t => shown.some(e => e.textContent.includes(t)));
}"""


def _shown(page: Any, selector: str, *texts: str, count: int = 1) -> None:
    """Return once elements matching ``selector`` are laid out (non-zero height) and hold each of ``texts``."""
    page.wait_for_function(_SHOWN_JS, arg=[selector, list(texts), count], polling="raf")


def _alerted_machines(settings: Settings) -> tuple[str, str]:
    """Two machines an alert would link to: the two with the most anomalous windows in the seeded data (their
    page draws anomaly marks and the anomalies table; a machine without any draws less)."""

    client = make_client(settings.clickhouse, "admin", autogenerate_session_id=False)
    try:
        rows = client.query(
            "SELECT equipment_id FROM anomalies WHERE is_anomaly GROUP BY equipment_id "
            "ORDER BY count() DESC, equipment_id LIMIT 2"
        ).result_rows
    finally:
        client.close()
    if len(rows) < 2:
        raise RuntimeError(
            "the bench database holds fewer than two machines with anomalies: seed it again "
            "(`vigil bench console` without --reuse)"
        )
    return rows[0][0], rows[1][0]


def _time_browser(settings: Settings, machines: int, console: Console) -> dict[str, float]:
    """Seconds from a click to the page's content being visible, in headless Chromium (admin).

    Two journeys, each in a browser of its own (nothing cached): sign-in -> Fleet -> Equipment -> Fleet ->
    Equipment -> an alert link (``/?equipment=ID``) in a new tab (the remembered sign-in: no password, the page
    loads from the address bar), then the next alert's link in another new tab, and an alert link opened in a
    fresh browser: sign-in -> that machine. Fleet has drawn its last chart and settled before the click that
    leaves it, as a person reads a page before clicking on (its code then is the browser's by the next page).
    """
    from playwright.sync_api import expect, sync_playwright

    settings = console_settings(settings)
    set_user(settings.console_users_path, "bench-admin", "admin", ["*"], "bench-password-1")
    stack = Stack(settings)
    stack.down(("console",))
    stack.up(("console",))
    url = f"http://{settings.console.host}:{settings.console.port}"
    linked, next_alert = _alerted_machines(settings)
    out: dict[str, float] = {}
    try:
        with sync_playwright() as playwright:

            def signed_in_page(address: str) -> tuple[Any, Any]:
                """A new browser at the sign-in page, credentials typed; the caller times the click."""
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=[
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--no-first-run",
                    ],
                )
                page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                page.set_default_timeout(60_000)
                page.goto(address)
                page.get_by_role("textbox", name="user name").fill("bench-admin")
                page.get_by_role("textbox", name="password").fill("bench-password-1")
                page.wait_for_load_state("networkidle")  # as a person would: the page has settled while typing
                return browser, page

            def charts_drawn(page: Any) -> None:  # every sensor (one faceted chart), then the score
                _shown(page, "[data-testid='stVegaLiteChart']", SENSORS[-1], "score / threshold")

            def fleet_drawn(page: Any) -> None:  # the urgent list and all three tables of Fleet
                _shown(page, "[data-testid='stHeading']", "Most urgent now")
                _shown(page, "[data-testid='stDataFrame']", count=3)

            def fleet_read(page: Any, since: float) -> float:
                """Fleet's last element (the chart by site) drawn: its seconds since ``since``; then the page
                settles (no requests for 0.5 s) before the next click, as a person reads before clicking."""
                _shown(page, "[data-testid='stVegaLiteChart']", "machines")
                seconds = time.perf_counter() - since
                page.wait_for_load_state("networkidle")
                return seconds

            def state_shown(page: Any) -> None:
                _shown(page, "[data-testid='stMetricLabel']", "severity now")

            browser, page = signed_in_page(url)
            started = time.perf_counter()
            page.get_by_role("button", name="Sign in").click()
            fleet_drawn(page)
            out["fleet (after sign-in)"] = time.perf_counter() - started
            out["fleet (after sign-in): its chart too"] = fleet_read(page, started)
            started = time.perf_counter()
            page.get_by_role("link", name="Equipment").click()
            state_shown(page)
            out["equipment (machine state shown)"] = time.perf_counter() - started
            charts_drawn(page)
            out["equipment (every chart drawn)"] = time.perf_counter() - started
            started = time.perf_counter()
            page.get_by_role("link", name="Fleet").click()
            fleet_drawn(page)
            out["fleet (from equipment)"] = time.perf_counter() - started
            fleet_read(page, started)
            started = time.perf_counter()
            page.get_by_role("link", name="Equipment").click()
            state_shown(page)
            charts_drawn(page)
            out["equipment again (every chart drawn)"] = time.perf_counter() - started
            # The browser remembers the sign-in: an alert link opens directly, in a new tab; then the next alert's.
            for which, machine in (("new tab", linked), ("next alert's new tab", next_alert)):
                tab = page.context.new_page()
                tab.set_default_timeout(60_000)
                started = time.perf_counter()
                tab.goto(f"{url}/?equipment={machine}")
                state_shown(tab)
                out[f"alert link, {which} of a signed-in browser: machine state"] = time.perf_counter() - started
                charts_drawn(tab)
                out[f"alert link, {which} of a signed-in browser: every chart drawn"] = time.perf_counter() - started
                tab.close()
            browser.close()

            browser, page = signed_in_page(f"{url}/?equipment={linked}")
            started = time.perf_counter()
            page.get_by_role("button", name="Sign in").click()
            state_shown(page)
            expect(page.get_by_role("textbox", name="machine")).to_have_value(linked)
            out["alert link, fresh browser: sign-in -> machine state"] = time.perf_counter() - started
            charts_drawn(page)
            out["alert link, fresh browser: sign-in -> every chart drawn"] = time.perf_counter() - started
            browser.close()
    finally:
        stack.down(("console",))
    console.print("browser timings done")
    return out


def run_console_bench(
    settings: Settings, machines: int, minutes: int, repeats: int, browser: bool, console: Console, reuse: bool = False
) -> ConsoleBenchResult:

    settings = bench_settings(settings)
    with console.status("starting ClickHouse, Prometheus and Alertmanager..."):
        Stack(settings).up(("clickhouse", "prometheus", "alertmanager"))
    seconds, window_rows, verdict_rows = seed(settings, machines, minutes, console, reuse)
    result = ConsoleBenchResult(
        machines,
        minutes,
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine_description(),
        seconds,
        window_rows,
        verdict_rows,
    )
    admin = Principal("bench-admin", "admin", None)
    analyst = Principal("bench-analyst", "analyst", frozenset({"site-2"}))
    with console.status("timing the console's queries..."):
        result.queries = _time_queries(settings, admin, repeats) + _time_queries(settings, analyst, repeats)
    with console.status("timing page renders..."):
        result.pages = _time_pages(settings, admin)
    if browser:
        with console.status("timing pages in headless Chromium..."):
            result.browser = _time_browser(settings, machines, console)
    return result


def results_tables(result: ConsoleBenchResult) -> list[Table]:
    head = (
        f"vigil bench console — {result.when} — {result.machine_description}\n{result.machines:,} machines, "
        f"{result.minutes} min: {result.window_rows:,} window rows, {result.verdict_rows:,} verdicts "
        f"(seeded in {result.seed_s:.0f} s)"
    )
    queries = Table(
        "query", "as", "median ms", "max ms", "rows", "rows to read (EXPLAIN ESTIMATE)", "table rows", title=head
    )
    for q in result.queries:
        queries.add_row(
            q.name,
            q.who,
            f"{q.median_ms:.0f}",
            f"{q.max_ms:.0f}",
            f"{q.rows:,}",
            f"{q.read_rows:,}",
            f"{q.table_rows:,}",
        )
    pages = Table("page (admin, AppTest)", "first render s", "refresh s")
    for name, t in result.pages.items():
        pages.add_row(name, f"{t['first']:.2f}", f"{t['refresh']:.2f}")
    tables = [queries, pages]
    if result.browser:
        browser = Table("in headless Chromium (admin)", "s until visible")
        for name, s in result.browser.items():
            browser.add_row(name, f"{s:.2f}")
        tables.append(browser)
    return tables


def write_json(result: ConsoleBenchResult, path: Path) -> None:

    path.write_bytes(orjson.dumps(dataclasses.asdict(result), option=orjson.OPT_INDENT_2))
