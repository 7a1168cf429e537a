"""Insights: what the agents concluded -- the maintenance plan, diagnoses and shared causes of the visible fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from streamlit_app import session

SPANS = {"1 hour": timedelta(hours=1), "24 hours": timedelta(days=1), "7 days": timedelta(days=7)}

st.title("Insights")
data = session.data()
span_name = st.radio("episodes ending in the last", list(SPANS), index=1, horizontal=True, key="insights_span")


def _link(equipment_id: pd.Series) -> pd.Series:
    return "equipment?equipment=" + equipment_id


@st.fragment(run_every=session.settings().console.refresh_s)
def insights_view() -> None:
    end = datetime.now(UTC)
    insights = data.insights(end - SPANS[span_name], end)
    if insights.empty:
        st.info(
            "No agent insight in this range. The agents job (`vigil stack up --pipeline`) analyses every "
            "anomaly episode once it is over."
        )
        return
    plan = insights[insights["kind"] == "maintenance"]
    diagnoses = insights[insights["kind"] == "diagnosis"]
    shared = insights[insights["kind"] == "shared_cause"]
    cols = st.columns(4)
    cols[0].metric("episodes analysed", f"{len(diagnoses):,}")  # every episode gets one diagnosis
    cols[1].metric("critical", int((plan["severity"] == "critical").sum()))
    cols[2].metric("faults diagnosed", int((~diagnoses["fault_type"].isin(["no_fault", "unknown"])).sum()))
    cols[3].metric("shared causes", len(shared))

    st.subheader("Maintenance plan")
    st.caption(
        "one row per machine, its most urgent item first; due = act by then (the knowledge base's urgency, "
        "or half the predicted time to failure when that is sooner)"
    )
    if plan.empty:
        st.caption("nothing planned")
    else:
        details = pd.DataFrame(plan["details"].tolist(), index=plan.index)
        table = (
            pd.DataFrame(
                {
                    "due": pd.to_datetime(details["due_ms"], unit="ms", utc=True),
                    "open": _link(plan["equipment_id"]),
                    "site": plan["site"],
                    "line": details.get("line", ""),
                    "fault": plan["fault_type"],
                    "severity": plan["severity"],
                    "health": details["health_index"],
                    "failure in (h)": details["time_to_failure_h"],
                    "first action": details["actions"].str[0],
                }
            )
            .sort_values("due")
            .drop_duplicates("open")
        )
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "open": st.column_config.LinkColumn("machine", display_text=r"equipment=(.*)$"),
                "health": st.column_config.ProgressColumn("health", min_value=0, max_value=100, format="%.0f"),
                "failure in (h)": st.column_config.NumberColumn(format="%.1f"),
            },
        )

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Diagnoses")
        if diagnoses.empty:
            st.caption("none")
        else:
            st.dataframe(
                pd.DataFrame(
                    {
                        "episode end": diagnoses["window_end"],
                        "open": _link(diagnoses["equipment_id"]),
                        "diagnosis": diagnoses["title"],
                        "severity": diagnoses["severity"],
                        "confidence": diagnoses["confidence"],
                    }
                ),
                hide_index=True,
                width="stretch",
                column_config={
                    "open": st.column_config.LinkColumn("machine", display_text=r"equipment=(.*)$"),
                    "confidence": st.column_config.NumberColumn(format="%.2f"),
                },
            )
    with right:
        st.subheader("Shared causes")
        if shared.empty:
            st.caption("none: no group of machines on one line went wrong together")
        else:
            st.dataframe(
                pd.DataFrame(
                    {
                        "when": shared["window_start"],
                        "site": shared["site"],
                        "what": shared["title"],
                        "machines": shared["details"].map(lambda d: ", ".join(d["machines"])),
                    }
                ),
                hide_index=True,
                width="stretch",
            )


insights_view()
