"""The analyst console on the real local stack: a simulated fleet streams through the edge and the Flink jobs
into ClickHouse, Prometheus and Alertmanager, and every page is rendered (streamlit AppTest) as users of
different roles and sites. A site-1 analyst must not see or query site-2 data, whatever they type.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from connectors.alertmanager import AlertmanagerClient, rfc3339
from connectors.clickhouse import INSIGHT_RECORDS, insert_rows, make_client, records_to_arrow
from connectors.monitoring import monitoring_session
from detectors.pca_t2q import PcaT2Q
from edge.simulator.equipment import EQUIPMENT_TYPES
from onnx_models.registry import ModelRegistry
from streamlit_app.access import AccessError, Principal, set_user
from streamlit_app.data import ConsoleData, WorkbenchError
from tests.conftest import LiveFleet, free_port
from tests.integration.test_pipeline_e2e import poll
from vigil.settings import PROJECT_ROOT, Settings, get_settings

pytestmark = [pytest.mark.integration, pytest.mark.streams_live]

APP = PROJECT_ROOT / "streamlit_app"
ANALYST = Principal("ana", "analyst", frozenset({"site-1"}))
ENGINEER = Principal("eng", "engineer", frozenset({"site-1"}))
ADMIN = Principal("root", "admin", None)


@pytest.fixture(scope="module")
def live(live_fleet: LiveFleet) -> LiveFleet:
    for name, who in (("ana", ANALYST), ("eng", ENGINEER), ("root", ADMIN)):
        set_user(
            live_fleet.settings.console_users_path, name, who.role, sorted(who.sites or ["*"]), f"{name}-password-1"
        )
    return live_fleet


@pytest.fixture
def env(live: LiveFleet, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveFleet]:
    """The pages read settings from the environment, as the console service does."""
    for key, value in live.settings.to_env().items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield live
    get_settings.cache_clear()


def page(name: str, who: Principal | None, **query: str) -> AppTest:
    app = AppTest.from_file(
        str(APP / "views" / f"{name}.py") if name != "app" else str(APP / "app.py"), default_timeout=60
    )
    if who is not None:
        app.session_state["vigil_principal"] = who
    for key, value in query.items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def frames(app: AppTest) -> list:
    return [d.value for d in app.dataframe]


# -- sign-in -------------------------------------------------------------------------------------------------


def test_sign_in_with_a_local_password(env: LiveFleet) -> None:
    app = page("app", None)
    assert app.title[0].value == "Vigil — sign in"
    app.text_input[0].input("ana")
    app.text_input[1].input("wrong-password")
    app.button[0].click().run()
    assert [e.value for e in app.error] == ["Wrong user name or password."]
    assert "vigil_principal" not in app.session_state
    app.text_input[1].input("ana-password-1")
    app.button[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["vigil_principal"] == Principal("ana", "analyst", frozenset({"site-1"}), "ana")
    assert app.title[0].value == "Fleet"  # the default page after signing in
    assert "**ana** · analyst" in app.sidebar.markdown[0].value


def test_repeated_failed_sign_ins_hold_the_user_name(env: LiveFleet) -> None:
    """After console.signin_failures_per_user wrong passwords the name is refused without a check (its
    password, right or wrong, is not tried) until the window has moved on."""
    app = page("app", None)
    for _ in range(env.settings.console.signin_failures_per_user):
        app.text_input[0].input("mallory")
        app.text_input[1].input("guess")
        app.button[0].click().run()
        assert [e.value for e in app.error] == ["Wrong user name or password."]
    app.text_input[1].input("another-guess")
    app.button[0].click().run()
    assert [e.value for e in app.error][0].startswith("Too many failed sign-ins for this user name")
    assert "vigil_principal" not in app.session_state


# -- Fleet ---------------------------------------------------------------------------------------------------


def machine_sites(settings: Settings) -> dict[str, set[str]]:
    """Every machine's site(s) in machine_state, read without any scope (other tests reuse machine names)."""
    admin = make_client(settings.clickhouse, "admin")
    rows = admin.query("SELECT equipment_id, site FROM machine_state FINAL").result_rows
    sites: dict[str, set[str]] = {}
    for equipment_id, site in rows:
        sites.setdefault(equipment_id, set()).add(site)
    return sites


