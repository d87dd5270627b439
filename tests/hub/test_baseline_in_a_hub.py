"""The bench's stock-pattern baseline, selected as the bench selects it: `c.JupyterHub.spawner_class`.

A real JupyterHub with `calliope_hub.tools.baseline.NaiveECSSpawner` notices a task killed
behind its back through its own per-server poll (JupyterHub's timer), one DescribeTasks per
server per poll, and its EcsApi has no client-side quota limiter.
"""

from __future__ import annotations

import secrets
from typing import Any

import boto3

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_gone, server_ready
from tests.spawner.conftest import prepare

NAIVE = "calliope_hub.tools.baseline.NaiveECSSpawner"


async def test_the_naive_baseline_notices_a_killed_task_by_its_own_poll(local_ecs: Any) -> None:
    require_proxy()
    await prepare(local_ecs.endpoint_url)
    token = secrets.token_hex(16)
    settings = HubSettings(
        ecs_endpoint=local_ecs.endpoint_url, spawner_class=NAIVE, poll_interval=1, extra=[api_token_config(token)]
    )
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as admin:
        assert (await admin.request("POST", "/users/nia")).status == 201
        assert (await admin.request("POST", "/users/nia/server", {"user_options": {}})).status in (201, 202)
        await eventually(lambda: server_ready(admin, "nia"), 30, "ready")
        describes = _describes(local_ecs)
        await eventually(lambda: _more_describes(local_ecs, describes + 2), 10, "a DescribeTasks per poll")
        assert await _watched_running(admin) == 0, "the stock pattern has no shared watcher for running tasks"

        assert local_ecs.kill(_running_task_id(local_ecs))[0] == 202
        await eventually(lambda: server_gone(admin, "nia"), 15, "noticed as stopped")
        assert f"Using Spawner: {NAIVE}" in hub.log_tail(400)


def _describes(local_ecs: Any) -> int:
    return int(local_ecs.stats()["calls"].get("DescribeTasks", {}).get("ok", 0))


async def _more_describes(local_ecs: Any, at_least: int) -> bool:
    return _describes(local_ecs) >= at_least


async def _watched_running(admin: HubApi) -> float:
    text = (await admin.request("GET", "/../metrics")).text
    rows = [row for row in text.splitlines() if row.startswith("calliope_watched_tasks{") and "RUNNING" in row]
    return sum(float(row.split()[-1]) for row in rows)


def _running_task_id(local_ecs: Any) -> str:
    ecs = boto3.client("ecs", endpoint_url=local_ecs.endpoint_url, region_name="us-east-1")  # test set-up only
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    assert len(arns) == 1
    return str(arns[0].rsplit("/", 1)[-1])
