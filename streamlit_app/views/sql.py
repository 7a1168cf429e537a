"""SQL: a read-only ClickHouse workbench over Vigil's tables, limited to the analyst's sites."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from streamlit_app import session
from streamlit_app.data import WorkbenchError

EXAMPLES = {
    "Worst machines this week": (
        "SELECT equipment_id, site, countIf(is_anomaly = 1) AS anomalous_windows, max(score) AS worst_score\n"
        "FROM anomalies\nWHERE window_start >= now() - INTERVAL 7 DAY\n"
        "GROUP BY equipment_id, site\nORDER BY anomalous_windows DESC\nLIMIT 20"
    ),
    "Windows around the latest critical anomaly": (
        "WITH (SELECT argMax(tuple(equipment_id, window_start), window_start) FROM anomalies\n"
        "      WHERE severity = 'critical') AS latest\n"
        "SELECT window_start, sensor, avg, min, max, stddev\nFROM window_stats_latest\n"
        "WHERE equipment_id = latest.1\n"
        "  AND window_start BETWEEN latest.2 - INTERVAL 2 MINUTE AND latest.2 + INTERVAL 1 MINUTE\n"
        "ORDER BY sensor, window_start"
    ),
    "Anomalous windows per site and hour (last day)": (
        "SELECT toStartOfHour(window_start) AS hour, site, countIf(is_anomaly = 1) AS anomalous\n"
        "FROM anomalies\nWHERE window_start >= now() - INTERVAL 1 DAY\nGROUP BY hour, site\nORDER BY hour, site"
    ),
    "Notifications by receiver and outcome (last day)": (
        "SELECT receiver, status, count() AS attempts, round(avg(latency_ms)) AS avg_ms\n"
        "FROM alert_deliveries\nWHERE time >= now() - INTERVAL 1 DAY\nGROUP BY receiver, status\nORDER BY receiver"
    ),
}


def chart_of(frame: pd.DataFrame) -> None:
    """The first column as x (a time axis: lines; anything else: bars) against up to 4 numeric columns."""
    x = frame.columns[0] if len(frame.columns) else None
    ys = [c for c in frame.select_dtypes("number").columns if c != x][:4]
    if x is None or not ys or len(frame) < 2:
        return
    if pd.api.types.is_datetime64_any_dtype(frame[x]):
        st.line_chart(frame, x=x, y=ys)
    else:
        st.bar_chart(frame, x=x, y=ys)


st.title("SQL workbench")
data = session.data()
limits = session.settings().console
st.caption(
    f"Read-only SELECTs over {', '.join(data.tables.site_tables)}; {data.principal.sites_label}; "
    f"at most {limits.sql_max_rows:,} rows and {limits.sql_timeout_s:g} s per query."
)
example = st.selectbox("example queries", ["(write your own)", *EXAMPLES], key="sql_example")
default = EXAMPLES.get(example, "SELECT site, count() AS windows FROM window_stats GROUP BY site")
sql = st.text_area("query", value=default, height=180, key=f"sql_text_{example}")
if st.button("Run", type="primary"):
    try:
        st.session_state["sql_result"] = data.run_sql(sql)
        st.session_state.pop("sql_error", None)
    except WorkbenchError as exc:
        st.session_state["sql_error"] = str(exc)
        st.session_state.pop("sql_result", None)

if error := st.session_state.get("sql_error"):
    st.error(error)
result = st.session_state.get("sql_result")
if result is not None:
    frame: pd.DataFrame = result.frame
    note = " (stopped at the row limit)" if result.truncated else ""
    st.caption(f"{len(frame):,} rows in {result.elapsed_s:.2f} s{note}")
    st.dataframe(frame, hide_index=True, width="stretch")
    chart_of(frame)
    cols = st.columns(2)
    cols[0].download_button("CSV", frame.to_csv(index=False).encode(), "vigil-query.csv", "text/csv")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    cols[1].download_button("Parquet", buffer.getvalue(), "vigil-query.parquet", "application/octet-stream")