def test_fleet_shows_every_machine_to_an_admin_and_only_site_1_to_its_analyst(env: LiveFleet) -> None:
    truth = machine_sites(env.settings)
    site_1 = {m for m, sites in truth.items() if "site-1" in sites}
    assert env.ids("site-1") <= site_1 and env.ids("site-2") <= set(truth)
    for who, expected, rows in ((ADMIN, set(truth), sum(map(len, truth.values()))), (ANALYST, site_1, len(site_1))):
        app = page("fleet", who)
        metrics = {m.label: m.value for m in app.metric}
        assert int(metrics["machines"].replace(",", "")) == rows
        states = sum(int(v.replace(",", "")) for k, v in metrics.items() if k != "machines")
        assert states == rows  # every machine has exactly one state
        app.multiselect(key="fleet_states").set_value(["critical", "warning", "silent", "healthy"]).run()
        machines = frames(app)[-1]
        assert {link.split("=", 1)[1] for link in machines["open"]} == expected, who
        by_site = frames(app)[0]
        assert set(by_site["site"]) == ({"site-1", "site-2"} if who is ADMIN else {"site-1"})
        fleet_lines = by_site[by_site["line"] != ""]
        assert set(fleet_lines["line"]) <= {m.line for m in env.fleet.machines}  # from the equipment registry
        assert len(fleet_lines), "the live fleet's lines come from its equipment registry"


# -- Equipment -----------------------------------------------------------------------------------------------


def test_equipment_page_charts_a_machine_and_refuses_another_sites_machine(env: LiveFleet) -> None:
    truth = machine_sites(env.settings)
    mine = sorted(m for m in env.ids("site-1") if truth[m] == {"site-1"})[0]
    app = page("equipment", ANALYST, equipment=mine)
    assert app.text_input(key="equipment_id").value == mine
    assert {m.label: m.value for m in app.metric}["site"] == "site-1"
    machine = next(m for m in env.fleet.machines if m.equipment_id == mine)
    sensors = EQUIPMENT_TYPES[machine.equipment_type].sensor_names
    charts = app.get("vega_lite_chart")
    assert len(charts) == 2, "the sensors (one faceted chart) and the anomaly score"
    charted = pa.ipc.open_stream(charts[0].proto.data.data).read_all()
    assert set(charted.column("sensor").to_pylist()) - {None} == set(sensors), "every sensor is in the chart"
    assert any("window statistics from the hot path (Prometheus)" in c.value for c in app.caption)  # last hour
    # 24 hours come from ClickHouse (the cold path)
    app.radio(key="equipment_range").set_value("24 hours").run()
    assert any("cold path (ClickHouse)" in c.value for c in app.caption)

    theirs = sorted(m for m in env.ids("site-2") if truth[m] == {"site-2"})[0]
    app = page("equipment", ANALYST, equipment=theirs)
    assert any(theirs in e.value and "site-1" in e.value for e in app.error)
    # searching lists only the analyst's own machines, and picking one opens it
    app = page("equipment", ANALYST)
    app.text_input(key="equipment_id").set_value("live-").run()
    matches = {b.label for b in app.button if (b.key or "").startswith("pick-")}
    assert mine in matches and theirs not in matches
    assert matches <= {m for m, s in truth.items() if "site-1" in s}
    app.button(key=f"pick-{mine}").click().run()
    assert app.text_input(key="equipment_id").value == mine
    assert {m.label: m.value for m in app.metric}["site"] == "site-1"
    with pytest.raises(AccessError):
        ConsoleData(env.settings, ANALYST).hot_windows(
            theirs, datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC), "site-2"
        )


