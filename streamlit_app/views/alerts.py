"""Alerts: what is firing now (Alertmanager), acknowledging by silence, and the history and delivery log."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from connectors.alertmanager import AlertmanagerError
from streamlit_app import session
from streamlit_app.access import AccessError

st.title("Alerts")
data = session.data()
who = data.principal


ALERT_COLUMNS = [
    "alert",
    "severity",
    "site",
    "machine",
    "sensor",
    "detector",
    "state",
    "since",
    "summary",
    "fingerprint",
]


def alert_rows(alerts: list[dict]) -> pd.DataFrame:
    rows = []
    for a in alerts:
        labels, status = a["labels"], a.get("status", {})
        rows.append(
            {
                "alert": labels.get("alertname", ""),
                "severity": labels.get("severity", ""),
                "site": labels.get("site", ""),
                "machine": labels.get("equipment_id", ""),
                "sensor": labels.get("sensor", ""),
                "detector": labels.get("detector", ""),
                "state": status.get("state", ""),
                "since": a.get("startsAt", "")[:19].replace("T", " "),
                "summary": a.get("annotations", {}).get("summary", ""),
                "fingerprint": a.get("fingerprint", ""),
            }
        )
    return pd.DataFrame(rows, columns=ALERT_COLUMNS)


ALERTS_KEY = "alerts_page_alerts"  # the fragment's newest read, which the acknowledge form lists (one read per run)


@st.fragment(run_every=session.settings().console.refresh_s)
def active_view() -> None:
    try:
        alerts = data.active_alerts()
    except AlertmanagerError as exc:
        st.session_state.pop(ALERTS_KEY, None)
        st.error(f"Alertmanager is not answering: {exc}")
        return
    st.session_state[ALERTS_KEY] = alerts
    frame = alert_rows(alerts)
    active = frame[frame["state"] == "active"]
    cols = st.columns(3)
    cols[0].metric("firing", len(active))
    cols[1].metric("critical", int((active["severity"] == "critical").sum()))
    cols[2].metric("silenced / inhibited", len(frame) - len(active))
    if frame.empty:
        st.success("Nothing is firing.")
        return
    grouped = frame.groupby(["alert", "site", "severity", "state"], as_index=False).agg(
        machines=("machine", "nunique"), alerts=("fingerprint", "count")
    )
    st.dataframe(grouped, hide_index=True, width="stretch")
    st.dataframe(frame.drop(columns="fingerprint"), hide_index=True, width="stretch", height=300)


st.subheader("Firing now")
active_view()

st.subheader("Acknowledge")
if not who.can("engineer"):
    st.caption("Acknowledging needs the engineer or admin role.")
else:
    # Only what this user may acknowledge: alerts of their sites (admins: every alert, site-less ones too). The
    # list is the one "Firing now" just read in this run (its error, if any, is shown there).
    firing = [
        a
        for a in st.session_state.get(ALERTS_KEY, [])
        if a.get("status", {}).get("state") == "active" and (who.can("admin") or who.sees_site(a["labels"].get("site")))
    ]
    if not firing:
        st.caption("No firing alert to acknowledge.")
    else:

        def describe(a: dict) -> str:
            lab = a["labels"]
            parts = [lab.get("alertname", ""), lab.get("site", ""), lab.get("equipment_id", ""), lab.get("sensor", "")]
            return " · ".join(p for p in parts if p) + f" ({lab.get('severity', '')})"

        with st.form("acknowledge"):
            picked = st.selectbox("alert", firing, format_func=describe)
            comment = st.text_input("comment (why, what is being done)")
            hours = st.number_input("silence for hours", min_value=0.25, max_value=168.0, value=4.0, step=0.25)
            if st.form_submit_button("Acknowledge (silence)", type="primary"):
                try:
                    silence_id = data.acknowledge(picked["labels"], comment, hours)
                    st.success(f"Silenced as {who.name} (silence {silence_id}).")
                except (AccessError, ValueError, AlertmanagerError) as exc:
                    st.error(str(exc))

st.subheader("Silences")
try:
    silences = data.silences()
except AlertmanagerError as exc:
    silences = []
    st.error(f"Alertmanager is not answering: {exc}")
if not silences:
    st.caption("No active silence.")
for s in silences:
    matchers = ", ".join(f"{m['name']}={m['value']}" for m in s.get("matchers", []))
    cols = st.columns([5, 1])
    cols[0].markdown(
        f"**{matchers}**  \nby {s.get('createdBy')} until {s.get('endsAt', '')[:16].replace('T', ' ')} "
        f"UTC: {s.get('comment')}"
    )
    if who.can("engineer") and cols[1].button("Un-silence", key=f"unsilence-{s['id']}"):
        try:
            data.unsilence(s["id"])
            st.rerun()
        except (AccessError, AlertmanagerError) as exc:
            st.error(str(exc))

hours = st.select_slider("history of the last", options=[1, 6, 24, 72, 168], value=24, format_func=lambda h: f"{h} h")
tab_anomalies, tab_deliveries = st.tabs(["Anomalous windows", "Delivery log"])
with tab_anomalies:
    history = data.anomaly_history(hours)
    if not history.empty:
        history["detectors"] = history["detectors"].map(", ".join)
        history["top_sensors"] = history["top_sensors"].map(", ".join)
    st.dataframe(history, hide_index=True, width="stretch", height=320)
with tab_deliveries:
    st.dataframe(data.deliveries(hours), hide_index=True, width="stretch", height=320)
