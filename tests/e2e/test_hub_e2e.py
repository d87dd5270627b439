"""End to end: a user's JupyterLab through the REST API, the proxy, a hub restart,
a task killed behind the hub's back, and a clean stop."""

from __future__ import annotations

import aiohttp
import boto3
import pytest

from tests.hubtest import eventually, server_gone, server_ready

#: one stack for the module (tests/e2e/conftest.py): alice and bob, each ending with no server
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def stack(module_stack):
    return module_stack


async def status_through_proxy(stack, user: str) -> int:
    headers = {"Authorization": f"token {stack.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.hub.url}/user/{user}/api/status", headers=headers, allow_redirects=False) as response,
    ):
        return response.status


async def spawn_lab(stack, user: str) -> list[dict]:
    await stack.api.request("POST", f"/users/{user}")
    answer = await stack.api.request(
        "POST", f"/users/{user}/server", {"user_options": {"service": "lab", "size": "small"}}
    )
    assert answer.status == 202, answer.text
    events = []
    async for event in stack.api.events(f"/users/{user}/server/progress"):
        events.append(event)
        if event.get("ready") or event.get("failed"):
            break
    await eventually(lambda: server_ready(stack.api, user), 120, "ready")
    return events


async def test_lab_lifecycle_through_the_hub(stack):
    events = await spawn_lab(stack, "alice")
    messages = [e.get("message", "") for e in events]
    assert "Task submitted to ECS" in messages
    assert any(m.startswith("RUNNING") for m in messages), messages
    assert events[-1].get("ready"), events[-1]
    assert await status_through_proxy(stack, "alice") == 200

    # Hub restart: the task keeps running and the new hub tracks it.
    await stack.hub.stop()
    await stack.hub.start(timeout=120)
    assert await server_ready(stack.api, "alice"), "the server survived the hub restart"
    assert await status_through_proxy(stack, "alice") == 200

    # Killed behind the hub's back: the watcher notices and the hub removes the route.
    tasks = stack.ecs.stats()["tasks"]
    assert tasks.get("RUNNING") == 1
    task_id = await _only_running_task_id(stack)
    status, _ = stack.ecs.kill(task_id)
    assert status in (200, 202)
    await eventually(lambda: server_gone(stack.api, "alice"), 30, "noticed as stopped")
    assert await status_through_proxy(stack, "alice") != 200


async def test_stop_leaves_no_process(stack):
    await spawn_lab(stack, "bob")
    assert stack.server_processes(), "a real jupyterhub-singleuser serves bob"
    answer = await stack.api.request("DELETE", "/users/bob/server")
    assert answer.status in (202, 204)
    await eventually(lambda: server_gone(stack.api, "bob"), 60, "stopped")
    await eventually(lambda: _no_server_process(stack), 30, "without a server process")


async def _only_running_task_id(stack) -> str:
    ecs = boto3.client("ecs", endpoint_url=stack.ecs.endpoint_url, region_name="us-east-1")
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    assert len(arns) == 1
    return arns[0].rsplit("/", 1)[-1]


async def _no_server_process(stack) -> bool:
    return not stack.server_processes()
