"""A spawn burst under ECS's real quotas (issue 9 item 4, issue 11 item 6).

A real JupyterHub with `concurrent_spawn_limit` 8 takes 24 concurrent spawn requests
against local ECS in sim mode with AWS's quotas enforced (throttle="aws"). Every 429 the
hub answers carries Retry-After; the client honours it; no spawn fails, and every task
ECS runs belongs to a ready server. The issue's figure is 600 requests at a limit of 100:
with per-server task definitions each new user costs a RegisterTaskDefinition, whose quota
is 1/s, so 600 new users take ten minutes whatever the hub does; this test keeps the shape
(3x the limit) at a size `make test` can afford.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import boto3

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_ready

SPAWNS = 24
LIMIT = 8


async def spawn_until_accepted(session: aiohttp.ClientSession, url: str, retry_afters: list[str]) -> int:
    """POST until the hub takes the spawn; every 429 must say when to come back."""
    while True:
        async with session.post(url, json={"user_options": {"service": "lab"}}) as answer:
            if answer.status != 429:
                return answer.status
            retry_afters.append(answer.headers.get("Retry-After", ""))
            await asyncio.sleep(float(answer.headers.get("Retry-After") or 1))


async def test_burst_under_aws_quotas(local_ecs_factory: Any) -> None:
    require_proxy()
    local = local_ecs_factory(mode="sim", throttle="aws", sim_provisioning_s=0.5, sim_pending_s=1.0)
    ecs = boto3.client("ecs", endpoint_url=local.endpoint_url, region_name="us-east-1")
    ecs.create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    extra = [
        api_token_config(token),
        f"c.JupyterHub.concurrent_spawn_limit = {LIMIT}",
        "c.JupyterHub.spawn_throttle_retry_range = (1, 2)",
    ]
    users = [f"burst{i}" for i in range(SPAWNS)]
    retry_afters: list[str] = []
    settings = HubSettings(ecs_endpoint=local.endpoint_url, extra=extra)
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as api:
        for user in users:
            assert (await api.request("POST", f"/users/{user}")).status == 201
        headers = {"Authorization": f"token {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            statuses = await asyncio.gather(
                *(spawn_until_accepted(session, f"{hub.url}/hub/api/users/{u}/server", retry_afters) for u in users)
            )
        assert set(statuses) <= {201, 202}, statuses
        assert retry_afters, "the burst met the spawn limit"
        assert all(value.isdigit() for value in retry_afters), retry_afters
        for user in users:
            await eventually(lambda user=user: server_ready(api, user), 180, f"{user} ready")
        log = hub.log_path.read_text() if hub.log_path else ""
        assert "Error starting" not in log and "Traceback" not in log, log[-3000:]
        arns = ecs.list_tasks(cluster="calliope")["taskArns"]
        tasks = ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"]
        owners = sorted({t["value"] for task in tasks for t in task.get("tags", []) if t["key"] == "calliope:user"})
        assert len(arns) == SPAWNS and owners == sorted(users), "one task per server, none unowned"
