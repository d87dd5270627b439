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
