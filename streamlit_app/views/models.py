"""Models: the detector registry (versions, metrics, which one is live); admins promote and roll back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from onnx_models.registry import ModelRegistry, RegistryError
from streamlit_app import session

st.title("Models")
who = session.data().principal
registry = ModelRegistry.from_settings(session.settings())
versions = registry.list()
if not versions:
    st.info("No model registered yet: `vigil train` trains one per equipment type and detector from ClickHouse.")
    st.stop()
rows = []
for v in versions:
    meta = v.metadata
    rows.append(
        {
            "equipment type": v.equipment_type,
            "detector": v.detector,
            "version": v.version,
            "live": v.live,
            "created": v.created_at[:19],
            "threshold": v.threshold,
            "features": len(v.feature_names),
            "metrics": ", ".join(
                f"{k}={val:.3g}" if isinstance(val, float) else f"{k}={val}"
                for k, val in (meta.get("metrics") or {}).items()
            ),
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

st.subheader("Promote or roll back")
if not who.can("admin"):
    st.caption("Promoting and rolling back models needs the admin role.")
    st.stop()
pairs = sorted({(v.equipment_type, v.detector) for v in versions})
pair = st.selectbox("model", pairs, format_func=lambda p: f"{p[0]} / {p[1]}")
choices = [v.version for v in versions if (v.equipment_type, v.detector) == pair]
version = st.selectbox("version", choices)
cols = st.columns(2)
try:
    if cols[0].button("Promote", type="primary"):
        promoted = registry.promote(pair[0], pair[1], version)
        st.success(f"{pair[0]} / {pair[1]}: {promoted.version} is live (the job picks it up within seconds).")
    if cols[1].button("Roll back"):
        back = registry.rollback(pair[0], pair[1])
        st.success(f"{pair[0]} / {pair[1]}: back to {back.version}.")
except (RegistryError, ValueError) as exc:
    st.error(str(exc))
