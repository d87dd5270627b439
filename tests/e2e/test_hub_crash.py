"""kill -9 of the hub with spawns in flight (issue 9 item 5).

The spawner commits each task's ARN as soon as RunTask answers, so after the crash
JupyterHub's init_spawners finds those spawners with a server row but no address, and asks
ECSSpawner.get_url(), which waits for ECS's RUNNING and the server's answer. Every in-flight
spawn must complete, and no healthy task may be stopped. The issue asks for 50 spawns in
flight; here 6, each a real jupyterhub-singleuser on a 2-core machine shared with the suite.
"""

from __future__ import annotations

import asyncio

import boto3

from tests.e2e.test_hub_e2e import status_through_proxy
from tests.hubtest import eventually, server_model, server_ready

IN_FLIGHT = 6


async def test_spawns_in_flight_survive_a_hub_crash(stack):
    ecs = boto3.client("ecs", endpoint_url=stack.ecs.endpoint_url, region_name="us-east-1")
    users = [f"crash{i}" for i in range(IN_FLIGHT)]
    for user in users:
        assert (await stack.api.request("POST", f"/users/{user}")).status == 201
    answers = await asyncio.gather(
        *(stack.api.request("POST", f"/users/{u}/server", {"user_options": {"service": "lab"}}) for u in users)
    )
    assert {a.status for a in answers} == {202}

    async def every_arn_in_state() -> bool:
        """ECSSpawner commits the ARN in the same step that puts it in its state, so this is the crash's moment."""
        models = [await server_model(stack.api, u) or {} for u in users]
        return all(model.get("state", {}).get("task_arn") for model in models)

    await eventually(every_arn_in_state, 60, "every RunTask answered and its ARN committed")
    assert len(ecs.list_tasks(cluster="calliope")["taskArns"]) == IN_FLIGHT
    ready_before = [u for u in users if (await server_model(stack.api, u) or {}).get("ready")]
    stack.hub.kill()
    assert len(ready_before) < IN_FLIGHT, "the crash must catch spawns in flight"

    await stack.hub.start(timeout=120)
    for user in users:
        await eventually(lambda user=user: server_ready(stack.api, user), 120, f"{user}'s spawn completed")
    # JupyterHub adds the routes of servers checked after init_spawners_timeout once every check is done.
    for user in users:
        await eventually(lambda user=user: _answers(stack, user), 30, f"{user}'s server through the proxy")
    assert ecs.list_tasks(cluster="calliope", desiredStatus="STOPPED")["taskArns"] == [], "no healthy task stopped"
    assert len(ecs.list_tasks(cluster="calliope")["taskArns"]) == IN_FLIGHT


async def _answers(stack, user: str) -> bool:
    return await status_through_proxy(stack, user) == 200
