"""The console in a real browser (headless Debian Chromium driven by Playwright) against the live local stack:
sign in, read the Fleet and an Equipment page with live data, acknowledge an alert, and keep screenshots.

Screenshots go to the test's temporary directory; with VIGIL_UPDATE_SCREENSHOTS=1 they also replace the ones
in docs/screenshots/ that the README shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.alertmanager import AlertmanagerClient, rfc3339
from connectors.clickhouse import make_client
from operations.stack.services import Stack
from streamlit_app import remember
from streamlit_app.access import set_user
from tests.conftest import LiveFleet, free_port, wait_for_port
from vigil.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.streams_live]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def console_url(live_fleet: LiveFleet) -> Iterator[str]:
    """The console as a service of the stack (what `vigil console` starts), with one engineer of site 1."""
    settings = live_fleet.settings
    set_user(settings.console_users_path, "eng", "engineer", ["site-1"], "eng-password-1")
    stack = Stack(settings)
    stack.up(("console",))
    try:
        yield f"http://{settings.console.host}:{settings.console.port}"
    finally:
        stack.down(("console",))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("VIGIL_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
    return path


def test_sign_in_browse_live_data_and_acknowledge_an_alert(
    live_fleet: LiveFleet, console_url: str, browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    settings = live_fleet.settings
    machine = sorted(live_fleet.ids("site-1"))[0]
    now = datetime.now(UTC)
    with AlertmanagerClient.for_settings(settings) as am:
        am.post_alerts(
            [
                {
                    "labels": {
                        "alertname": "VigilEquipmentAnomaly",
                        "severity": "critical",
                        "site": "site-1",
                        "equipment_id": machine,
                        "sensor": "vibration_rms",
                        "detector": "threshold_max",
                        "source": "browser-test",
                    },
                    "annotations": {"summary": f"{machine}: vibration_rms above its limit"},
                    "startsAt": rfc3339(now - timedelta(seconds=20)),
                    "endsAt": rfc3339(now + timedelta(minutes=10)),
                }
            ]
        )

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(console_url)
    page.get_by_role("textbox", name="user name").fill("eng")
    page.get_by_role("textbox", name="password").fill("eng-password-1")
    page.get_by_role("button", name="Sign in").click()

    # Fleet: live counts of the engineer's site only.
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(page.get_by_text("By site and line")).to_be_visible()
    expect(page.get_by_text("site-1").first).to_be_visible()
    time.sleep(2)  # let the tables and charts paint before the picture
    shoot(page, tmp_path, "console-fleet")

    # Equipment: one machine's live statistics, as an alert link opens it.
    page.get_by_role("link", name="Equipment").click()
    expect(page.get_by_role("heading", name="Equipment")).to_be_visible()
    page.get_by_text("15 min", exact=True).click()  # the fleet streams for minutes only: zoom in
    expect(page.get_by_text("window statistics from the hot path (Prometheus)")).to_be_visible()
    expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
    time.sleep(2)
    shoot(page, tmp_path, "console-equipment")

    # Alerts: acknowledge the alert (an Alertmanager silence with author and comment).
    page.get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", name="Firing now")).to_be_visible()
    page.get_by_role("combobox", name="alert").click()
    # The live fleet keeps many alerts firing and the list shows only its first options: type to find ours.
    page.keyboard.type(machine)
    page.get_by_role("option").filter(has_text=f"site-1 · {machine}").first.click()
    expect(page.get_by_role("combobox", name="alert")).to_have_value(re.compile(re.escape(machine)))
    comment = "checked on site: bearing noise, replacing"
    page.get_by_role("textbox", name="comment (why, what is being done)").fill(comment)
    page.get_by_role("button", name="Acknowledge (silence)").click()
    expect(page.get_by_text("Silenced as eng")).to_be_visible()
    time.sleep(1)
    shoot(page, tmp_path, "console-alerts")

    with AlertmanagerClient.for_settings(settings) as am:
        silence = next(s for s in am.list_silences() if s["comment"] == comment)
        assert silence["createdBy"] == "eng"
        assert {"name": "equipment_id", "value": machine} in [
            {"name": m["name"], "value": m["value"]} for m in silence["matchers"]
        ]
        am.expire_silence(silence["id"])
    for name in ("console-fleet", "console-equipment", "console-alerts"):
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000, f"{name}.png looks empty"


def test_an_alert_link_opens_its_machine_right_after_sign_in(live_fleet: LiveFleet, console_url: str, browser) -> None:
    """Alertmanager's messages link to <console>/?equipment=ID: in a new browser that is sign-in, then that
    machine's page (the Equipment page serves the root URL for such a link), and the other pages still open."""
    from playwright.sync_api import expect

    machine = sorted(live_fleet.ids("site-1"))[-1]
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{console_url}/?equipment={machine}")
    page.get_by_role("textbox", name="user name").fill("eng")
    page.get_by_role("textbox", name="password").fill("eng-password-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Equipment")).to_be_visible()
    expect(page.get_by_role("textbox", name="machine")).to_have_value(machine)
    expect(page.get_by_text("severity now")).to_be_visible()
    assert f"equipment={machine}" in page.url
    page.get_by_role("link", name="Fleet").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(page.get_by_text("By site and line")).to_be_visible()
    page.get_by_role("link", name="Equipment").click()
    expect(page.get_by_role("heading", name="Equipment")).to_be_visible()
    expect(page.get_by_text("severity now")).to_be_visible()
    context.close()


