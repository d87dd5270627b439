"""Idle culling with the real jupyterhub-idle-culler, at activity settings scaled like docs/scaling.md's.

docs/scaling.md raises the activity interval and `activity_resolution` with N to cut the hub's
activity writes. That is only safe while a busy server's last activity, as the hub records it,
never lags the truth by more than the culler's timeout: the lag is at most one activity
interval (the next post) plus `activity_resolution` (a post that close to the recorded one is
not written). The rule, `activity interval + activity_resolution < culler timeout`, is what
the defaults keep; here it is exercised in seconds instead of minutes:

- a server whose user works (activity posted every ACTIVITY_S, as jupyterhub-singleuser posts
  with JUPYTERHUB_ACTIVITY_INTERVAL) is never culled;
- an idle one is culled within the timeout plus one activity interval (plus the culler's own
  period), and its ECS task stops.

The culler runs as JupyterHub runs it in production: a hub-managed service with its own token
and role, reading the hub's REST API. ECSSpawner against local ECS (sim mode) spawns Chat.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time

import boto3
import pytest

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_gone, server_model, server_ready

#: the culler's --timeout: a server idle this long is culled
TIMEOUT_S = 20
#: a busy server's activity posts (JUPYTERHUB_ACTIVITY_INTERVAL), and the hub's activity_resolution
ACTIVITY_S = 8
RESOLUTION_S = 6
#: the culler's --cull-every
CULL_EVERY_S = 4
assert ACTIVITY_S + RESOLUTION_S < TIMEOUT_S, "the docs/scaling.md rule this test stands on"

CULLER = f"""
c.JupyterHub.services.append({{
    'name': 'idle-culler',
    'command': [{sys.executable!r}, '-m', 'jupyterhub_idle_culler',
                '--timeout={TIMEOUT_S}', '--cull-every={CULL_EVERY_S}', '--concurrency=2'],
}})
c.JupyterHub.load_roles.append({{
    'name': 'idle-culler',
    'scopes': ['list:users', 'read:users:activity', 'read:servers', 'delete:servers'],
    'services': ['idle-culler'],
}})
c.JupyterHub.activity_resolution = {RESOLUTION_S}
c.JupyterHub.last_activity_interval = {ACTIVITY_S}
"""


def _require_culler() -> None:
    try:
        import jupyterhub_idle_culler  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("jupyterhub-idle-culler is not installed (the test extra has it)")


async def _spawn_chat(api: HubApi, user: str) -> None:
    await api.request("POST", f"/users/{user}")
    answer = await api.request("POST", f"/users/{user}/server", {"user_options": {"service": "chat"}})
    assert answer.status in (201, 202), answer.text
    await eventually(lambda: server_ready(api, user), 60, f"{user} ready")


async def _work(api: HubApi, user: str, until: float) -> int:
    """What jupyterhub-singleuser does for a user at work: POST its activity every ACTIVITY_S."""
    posts = 0
    while time.monotonic() < until:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        body = {"last_activity": stamp, "servers": {"": {"last_activity": stamp}}}
        answer = await api.request("POST", f"/users/{user}/activity", body)
        assert answer.status == 200, answer.text
        posts += 1
        await asyncio.sleep(ACTIVITY_S)
    return posts


async def test_the_real_culler_culls_the_idle_server_and_keeps_the_busy_one(local_ecs_factory) -> None:
    require_proxy()
    _require_culler()
    local = local_ecs_factory(mode="sim", throttle="off", sim_provisioning_s=0.3, sim_pending_s=0.3)
    ecs = boto3.client("ecs", endpoint_url=local.endpoint_url, region_name="us-east-1")
    ecs.create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    settings = HubSettings(ecs_endpoint=local.endpoint_url, extra=[api_token_config(token), CULLER])
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as api:
        await _spawn_chat(api, "busy")
        await _spawn_chat(api, "idle")
        idle_arn = (await server_model(api, "idle") or {})["state"]["task_arn"]
        idle_since = time.monotonic()  # its last activity: the spawn
        # The busy user works through the idle one's whole cull and a full timeout after it.
        worker = asyncio.create_task(_work(api, "busy", idle_since + 2 * TIMEOUT_S + ACTIVITY_S + CULL_EVERY_S))
        bound = TIMEOUT_S + ACTIVITY_S + CULL_EVERY_S
        await eventually(lambda: server_gone(api, "idle"), bound + 30, "the idle server culled")
        culled_after = time.monotonic() - idle_since
        posts = await worker
        assert await server_ready(api, "busy"), "a server at work is never culled"
        log = hub.log_path.read_text() if hub.log_path else ""
    assert culled_after <= bound + 15, f"culled {culled_after:.1f} s after its last activity (bound {bound} s)"
    assert posts >= (2 * TIMEOUT_S) // ACTIVITY_S
    assert "[idle-culler]" in log or "idle-culler" in log, "the culler ran as the hub's service"
    status = ecs.describe_tasks(cluster="calliope", tasks=[idle_arn])["tasks"][0]
    assert status["desiredStatus"] == "STOPPED", "the culled server's task was stopped"
