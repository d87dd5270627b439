"""A newcomer in a real browser: log in, pick Lab/small on the spawn form, land in JupyterLab."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PASSWORD = "e2e-password-1234"  # tests/e2e/conftest.py sets it on the hub

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
async def test_login_spawn_form_and_jupyterlab(stack, tmp_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{stack.hub.url}/hub/login")
            await page.fill("#username_input", "carol")
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")

            await page.wait_for_selector("#calliope-service", timeout=30_000)
            await page.select_option("#calliope-service", "lab")
            await page.select_option("#calliope-size", "lab/small")
            await page.click("form#spawn_form [type=submit]")

            await page.wait_for_url("**/user/carol/lab**", timeout=150_000)
            await page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
            shot = tmp_path / "jupyterlab.png"
            await page.screenshot(path=str(shot))
        finally:
            await browser.close()

    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "jupyterlab.png")
    model = (await stack.api.request("GET", "/users/carol")).json()
    assert model["servers"][""]["user_options"] == {"service": "lab", "size": "small"}


#: (server name, service, size, where the spawn lands): named so no server name equals a service's.
SERVICES = [
    ("notes", "lab", "small", "**/user/dave/notes/lab**"),
    ("talk", "chat", "medium", "**/user/dave/talk/**"),
    ("ide", "waiide", "small", "**/user/dave/ide/**"),
]


async def spawn_named(page, hub_url: str, name: str, service: str, size: str, lands_on: str) -> None:
    """Picks service and size on the named server's spawn form and waits for the server's own page."""
    await page.goto(f"{hub_url}/hub/spawn/dave/{name}")
    await page.wait_for_selector("#calliope-service", timeout=30_000)
    await page.select_option("#calliope-service", service)
    await page.select_option("#calliope-size", f"{service}/{size}")
    await page.click("form#spawn_form [type=submit]")
    await page.wait_for_url(lands_on, timeout=60_000)


@pytest.mark.browser
async def test_lab_chat_and_waiide_each_lead_back_home(named_stack):
    """Issue 10: each service spawns from the form, each stand-in links back to /hub/home, and the
    home page lists the running servers with their service and size."""
    from playwright.async_api import async_playwright

    hub_url = named_stack.hub.url
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            await page.goto(f"{hub_url}/hub/login")
            await page.fill("#username_input", "dave")
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")
            await page.wait_for_url("**/hub/**", timeout=30_000)

            for name, service, size, lands_on in SERVICES:
                await spawn_named(page, hub_url, name, service, size, lands_on)
                if service == "lab":
                    await page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
                else:
                    # The stand-in says what it is and what it runs, then leads back to the hub's home.
                    assert (await page.inner_text("#calliope-service")) == service
                    assert (await page.inner_text("#calliope-size")) == size
                    assert "local stand-in" in await page.inner_text("h1")
                await page.screenshot(path=str(ARTIFACTS / f"{service}.png"))
                if service == "lab":
                    await page.goto(f"{hub_url}/hub/home")
                else:
                    await page.click("#back-to-hub")
                await page.wait_for_url("**/hub/home", timeout=15_000)

            home = await page.inner_text("body")
            rows = await page.eval_on_selector_all(
                ".calliope-server-row",
                """rows => Object.fromEntries(rows.map(row => [row.dataset.serverName, [
                    row.querySelector('.calliope-service').innerText,
                    row.querySelector('.calliope-size').innerText]]))""",
            )
            await page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
        finally:
            await browser.close()

    for name, _service, _size, _lands_on in SERVICES:
        assert name in home
    # The home page says what each running server is: service and size, read from ECSSpawner's state.
    assert rows == {name: [service, size] for name, service, size, _ in SERVICES}
    model = (await named_stack.api.request("GET", "/users/dave")).json()
    assert {name: server["user_options"] for name, server in model["servers"].items()} == {
        name: {"service": service, "size": size} for name, service, size, _ in SERVICES
    }
    assert all(server["ready"] for server in model["servers"].values())
