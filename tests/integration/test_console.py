"""The console's first page renders live figures from the stack's ClickHouse (streamlit AppTest)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from connectors.clickhouse import make_client
from vigil.settings import PROJECT_ROOT, get_settings
from vigil.stack.services import Stack

pytestmark = pytest.mark.integration


def test_fleet_overview_and_drill_down_show_a_fresh_machine(
    pipeline_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pipeline_stack.settings
    machine = f"console-{uuid.uuid4().hex[:6]}"
    end = datetime.now(UTC).replace(microsecond=0)
    rows = [
        [machine, "site-9", "pump", sensor, "bar", end - timedelta(seconds=5 * (k + 1)), end - timedelta(seconds=5 * k),
         10, 1.0 + k, 0.1, 0.5, 1.5 + k, end]
        for k in range(3) for sensor in ("suction_pressure", "discharge_pressure")
    ]
    columns = ["equipment_id", "site", "equipment_type", "sensor", "unit", "window_start", "window_end", "count",
               "avg", "stddev", "min", "max", "emitted_at"]
    make_client(settings.clickhouse).insert("window_stats", rows, column_names=columns)
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        app = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app" / "app.py"), default_timeout=60).run()
        assert not app.exception, [e.value for e in app.exception]
        metrics = {m.label: m.value for m in app.metric}
        assert int(metrics["machines reporting (last minute)"]) >= 1
        assert machine in app.selectbox[0].options
        app.selectbox[0].select(machine).run()
        assert not app.exception, [e.value for e in app.exception]
        assert sorted(c.value for c in app.caption) == ["discharge_pressure", "suction_pressure"]
    finally:
        get_settings.cache_clear()