def test_hot_path_buckets_keep_each_steps_extremes(env: LiveFleet) -> None:
    """An hour from Prometheus at 240 chart points is stepped every 15 s: each point must fold the samples of its
    step (lowest minimum, highest maximum, mean of means), not be the one sample at the step's end."""
    data = ConsoleData(env.settings, ADMIN)
    truth = machine_sites(env.settings)
    machine = sorted(m for m in env.ids("site-1") if truth[m] == {"site-1"})[0]
    end = datetime.now(UTC)
    start = end - timedelta(hours=1)
    step = data.bucket_s(start, end)
    assert step == 15 > env.settings.prometheus.scrape_interval_s
    got = data.hot_windows(machine, start, end, "site-1")
    assert not got.empty and got.groupby("sensor").size().max() <= env.settings.console.chart_points + 1
    selector = f'equipment_id="{machine}",site="site-1"'
    query = f"{env.settings.prometheus.prometheus_url}/api/v1/query"
    for stat, fold in (("max", np.max), ("min", np.min), ("avg", np.mean)):
        # every raw sample of the hour: an instant query of a range vector returns them unevaluated
        resp = monitoring_session(env.settings).get(
            query, params={"query": f"vigil_window_{stat}{{{selector}}}[1h]", "time": end.timestamp()}
        )
        resp.raise_for_status()
        for series in resp.json()["data"]["result"]:
            points = got[got["sensor"] == series["metric"]["sensor"]].set_index("window_end")[stat]
            times = np.array([float(t) for t, _ in series["values"]])
            values = np.array([float(v) for _, v in series["values"]])
            checked = 0
            for at, value in points.items():
                inside = (times > at.timestamp() - step) & (times <= at.timestamp())
                if inside.sum() > 1:
                    assert value == pytest.approx(fold(values[inside]), rel=1e-9), (stat, series["metric"], at)
                    checked += 1
            assert checked > 0, (stat, series["metric"])


def test_an_empty_result_keeps_its_columns(env: LiveFleet) -> None:
    """The ClickHouse client returns an empty result without columns; the facade asks for them, so a page can
    select and rename columns of a machine with no data in range (a new machine, a quiet week)."""
    data = ConsoleData(env.settings, ANALYST)
    machine = sorted(env.ids("site-1"))[0]
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    scores = data.score_history(machine, long_ago, long_ago + timedelta(hours=1))
    assert scores.empty and list(scores.columns) == ["window_end", "score", "severity", "summary"]
    windows = data.cold_windows(machine, long_ago, long_ago + timedelta(days=7))  # the aggregated branch
    assert windows.empty and {"window_start", "window_end", "sensor", "avg", "stddev", "min", "max"} <= set(windows)
    assert "details" in data.insights(long_ago, long_ago + timedelta(hours=1), machine)
    nothing = data.run_sql("SELECT equipment_id, avg FROM window_stats WHERE site = 'no-such-site'").frame
    assert nothing.empty and list(nothing.columns) == ["equipment_id", "avg"]


def test_long_ranges_are_aggregated_in_clickhouse_into_chart_points(env: LiveFleet) -> None:
    """24 hours at 5-s windows would ship 17,280 points per sensor: ClickHouse buckets them (360 s at the
    default 240 chart points) with the count-weighted mean, the pooled standard deviation and the extremes of the
    windows in each bucket."""
    data = ConsoleData(env.settings, ADMIN)
    machine = sorted(env.ids("site-1"))[0]
    end = datetime.now(UTC)
    assert data.bucket_s(end - timedelta(minutes=15), end) == 5  # 180 windows: every one
    assert len(data.cold_windows(machine, end - timedelta(minutes=15), end)["window_start"].unique()) > 1
    assert data.bucket_s(end - timedelta(hours=1), end) == 15
    # The fleet keeps streaming: compare both reads over windows that are final by now (a window closes a few
    # seconds after its end), so a window landing between the two reads cannot tell them apart.
    settled = end - timedelta(seconds=60)
    raw = data.query(
        "SELECT window_start, sensor, count, avg, stddev, min, max FROM window_stats_latest "
        "WHERE equipment_id = {e:String} AND window_start < {t:DateTime64(3)}",
        e=machine,
        t=settled,
    )  # every window the fleet streamed before then
    bucket = data.bucket_s(settled - timedelta(hours=24), settled)
    assert bucket == 360
    agg = data.cold_windows(machine, settled - timedelta(hours=24), settled)
    assert len(agg) < len(raw)

    raw = raw.assign(
        bucket=raw["window_start"].dt.floor(f"{bucket}s"),
        weighted=raw["avg"] * raw["count"],
        square=raw["count"] * (raw["stddev"] ** 2 + raw["avg"] ** 2),
    )
    want = raw.groupby(["sensor", "bucket"]).agg(
        count=("count", "sum"),
        weighted=("weighted", "sum"),
        square=("square", "sum"),
        min=("min", "min"),
        max=("max", "max"),
    )
    want["avg"] = want["weighted"] / want["count"]
    want["stddev"] = np.sqrt(np.maximum(want["square"] / want["count"] - want["avg"] ** 2, 0))
    got = agg.set_index(["sensor", "window_start"]).sort_index()
    want = want.sort_index()
    assert list(got.index) == list(want.index)
    for column in ("count", "avg", "min", "max"):
        np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-9)
    np.testing.assert_allclose(got["stddev"].to_numpy(float), want["stddev"].to_numpy(float), rtol=1e-6, atol=1e-9)

    scores = data.score_history(machine, end - timedelta(hours=24), end)
    verdicts = data.query(
        "SELECT window_start, score FROM anomalies_latest WHERE equipment_id = {e:String} AND kind = 'window'",
        e=machine,
    )
    assert len(scores) == verdicts["window_start"].dt.floor(f"{bucket}s").nunique()
    assert scores["score"].max() == pytest.approx(verdicts["score"].max()), "a bucket keeps its highest score"


