"""Equipment: one machine's live window statistics and anomaly scores, with thresholds, alerts and faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from streamlit_app import session
from streamlit_app.charts import score_spec, sensor_facets_spec, sensor_layers
from vigil.rules import load_rules

RANGES = {
    "15 min": timedelta(minutes=15),
    "1 hour": timedelta(hours=1),
    "6 hours": timedelta(hours=6),
    "24 hours": timedelta(days=1),
    "7 days": timedelta(days=7),
}

st.title("Equipment")
data = session.data()


def pick(equipment_id: str) -> None:
    """Show this machine (a search result was clicked or an id typed): the link in the address bar follows."""
    st.session_state["equipment_id"] = equipment_id
    st.query_params["equipment"] = equipment_id


linked = st.query_params.get("equipment")  # a Fleet row or an alert's link
if linked and linked != st.session_state.get("equipment_id"):
    st.session_state["equipment_id"] = linked
if not st.session_state.get("equipment_id"):
    first = data.find_machines("", limit=1)
    if not first:
        st.info("No machine has been scored yet: start the pipeline with `vigil demo`.")
        st.stop()
    st.session_state["equipment_id"] = first[0]
# A search box, not a list: a 10,000-option select box alone took ~0.5 s to mount in the browser.
typed = st.text_input(
    "machine",
    key="equipment_id",
    help="an equipment id, or part of one to search",
    on_change=lambda: pick(st.session_state["equipment_id"].strip()),
).strip()
# The newest state read for this full run, which the fragment's first call uses (its timed reruns read again).
state_of_this_run = [data.machine(typed)]
if state_of_this_run[0] is None:
    found = data.find_machines(typed)
    if not found:
        st.error(f"No machine {typed!r} among the machines you may see ({data.principal.sites_label}).")
        st.stop()
    st.caption(f"{typed!r} is not a machine you may see; machines containing it (first {len(found)}):")
    for col, match in zip(st.columns(4) * 5, found, strict=False):
        col.button(match, key=f"pick-{match}", on_click=pick, args=(match,))
    st.stop()
equipment = typed
span_name = st.radio("range", list(RANGES), index=1, horizontal=True, key="equipment_range")


@st.cache_data(ttl=60)
def limits(equipment_type: str) -> pd.DataFrame:
    resolved = load_rules(session.settings().scoring.rules_path).resolved()
    rules = [r for r in resolved if r.equipment_type == equipment_type]
    return pd.DataFrame(
        [{"sensor": r.sensor, "min": r.min, "max": r.max} for r in rules], columns=["sensor", "min", "max"]
    )


@st.fragment(run_every=session.settings().console.refresh_s)
def machine_view() -> None:
    info = state_of_this_run.pop() if state_of_this_run else data.machine(equipment)
    if info is None:
        st.warning("This machine has no verdict yet.")
        return
    end = datetime.now(UTC)
    start = end - RANGES[span_name]
    cols = st.columns(4)
    cols[0].metric("site", info["site"])
    cols[1].metric("type", info["equipment_type"])
    cols[2].metric("severity now", info["severity"])
    cols[3].metric("score now", f"{info['score']:.2f}")
    if info["summary"]:
        st.caption(info["summary"])
    history = data.machine_history(equipment, info["site"], start, end)
    windows, source, scores, anomalies, faults = (
        history.windows,
        history.source,
        history.scores,
        history.anomalies,
        history.faults,
    )
    bucket = data.bucket_s(start, end)
    per_point = (
        "one point per 5-s window"
        if bucket * 1000 <= data.settings.window.size_ms
        else (f"one point per {bucket} s (mean of the windows, min/max band of their extremes, highest score)")
    )
    st.caption(
        f"window statistics from the {source}, {per_point}; orange: anomalous windows naming the sensor; "
        f"red dashed: configured limits; purple: injected faults"
    )
    if windows.empty:
        st.info("No window statistics in this range.")
    else:
        layers = sensor_layers(windows, limits(info["equipment_type"]), anomalies, faults)
        st.vega_lite_chart(layers, sensor_facets_spec((start, end), with_band={"min", "max"} <= set(windows.columns)))
    if not scores.empty:
        st.subheader("Anomaly score")
        st.vega_lite_chart(scores, score_spec(), width="stretch")
    st.subheader("Anomalies")
    if anomalies.empty:
        st.caption("none in this range")
    else:
        table = anomalies[["window_end", "severity", "score", "detectors", "top_sensors", "summary"]].copy()
        table["detectors"] = table["detectors"].map(", ".join)
        table["top_sensors"] = table["top_sensors"].map(", ".join)
        st.dataframe(table, hide_index=True, width="stretch")
    insights = history.insights
    st.subheader("Agent insights")
    if insights.empty:
        st.caption("none in this range (the agents analyse an episode once it is over)")
    else:
        st.dataframe(
            insights[["window_end", "agent", "title", "severity", "confidence"]], hide_index=True, width="stretch"
        )
        plan = insights[insights["kind"] == "maintenance"]
        if not plan.empty:
            st.markdown("**Recommended actions** (newest episode): " + "; ".join(plan["details"].iloc[0]["actions"]))
    if not faults.empty:
        st.subheader("Injected faults (simulator labels)")
        st.dataframe(faults, hide_index=True, width="stretch")


machine_view()
