"""The signed-in principal of this browser session and its data facade (pages call :func:`data`)."""

from __future__ import annotations

import hashlib

import streamlit as st
from clickhouse_connect.driver.client import Client

from connectors.clickhouse import make_client
from streamlit_app import remember
from streamlit_app.access import Principal, UsersFile
from streamlit_app.data import ConsoleData
from vigil.settings import ClickHouseSettings, Settings, get_settings

PRINCIPAL_KEY = "vigil_principal"
SIGNED_OUT_KEY = "vigil_signed_out"  # this tab signed out: its (connect-time) cookie no longer signs it in
COOKIE_SCRIPT_KEY = "vigil_cookie_script"  # set or clear the remembered sign-in on the next render


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
    st.session_state[SIGNED_OUT_KEY] = True
    st.session_state[COOKIE_SCRIPT_KEY] = remember.clear_cookie_script()


def remember_sign_in(who: Principal, users: UsersFile) -> None:
    """After a password sign-in: have this browser's other tabs signed in too (``console.remember_hours``)."""
    hours = settings().console.remember_hours
    if hours > 0:
        token = remember.issue(remember.load_key(settings().console_signin_key_path), users, who.name)
        secure = (st.context.url or "").startswith("https://")
        st.session_state[COOKIE_SCRIPT_KEY] = remember.set_cookie_script(token, int(hours * 3600), secure)


def forget_remembered_sign_in() -> None:
    """After a sign-in through the identity provider: drop a password sign-in this browser may still remember, so
    that signing out (st.logout reloads the page before any cookie script could run) leaves no one signed in."""
    st.session_state[COOKIE_SCRIPT_KEY] = remember.clear_cookie_script()


def remembered(users: UsersFile) -> Principal | None:
    """Who this tab's browser signed in as (the cookie it connected with), unless this tab has signed out."""
    hours = settings().console.remember_hours
    token = st.context.cookies.get(remember.COOKIE)
    if hours <= 0 or not token or st.session_state.get(SIGNED_OUT_KEY):
        return None
    return remember.redeem(remember.load_key(settings().console_signin_key_path), users, token, hours * 3600)


def render_cookie_script() -> None:
    """Run the pending cookie change in the browser (an empty element, out of the layout's way)."""
    script = st.session_state.pop(COOKIE_SCRIPT_KEY, None)
    if script:
        st.html(script, unsafe_allow_javascript=True, width=1)


@st.cache_resource(show_spinner=False)
def _shared_clickhouse(server: str, _settings: ClickHouseSettings) -> Client:
    """One ClickHouse client for every session of this console process (``server`` keys it).

    Connecting costs two round trips (version, settings: ~0.1 s), which a new tab or an alert link paid on top of
    its first query. Sharing is safe: the client has no HTTP session, so the principal's site roles travel with
    each query (the server filters by them), and its connection pool serves concurrent queries."""
    return make_client(_settings, "console", autogenerate_session_id=False)


def clickhouse_client(cfg: ClickHouseSettings) -> Client:
    """The process's client, as the console's identity, for the server ``cfg`` names (made on first use)."""
    secret = (
        hashlib.sha256(cfg.password_file("console").read_bytes()).hexdigest()
        if cfg.password_file("console").exists()
        else ""
    )
    return _shared_clickhouse(
        f"{cfg.user('console')}@{cfg.host}:{cfg.port}/{cfg.database} secure={cfg.secure} {secret}", cfg
    )


def data() -> ConsoleData:
    """This session's facade (rebuilt for a new principal) over the process's shared ClickHouse client."""
    who = principal()
    if who is None:
        st.stop()
    cached = st.session_state.get("vigil_data")
    if cached is None or cached.principal != who:
        cached = ConsoleData(settings(), who, connect=lambda: clickhouse_client(settings().clickhouse))
        st.session_state["vigil_data"] = cached
    return cached