# -- Insights ------------------------------------------------------------------------------------------------


def post_insights(settings: Settings, live: LiveFleet) -> dict[str, str]:
    """One episode per site, as the agents job would have written them: diagnosis + maintenance each."""
    truth = machine_sites(settings)
    picked = {site: sorted(m for m in live.ids(site) if truth[m] == {site})[0] for site in ("site-1", "site-2")}
    now = int(datetime.now(UTC).timestamp() * 1000)
    records = []
    for site, machine in picked.items():
        base = {
            "equipment_id": machine,
            "site": site,
            "equipment_type": machine.split("-")[1],
            "episode_id": f"{machine}@{now - 60_000}",
            "window_start_ms": now - 60_000,
            "window_end_ms": now - 5_000,
            "closed": True,
            "sensors": ["vibration_rms"],
            "emitted_at_ms": now,
        }
        records.append(
            base
            | {
                "agent": "diagnostic",
                "kind": "diagnosis",
                "title": f"Bearing wear on {machine}",
                "severity": "warning",
                "confidence": 0.8,
                "fault_type": "bearing_wear",
                "details": orjson.dumps({"by": "model"}).decode(),
            }
        )
        records.append(
            base
            | {
                "agent": "maintenance",
                "kind": "maintenance",
                "title": "Bearing wear: act within 3 days",
                "severity": "warning",
                "confidence": 0.8,
                "fault_type": "bearing_wear",
                "details": orjson.dumps(
                    {
                        "health_index": 71.5,
                        "time_to_failure_h": 30.0,
                        "due_ms": now + 3_600_000,
                        "line": "line-1",
                        "actions": ["Measure the vibration spectrum"],
                    }
                ).decode(),
            }
        )
    table, malformed = records_to_arrow([orjson.dumps(r) for r in records], INSIGHT_RECORDS)
    assert not malformed
    insert_rows(make_client(settings.clickhouse, "admin"), settings.clickhouse.insights_table, table)
    return picked


def test_insights_page_and_equipment_panel_show_only_the_analysts_sites(env: LiveFleet) -> None:
    picked = post_insights(env.settings, env)
    app = page("insights", ANALYST)
    shown = " ".join(" ".join(map(str, f.to_numpy().ravel())) for f in frames(app))
    assert picked["site-1"] in shown and picked["site-2"] not in shown
    plan = frames(app)[0]
    assert list(plan["first action"]) == ["Measure the vibration spectrum"] and list(plan["health"]) == [71.5]
    app = page("insights", ADMIN)
    shown = " ".join(" ".join(map(str, f.to_numpy().ravel())) for f in frames(app))
    assert picked["site-1"] in shown and picked["site-2"] in shown

    app = page("equipment", ANALYST, equipment=picked["site-1"])
    app.radio(key="equipment_range").set_value("15 min").run()
    titles = [t for f in frames(app) if "title" in f for t in f["title"]]
    assert f"Bearing wear on {picked['site-1']}" in titles
    assert any("Measure the vibration spectrum" in m.value for m in app.markdown)
    # the workbench's site scope covers the insights table too
    rows = ConsoleData(env.settings, ANALYST).run_sql("SELECT DISTINCT site FROM insights").frame
    assert set(rows["site"]) == {"site-1"}


