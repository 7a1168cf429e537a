"""Vigil analyst console: sign in, then Fleet / Equipment / Alerts / SQL / Models over both paths.

Run with `vigil console` (or as part of `vigil demo`). Who may see which sites, and who may acknowledge
alerts or promote models, is decided in streamlit_app.access and enforced in every query
(streamlit_app.data), not by hiding things here.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from streamlit_app import preload, session
from streamlit_app.access import authenticate, forget_initial_password, load_users, principal_for_email
from streamlit_app.signin_throttle import shared_throttle

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="Vigil", page_icon=":material/monitor_heart:", layout="wide")


def oidc_enabled() -> bool:
    return bool(session.settings().console.oidc_client_id)


def login_page() -> None:
    st.title("Vigil — sign in")
    settings = session.settings()
    try:
        users = load_users(settings.console_users_path)
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    if oidc_enabled():
        if st.user.is_logged_in:
            who = principal_for_email(users, st.user.get("email"))
            if who is None:
                st.error(
                    f"{st.user.get('email')} signed in, but has no Vigil role: ask an admin to add the address "
                    f"to {settings.console_users_path} (vigil console users add ... --email)."
                )
                st.button("Sign out", on_click=st.logout)
                st.stop()
            session.sign_in(who)
            session.forget_remembered_sign_in()
            st.rerun()
        st.button("Sign in with your identity provider", on_click=st.login, type="primary")
        st.divider()
        st.caption("or with a local account")
    if not users.users:
        st.warning(
            f"No console users yet. Create one: `vigil console users add NAME --role admin` "
            f"(file: {settings.console_users_path})."
        )
    with st.form("login"):
        name = st.text_input("user name")
        password = st.text_input("password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        c = settings.console
        throttle = shared_throttle(c.signin_failures_per_user, c.signin_failures_per_address, c.signin_failure_window_s)
        address = st.context.ip_address  # None for a client on this machine
        refusal = throttle.check(name, address)
        who = None if refusal else authenticate(users, name, password)
        if refusal is not None:
            st.error(refusal.message())
        elif who is None:
            throttle.failed(name, address)
            st.error("Wrong user name or password.")
        else:
            session.sign_in(who)
            session.remember_sign_in(who, users)
            forget_initial_password(settings.console_users_path, who.name)
            st.rerun()
    preload.page_code()  # while the person types
    session.render_cookie_script()  # after a sign-out: this browser's other tabs are signed out too


who = session.principal()
if who is None:
    try:  # a password sign-in this browser remembers (another tab, an alert link opened later)
        who = session.remembered(load_users(session.settings().console_users_path))
    except ValueError:
        who = None  # the users file is invalid: the sign-in page says so
    if who is not None:
        session.sign_in(who)
if who is None:
    st.navigation([st.Page(login_page, title="Sign in", icon=":material/login:")]).run()
else:
    # Alert links point at <console>/?equipment=<id>: that machine's page is then the one at the root URL, so it
    # opens in this run (switching pages from Fleet cost one more script run, ~0.2 s).
    linked = "equipment" in st.query_params
    pages = [
        st.Page(VIEWS / "fleet.py", title="Fleet", icon=":material/factory:", default=not linked),
        st.Page(VIEWS / "equipment.py", title="Equipment", icon=":material/precision_manufacturing:", default=linked),
        st.Page(VIEWS / "alerts.py", title="Alerts", icon=":material/notifications_active:"),
        st.Page(VIEWS / "insights.py", title="Insights", icon=":material/psychology:"),
        st.Page(VIEWS / "sql.py", title="SQL", icon=":material/database:"),
        st.Page(VIEWS / "models.py", title="Models", icon=":material/model_training:"),
    ]
    with st.sidebar:
        session.render_cookie_script()
        st.markdown(f"**{who.display_name}** · {who.role}  \n{who.sites_label}")
        if st.button("Sign out"):
            if oidc_enabled() and st.user.is_logged_in:
                session.sign_out()
                st.logout()
            session.sign_out()
            st.rerun()
    st.navigation(pages).run()
