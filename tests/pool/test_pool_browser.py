"""Issue 15's end-to-end check in a real browser: with a pool of one Lab, Start opens JupyterLab from a warm task.

The stack is the e2e one (real JupyterHub, CHP, local ECS in process mode). Lab's built-in YAML
keeps each user's files on EFS, which cannot be pooled (docs/pool.md), so this hub's catalog is
the built-in one with Lab's `storage:` block removed, as an operator who pools Lab would do.
The seconds from clicking Start to JupyterLab's main panel are written next to the screenshot
(test-artifacts/pool-warm-lab.*); they are a figure to look at, not an assertion.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import boto3
import pytest
import yaml

from calliope_hub.catalog import BUILTIN_DIRECTORY
from tests.e2e.conftest import running_stack, scripts_on_path  # noqa: F401 (the fixture puts Lab on PATH)
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, PASSWORD
from tests.pool.conftest import eventually, hub_counts_idle


def catalog_without_lab_storage(directory: Path) -> Path:
    directory.mkdir()
    for source in Path(BUILTIN_DIRECTORY).glob("*.yaml"):
        service = yaml.safe_load(source.read_text())
        service.pop("storage", None)
        (directory / source.name).write_text(yaml.safe_dump(service))
    return directory


@pytest.mark.browser
async def test_with_a_pool_of_one_lab_opens_from_a_warm_task(local_ecs_factory, tmp_path):
    from playwright.async_api import async_playwright

    catalog = catalog_without_lab_storage(tmp_path / "catalog")
    extra = [
        f"c.ECSSpawner.catalog_path = {str(catalog)!r}",
        "c.CalliopePool.pools = {'lab/small': {'min_idle': 1, 'max': 1}}",
        "c.CalliopePool.interval = 1",
        # jupyterhub-singleuser's own entry point: the warm task imports Lab while it waits
        "c.CalliopePool.entry_points = {'lab': 'jupyterhub.singleuser:main'}",
    ]
    async with running_stack(local_ecs_factory, tmp_path / "hub", extra) as stack:
        ecs = boto3.client("ecs", endpoint_url=stack.ecs.endpoint_url, region_name="us-east-1")

        def warm_arns(state: str) -> list[str]:
            arns = ecs.list_tasks(cluster="calliope")["taskArns"]
            tasks = ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"] if arns else []
            return [
                t["taskArn"]
                for t in tasks
                if {"key": "calliope:pool", "value": state} in t.get("tags", []) and t["lastStatus"] == "RUNNING"
            ]

        (warm,) = await eventually(lambda: warm_arns("idle"), 120, "a warm Lab task RUNNING")
        await hub_counts_idle(stack, "lab/small", 1)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 800})
                await page.goto(f"{stack.hub.url}/hub/login")
                await page.fill("#username_input", "erin")
                await page.fill("#password_input", PASSWORD)
                await page.click("#login_submit")
                await page.wait_for_selector("#calliope-service", timeout=30_000)
                await page.select_option("#calliope-service", "lab")
                await page.select_option("#calliope-size", "lab/small")
                clicked = time.monotonic()
                await page.click("form#spawn_form [type=submit]")
                await page.wait_for_url("**/user/erin/lab**", timeout=150_000)
                await page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
                seconds = time.monotonic() - clicked
                shot = tmp_path / "pool-warm-lab.png"
                await page.screenshot(path=str(shot))
            finally:
                await browser.close()

        claimed = ecs.describe_tasks(cluster="calliope", tasks=[warm], include=["TAGS"])["tasks"][0]
        tags = {tag["key"]: tag["value"] for tag in claimed["tags"]}
        assert tags["calliope:pool"] == "claimed" and tags["calliope:user"] == "erin", "Lab runs in the warm task"
        assert shot.stat().st_size > 10_000
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "pool-warm-lab.png")
        (ARTIFACTS / "pool-warm-lab.txt").write_text(
            f"clicking Start to JupyterLab's main panel, from a warm task: {seconds:.2f} s\n"
        )
        print(f"warm Lab: {seconds:.2f} s from Start to JupyterLab")
        await eventually(lambda: warm_arns("idle"), 120, "the pool refilled")