# -- Alerts --------------------------------------------------------------------------------------------------


def post_alerts(settings: Settings, live: LiveFleet) -> dict[str, str]:
    now = datetime.now(UTC)
    picked = {site: sorted(live.ids(site))[0] for site in ("site-1", "site-2")}
    with AlertmanagerClient.for_settings(settings) as am:
        am.post_alerts(
            [
                {
                    "labels": {
                        "alertname": "VigilEquipmentAnomaly",
                        "severity": "critical",
                        "site": site,
                        "equipment_id": machine,
                        "sensor": "vibration_rms",
                        "detector": "threshold_max",
                        "source": "console-test",
                    },
                    "annotations": {"summary": f"{machine} vibration above its limit"},
                    "startsAt": rfc3339(now - timedelta(seconds=30)),
                    "endsAt": rfc3339(now + timedelta(minutes=10)),
                }
                for site, machine in picked.items()
            ]
        )
        poll(lambda: len(am.get_alerts(['source="console-test"'])) == 2, 30, "both alerts in Alertmanager")
    return picked


def test_alerts_are_scoped_by_site_and_an_engineer_acknowledges_with_a_silence(env: LiveFleet) -> None:
    picked = post_alerts(env.settings, env)
    app = page("alerts", ANALYST)
    firing = frames(app)[1]
    assert picked["site-1"] in set(firing["machine"]) and picked["site-2"] not in set(firing["machine"])
    assert any("needs the engineer or admin role" in c.value for c in app.caption)
    with pytest.raises(AccessError):
        ConsoleData(env.settings, ANALYST).acknowledge({"site": "site-1", "alertname": "x"}, "c", 1)
    with pytest.raises(AccessError, match="site 'site-2'"):
        ConsoleData(env.settings, ENGINEER).acknowledge({"site": "site-2", "alertname": "x"}, "c", 1)

    app = page("alerts", ENGINEER)
    box = app.selectbox[0]
    target = next(o for o in box.options if picked["site-1"] in o)
    box.select(target)
    app.text_input[0].input("bearing replacement under way")
    app.button[0].click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("Silenced as eng" in s.value for s in app.success), [e.value for e in app.error]
    with AlertmanagerClient.for_settings(env.settings) as am:
        silence = next(s for s in am.list_silences() if s["comment"] == "bearing replacement under way")
        assert silence["createdBy"] == "eng"
        assert {"name": "equipment_id", "value": picked["site-1"]} in [
            {"name": m["name"], "value": m["value"]} for m in silence["matchers"]
        ]
        poll(
            lambda: am.get_alerts([f'equipment_id="{picked["site-1"]}"'])[0]["status"]["state"] == "suppressed",
            20,
            "the alert to be silenced",
        )
    app = page("alerts", ENGINEER)
    app.button(key=f"unsilence-{silence['id']}").click().run()
    with AlertmanagerClient.for_settings(env.settings) as am:
        assert silence["id"] not in {s["id"] for s in am.list_silences()}


