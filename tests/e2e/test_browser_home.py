"""A file written in Erin's Lab is still in JupyterLab's file browser after her server stopped and started."""

from __future__ import annotations

import shutil

import pytest

from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, PASSWORD
from tests.hubtest import eventually, server_gone, server_ready
from tests.storage.test_homes_hub import contents

NOTE = "kept on Erin's EFS home"


@pytest.mark.browser
async def test_a_file_survives_a_stop_and_start_in_the_browser(stack, tmp_path):
    from playwright.async_api import async_playwright

    assert (await stack.api.request("POST", "/users/erin")).status in (201, 409)
    assert (await stack.api.request("POST", "/users/erin/server", {"user_options": {}})).status in (201, 202)
    await eventually(lambda: server_ready(stack.api, "erin"), 120, "erin's Lab ready")
    body = {"type": "file", "format": "text", "content": NOTE}
    status, _ = await contents(stack.hub.url, stack.token, "erin", "PUT", "kept-on-efs.txt", body)
    assert status in (200, 201)
    assert (await stack.api.request("DELETE", "/users/erin/server")).status in (202, 204)
    await eventually(lambda: server_gone(stack.api, "erin"), 60, "erin's server stopped")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{stack.hub.url}/hub/login")
            await page.fill("#username_input", "erin")
            await page.fill("#password_input", PASSWORD)
            await page.click("#login_submit")
            await page.wait_for_selector("#calliope-service", timeout=30_000)
            await page.select_option("#calliope-service", "lab")
            await page.click("form#spawn_form [type=submit]")
            await page.wait_for_url("**/user/erin/lab**", timeout=150_000)
            await page.wait_for_selector(".jp-DirListing-item:has-text('kept-on-efs.txt')", timeout=60_000)
            shot = tmp_path / "efs-home.png"
            await page.screenshot(path=str(shot))
        finally:
            await browser.close()
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "efs-home.png")
    status, read = await contents(stack.hub.url, stack.token, "erin", "GET", "kept-on-efs.txt")
    assert (status, read["content"]) == (200, NOTE)