def test_a_password_sign_in_holds_for_the_browsers_new_tabs_until_sign_out(console_url: str, browser) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    first = context.new_page()
    first.goto(console_url)
    first.get_by_role("textbox", name="user name").fill("eng")
    first.get_by_role("textbox", name="password").fill("eng-password-1")
    first.get_by_role("button", name="Sign in").click()
    expect(first.get_by_role("heading", name="Fleet")).to_be_visible()
    # The page sets the cookie from the browser after it rendered: wait for it, as a user's next tab would.
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not (cookies := [c for c in context.cookies() if c["name"] == "vigil_signin"]):
        assert time.monotonic() < deadline, "the sign-in cookie was never set"
        first.wait_for_timeout(100)
    (cookie,) = cookies
    assert cookie["sameSite"] == "Strict" and "eng-password" not in cookie["value"]

    second = context.new_page()  # a new tab: no password asked
    second.goto(console_url)
    expect(second.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(second.get_by_text("site-1").first).to_be_visible()
    assert second.get_by_role("textbox", name="password").count() == 0

    second.get_by_role("button", name="Sign out").click()
    expect(second.get_by_role("textbox", name="password")).to_be_visible()
    third = context.new_page()  # signed out in one tab: the browser's next tab asks again
    third.goto(console_url)
    expect(third.get_by_role("textbox", name="password")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "vigil_signin"]
    context.close()


@pytest.fixture(scope="module")
def oidc_console_url(live_fleet: LiveFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second console signing people in through an OpenID Connect provider (oidc-provider-mock, a real OIDC
    server on a free port: discovery, authorization form, code exchange, signed ID tokens). Its users file
    maps one e-mail address to an engineer of site 1."""
    folder = tmp_path_factory.mktemp("oidc-console")
    port = free_port()
    provider = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
        stdout=(folder / "provider.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = live_fleet.settings
    console = base.console.model_copy(
        update={
            "port": free_port(),
            "oidc_client_id": "vigil-console",
            "oidc_client_secret": SecretStr("console-secret"),
            "oidc_server_metadata_url": f"http://127.0.0.1:{port}/.well-known/openid-configuration",
        }
    )
    settings = base.model_copy(update={"data_dir": folder / "data", "console": console})
    set_user(settings.console_users_path, "ana", "engineer", ["site-1"], email="ana@plant.example")
    stack = Stack(settings)
    try:
        wait_for_port(port)
        stack.up(("console",))
        yield f"http://{settings.console.host}:{settings.console.port}"
    finally:
        stack.down(("console",))
        provider.terminate()
        provider.wait(10)


def test_sign_in_through_an_openid_connect_provider(
    live_fleet: LiveFleet, oidc_console_url: str, browser, tmp_path: Path
) -> None:
    """The provider's e-mail claim picks the Vigil user: role and sites come from the users file; an address
    the file does not know is signed in by the provider but gets no access."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(oidc_console_url)
    # A password sign-in this browser remembered (here a stale token, so the sign-in page shows) must not outlive
    # her session: st.logout reloads the page before a cookie script could clear it, so her sign-in clears it.
    context.add_cookies([{"name": remember.COOKIE, "value": "an-earlier-local-sign-in", "url": oidc_console_url}])
    page.get_by_role("button", name="Sign in with your identity provider").click()
    page.locator("input[name=sub]").fill("ana@plant.example")  # the provider's authorization form
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    sidebar = page.locator("[data-testid='stSidebar']")
    expect(sidebar.get_by_text("engineer")).to_be_visible()
    expect(sidebar.get_by_text("site-1")).to_be_visible()
    page.wait_for_function(f"!document.cookie.includes('{remember.COOKIE}=')")
    assert remember.COOKIE not in {c["name"] for c in context.cookies()}
    # The shared stack also holds other test modules' machines: count what ClickHouse has per site.
    with contextlib.closing(make_client(live_fleet.settings.clickhouse, "admin")) as client:
        site_1, everyone = client.query(
            "SELECT countIf(site = 'site-1'), count() FROM machine_state FINAL"
        ).result_rows[0]
    assert 0 < site_1 < everyone
    machines = (
        page.locator("[data-testid='stMetric']").filter(has_text="machines").locator("[data-testid='stMetricValue']")
    )
    expect(machines).to_have_text(str(site_1))  # her site's machines only, counted in ClickHouse under her scope
    time.sleep(2)  # let the tables paint before the picture
    shoot(page, tmp_path, "console-oidc-fleet")
    # The identity cookie signs her in on a new tab too.
    second = context.new_page()
    second.goto(oidc_console_url)
    expect(second.get_by_role("heading", name="Fleet")).to_be_visible()
    context.close()

    stranger = browser.new_context()
    page = stranger.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(oidc_console_url)
    page.get_by_role("button", name="Sign in with your identity provider").click()
    page.locator("input[name=sub]").fill("someone@elsewhere.example")
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_text("someone@elsewhere.example signed in, but has no Vigil role")).to_be_visible()
    expect(page.get_by_role("heading", name="Fleet")).to_have_count(0)
    stranger.close()
