"""The signed-in principal of this browser session and its data facade (pages call :func:`data`)."""

from __future__ import annotations

import streamlit as st

from streamlit_app.access import Principal
from streamlit_app.data import ConsoleData
from vigil.settings import Settings, get_settings

PRINCIPAL_KEY = "vigil_principal"


def settings() -> Settings:
    return get_settings()


def principal() -> Principal | None:
    return st.session_state.get(PRINCIPAL_KEY)


def sign_in(who: Principal) -> None:
    st.session_state[PRINCIPAL_KEY] = who
    st.session_state.pop("vigil_data", None)


def sign_out() -> None:
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def data() -> ConsoleData:
    """This session's facade, with its own ClickHouse client (created on first use, rebuilt for a new principal)."""
    who = principal()
    if who is None:
        st.stop()
    cached = st.session_state.get("vigil_data")
    if cached is None or cached.principal != who:
        cached = ConsoleData(settings(), who)
        st.session_state["vigil_data"] = cached
    return cached
