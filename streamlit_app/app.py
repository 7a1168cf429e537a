"""Vigil console (first cut): live fleet overview and per-machine drill-down over the cold path.

Run with `vigil console` or as part of `vigil demo`. The full analyst console (alerts, SQL
workbench, login, per-site access) is its own issue; this page reads ClickHouse only.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from connectors.clickhouse import make_client
from vigil.settings import get_settings

REFRESH_S = 5


@st.cache_resource
def client():
    return make_client(get_settings().clickhouse)


def query(sql: str, **params: object) -> pd.DataFrame:
    return client().query_df(sql, parameters=params)


st.set_page_config(page_title="Vigil", layout="wide")
st.title("Vigil — fleet window statistics")


@st.fragment(run_every=REFRESH_S)
def fleet() -> None:
    summary = query(
        "SELECT uniqExact(equipment_id) AS machines, count() AS windows, max(window_end) AS newest "
        "FROM window_stats WHERE window_start >= now64(3) - INTERVAL 1 MINUTE"
    )
    cols = st.columns(3)
    row = summary.iloc[0] if len(summary) else None
    cols[0].metric("machines reporting (last minute)", int(row.machines) if row is not None else 0)
    cols[1].metric("windows (last minute)", int(row.windows) if row is not None else 0)
    cols[2].metric("newest window end (UTC)", str(row.newest)[:19] if row is not None else "-")
    by_site = query(
        "SELECT site, equipment_type, uniqExact(equipment_id) AS machines, sum(count) AS points "
        "FROM window_stats WHERE window_start >= now64(3) - INTERVAL 1 MINUTE "
        "GROUP BY site, equipment_type ORDER BY site, equipment_type"
    )
    st.dataframe(by_site, width="stretch", hide_index=True)


fleet()

st.header("Machine drill-down")
machines = query(
    "SELECT DISTINCT equipment_id FROM window_stats WHERE window_start >= now64(3) - INTERVAL 10 MINUTE "
    "ORDER BY equipment_id LIMIT 10000"
)
if machines.empty:
    st.info("No window statistics yet: start the pipeline with `vigil demo`.")
else:
    equipment = st.selectbox("machine", machines.equipment_id.tolist())
    minutes = st.slider("last minutes", 1, 60, 15)

    @st.fragment(run_every=REFRESH_S)
    def machine_view() -> None:
        frame = query(
            "SELECT window_start, sensor, avg, min, max, stddev FROM window_stats FINAL "
            "WHERE equipment_id = {e:String} AND window_start >= now64(3) - toIntervalMinute({m:UInt32}) "
            "ORDER BY window_start",
            e=equipment, m=minutes,
        )
        if frame.empty:
            st.warning("no windows for this machine in the selected range")
            return
        for sensor, part in frame.groupby("sensor"):
            st.caption(sensor)
            st.line_chart(part.set_index("window_start")[["avg", "min", "max"]], height=160)

    machine_view()
