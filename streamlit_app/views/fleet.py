"""Fleet: every visible machine's state at a glance, grouped by site and line, refreshed live."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from streamlit_app import session
from streamlit_app.charts import state_by_site_spec
from streamlit_app.data import STATES

STATE_RANK = {state: rank for rank, state in enumerate(STATES)}  # critical first

st.title("Fleet")
data = session.data()


@st.fragment(run_every=session.settings().console.refresh_s)
def fleet_view() -> None:
    fleet = data.fleet()
    if fleet.empty:
        st.info("No machine has been scored yet: start the pipeline with `vigil demo` (or `vigil stack up`).")
        return
    counts = fleet["state"].value_counts()
    cols = st.columns(len(STATES) + 1)
    cols[0].metric("machines", f"{len(fleet):,}")
    for col, state in zip(cols[1:], STATES, strict=True):
        col.metric(state, f"{int(counts.get(state, 0)):,}")
    newest = fleet["window_end"].max()
    st.caption(f"newest scored window ends {pd.Timestamp(newest):%Y-%m-%d %H:%M:%S} UTC · {data.principal.sites_label}")

    left, right = st.columns([2, 3])
    with left:
        st.subheader("By site and line")
        groups = (
            fleet.pivot_table(
                index=["site", "line"], columns="state", values="equipment_id", aggfunc="count", fill_value=0
            )
            .reindex(columns=list(STATES), fill_value=0)
            .reset_index()
        )
        groups.columns.name = None
        st.dataframe(groups, hide_index=True, width="stretch")
    with right:
        st.subheader("Most urgent now")
        st.dataframe(
            _machine_table(_by_urgency(fleet).head(15)), hide_index=True, width="stretch", column_config=_COLUMNS
        )

    st.subheader("Machines")
    picked = st.multiselect("state", STATES, default=["critical", "warning", "silent"], key="fleet_states")
    sites = sorted(fleet["site"].unique())
    site = st.selectbox("site", ["all", *sites], key="fleet_site")
    shown = fleet[fleet["state"].isin(picked)]
    if site != "all":
        shown = shown[shown["site"] == site]
    shown = _by_urgency(shown)
    st.caption(f"{len(shown):,} of {len(fleet):,} machines")
    st.dataframe(_machine_table(shown), hide_index=True, width="stretch", height=420, column_config=_COLUMNS)

    # Last on the page: the browser loads the chart code here while people read the tables above, so the
    # Equipment page they open next draws its charts without that wait.
    st.subheader("States by site")
    per_site = fleet.groupby(["site", "state"], as_index=False).agg(machines=("equipment_id", "count"))
    st.vega_lite_chart(per_site.assign(rank=per_site["state"].map(STATE_RANK)), state_by_site_spec(), width="stretch")


_COLUMNS = {
    "open": st.column_config.LinkColumn("machine", display_text=r"equipment=(.*)$"),
    "score": st.column_config.NumberColumn("score", format="%.2f", help="max detector score / its threshold"),
}


def _by_urgency(frame: pd.DataFrame) -> pd.DataFrame:
    """Critical before warning before silent before healthy; within a state, the highest score first."""
    ranked = frame.assign(_rank=frame["state"].map(STATE_RANK))
    return ranked.sort_values(["_rank", "score"], ascending=[True, False]).drop(columns="_rank")


def _machine_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "open": "equipment?equipment=" + frame["equipment_id"],
            "state": frame["state"],
            "site": frame["site"],
            "line": frame["line"],
            "type": frame["equipment_type"],
            "score": frame["score"],
            "why": frame["top_sensors"].map(", ".join),
            "summary": frame["summary"],
        }
    )


fleet_view()