def test_alerts_page_works_while_clickhouse_is_down(env: LiveFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Firing alerts and silences come from Alertmanager: with ClickHouse unreachable an on-call engineer still sees
    and acknowledges them (the facade connects on its first ClickHouse query); the history part says what is
    wrong and what to do."""
    picked = post_alerts(env.settings, env)
    monkeypatch.setenv("VIGIL_CLICKHOUSE__PORT", str(free_port()))  # nothing listens there
    get_settings.cache_clear()
    app = AppTest.from_file(str(APP / "views" / "alerts.py"), default_timeout=60)
    app.session_state["vigil_principal"] = ENGINEER
    app.run()
    assert picked["site-1"] in set(frames(app)[1]["machine"])
    assert [h.value for h in app.subheader][:3] == ["Firing now", "Acknowledge", "Silences"]
    assert app.selectbox[0].options, "alerts to acknowledge"
    assert any("cannot reach ClickHouse" in e.value and "vigil stack up" in e.value for e in app.exception)


# -- SQL workbench -------------------------------------------------------------------------------------------


def test_sql_workbench_returns_only_the_analysts_sites_whatever_the_query(env: LiveFleet) -> None:
    data = ConsoleData(env.settings, ANALYST)
    for sql in (
        "SELECT DISTINCT site FROM window_stats",
        "SELECT DISTINCT site FROM vigil.anomalies_latest",
        "SELECT DISTINCT site FROM (SELECT site FROM anomalies UNION ALL SELECT site FROM machine_state)",
        "WITH s AS (SELECT site FROM window_stats_latest) SELECT DISTINCT site FROM s",
        "SELECT DISTINCT w.site FROM window_stats AS w JOIN anomalies AS a ON a.equipment_id = w.equipment_id",
    ):
        assert set(data.run_sql(sql).frame["site"]) == {"site-1"}, sql
    assert set(ConsoleData(env.settings, ADMIN).run_sql("SELECT DISTINCT site FROM window_stats").frame["site"]) == {
        "site-1",
        "site-2",
    }
    for sql, reason in (
        # the guard's message, or the server's when it refuses the parse request itself
        ("SELECT * FROM system.tables", "not readable|may not read"),
        (
            "SELECT DISTINCT site FROM window_stats SETTINGS additional_table_filters = {}",
            "SETTINGS clause|may not change settings",
        ),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", r"table function file\(\)|table functions \(file\(\)\)"),
        ("DROP TABLE window_stats", "only a SELECT query|may not run DROP"),
        ("SELEC site FROM window_stats", "Syntax error"),
    ):
        with pytest.raises(WorkbenchError, match=reason):
            data.run_sql(sql)
    limited = data.run_sql("SELECT * FROM window_stats", max_rows=7)
    assert len(limited.frame) == 7 and limited.truncated

    app = page("sql", ANALYST)
    app.text_area[0].input("SELECT site, count() AS windows FROM window_stats GROUP BY site").run()
    app.button[0].click().run()
    assert not app.error, [e.value for e in app.error]
    assert list(frames(app)[0]["site"]) == ["site-1"]
    assert [b.label for b in app.get("download_button")] == ["CSV", "Parquet"]
    assert not app.get("vega_lite_chart"), "one row: nothing to chart"
    app = page("sql", ADMIN)
    app.text_area[0].input(
        "SELECT site, count() AS windows FROM window_stats WHERE equipment_id LIKE 'live-%' GROUP BY site ORDER BY site"
    ).run()  # the live fleet (other tests wrote other sites)
    app.button[0].click().run()
    assert list(frames(app)[0]["site"]) == ["site-1", "site-2"]
    assert len(app.get("vega_lite_chart")) == 1, "windows per site as bars"
    app.text_area[0].input("SELECT name FROM system.tables").run()
    app.button[0].click().run()
    assert any("not readable" in e.value or "may not read" in e.value for e in app.error)


# -- Models --------------------------------------------------------------------------------------------------


def test_models_page_lists_versions_and_only_admins_promote(
    env: LiveFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a.avg", "a.stddev", "b.avg", "b.stddev"]
    model = PcaT2Q().fit(np.random.default_rng(0).normal(size=(200, 4)), names).to_onnx()
    meta = {
        "feature_names": names,
        "threshold": 1.0,
        "threshold_method": {"method": "quantile"},
        "data_sha256": "0" * 64,
        "metrics": {"normal_alarm_rate": 0.01},
    }
    registry = ModelRegistry(tmp_path / "models")
    registry.register("pump", "pca_t2q", model, meta)
    registry.register("pump", "pca_t2q", model, meta)
    monkeypatch.setenv("VIGIL_SCORING__MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()

    app = page("models", ANALYST)
    table = frames(app)[0]
    assert list(table["version"]) == ["v0001", "v0002"] and list(table["live"]) == [True, False]
    assert any("needs the admin role" in c.value for c in app.caption) and not app.button

    app = page("models", ADMIN)
    app.selectbox[1].select("v0002")
    app.button[0].click().run()
    assert registry.live_version("pump", "pca_t2q") == "v0002"
    assert any("v0002 is live" in s.value for s in app.success)


def test_unknown_workbench_user_scope_is_empty(env: LiveFleet) -> None:
    nobody = Principal("new", "analyst", frozenset())
    assert ConsoleData(env.settings, nobody).run_sql("SELECT count() AS n FROM window_stats").frame["n"][0] == 0
    with pytest.raises(WorkbenchError):
        ConsoleData(env.settings, nobody).run_sql("SELECT 1; SELECT 2")
