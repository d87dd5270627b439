"""A throttled RunTask is retried with its clientToken and the spawn succeeds (issue 11 item 6).

Local ECS gets a Fargate launch quota far below AWS's (a burst of 1, then one task every 4 s),
while the hub's client buckets still assume AWS's 20/s: so the hub's RunTask calls really meet
ThrottlingException "Rate exceeded", the way a second hub or the console sharing the account's
quota makes them meet it on AWS. What must hold: every spawn gets ready and the hub logs no
failed start (a user never sees a throttle as a failed spawn), and ECS runs exactly one task per
server, however many times each RunTask was sent.
"""

from __future__ import annotations

import asyncio
import secrets

import boto3

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_ready

SPAWNS = 4
#: local ECS's Fargate RunTask quota: burst 1, one task every 2 s (AWS: 100 and 20/s)
FARGATE_QUOTA = "fargate=1:0.5"


async def _spawn(api: HubApi, user: str) -> None:
    await api.request("POST", f"/users/{user}")
    answer = await api.request("POST", f"/users/{user}/server", {"user_options": {"service": "chat"}})
    assert answer.status in (201, 202), answer.text


async def test_throttled_runtask_is_retried_and_every_spawn_succeeds(local_ecs_factory) -> None:
    require_proxy()
    local = local_ecs_factory(mode="sim", throttle=FARGATE_QUOTA, sim_provisioning_s=0.3, sim_pending_s=0.3)
    ecs = boto3.client("ecs", endpoint_url=local.endpoint_url, region_name="us-east-1")
    ecs.create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    users = [f"throttled{i}" for i in range(SPAWNS)]
    settings = HubSettings(ecs_endpoint=local.endpoint_url, extra=[api_token_config(token)])
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as api:
        await asyncio.gather(*(_spawn(api, user) for user in users))
        try:
            for user in users:
                await eventually(lambda user=user: server_ready(api, user), 180, f"{user} ready")
        finally:
            log = hub.log_path.read_text() if hub.log_path else ""
            print(log[-6000:], local.stats()["calls"])  # shown when the test fails
        # One task per server however many tries: a retry carries the same clientToken (ECS's
        # counter may say "ok" more often than SPAWNS, for retries of calls whose answer was lost).
        running = ecs.list_tasks(cluster="calliope")["taskArns"]
        described = ecs.describe_tasks(cluster="calliope", tasks=running, include=["TAGS"])["tasks"]
    owners = sorted({t["key"]: t["value"] for t in task.get("tags", [])}.get("calliope:user") for task in described)
    assert owners == sorted(users)
    # Met by botocore's own retries or, beyond them, by the launch's ("RunTask not taken ... again in").
    assert local.stats()["calls"]["RunTask"]["throttled"] >= 1, "the spawns met the Fargate quota"
    assert "Error starting" not in log and "Traceback" not in log, log[-3000:]
