"""Warm pools in a real hub (JupyterHub + CHP + local ECS in process mode): races, restarts, the orphan sweep.

Two users start Chat at once with one warm task: one gets it, the other starts cold, both end
ready. Then the hub is killed (-9) and started again: both servers are still there, the idle
warm task the pool refilled is adopted (not stopped, not doubled), and the orphan sweep, run
every second with a 2 s grace, leaves the idle task and both servers alone.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import boto3
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import running_stack, scripts_on_path  # noqa: F401 (the fixture puts the stand-ins on PATH)
from tests.hubtest import server_ready
from tests.pool.conftest import eventually, hub_counts_idle

EXTRA = [
    "c.CalliopePool.pools = {'chat/small': {'min_idle': 1, 'max': 1}}",
    "c.CalliopePool.interval = 1",
    "c.OrphanSweep.interval = 1",
    "c.OrphanSweep.grace_period = 2",
]
USERS = ("fay", "gus")


def tasks_by_state(ecs: Any) -> dict[str, list[dict]]:
    """Running tasks, by their calliope:pool tag ('' for a task no pool started)."""
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    found: dict[str, list[dict]] = {"idle": [], "claimed": [], "": []}
    for task in ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"] if arns else []:
        tags = {tag["key"]: tag["value"] for tag in task.get("tags", [])}
        if task["lastStatus"] == "RUNNING" and task["desiredStatus"] == "RUNNING":
            found[tags.get("calliope:pool", "")].append({**task, "tagged": tags})
    return found


async def pool_metrics(stack: Any) -> dict[tuple[str, str], float]:
    """The hub's pool and time-to-ready samples from /hub/metrics, summed by (name, claim outcome or start)."""
    answer = await stack.api.request("GET", "/../metrics")
    assert answer.status == 200, answer.text
    shown: dict[tuple[str, str], float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name.startswith(("calliope_pool_", "calliope_time_to_ready_seconds_count")):
                key = sample.labels.get("outcome") or sample.labels.get("start") or ""
                shown[(sample.name, key)] += sample.value
    return shown


async def test_two_spawns_race_for_one_warm_task_both_end_ready_and_a_restart_keeps_everything(
    local_ecs_factory: Any, tmp_path: Any
) -> None:
    async with running_stack(local_ecs_factory, tmp_path, EXTRA) as stack:
        ecs = boto3.client("ecs", endpoint_url=stack.ecs.endpoint_url, region_name="us-east-1")
        await hub_counts_idle(stack, "chat/small", 1)
        (warm,) = tasks_by_state(ecs)["idle"]
        for user in USERS:
            assert (await stack.api.request("POST", f"/users/{user}")).status == 201

        answers = await asyncio.gather(*(
            stack.api.request("POST", f"/users/{user}/server", {"user_options": {"service": "chat", "size": "small"}})
            for user in USERS
        ))  # fmt: skip

        assert {answer.status for answer in answers} <= {201, 202}
        for user in USERS:
            await eventually(lambda user=user: server_ready(stack.api, user), 120, f"{user}'s Chat ready")
        running = tasks_by_state(ecs)
        (claimed,) = running["claimed"]
        assert claimed["taskArn"] == warm["taskArn"], "one spawn got the warm task"
        assert claimed["tagged"]["calliope:user"] in USERS
        (cold,) = running[""]
        assert {cold["tagged"]["calliope:user"], claimed["tagged"]["calliope:user"]} == set(USERS)
        await hub_counts_idle(stack, "chat/small", 1)
        (refill,) = tasks_by_state(ecs)["idle"]
        shown = await pool_metrics(stack)
        assert shown[("calliope_pool_claims_total", "claimed")] == 1
        assert shown[("calliope_pool_fallbacks_total", "")] == 1, "the loser started cold, counted once"
        assert shown[("calliope_time_to_ready_seconds_count", "warm")] == 1
        assert shown[("calliope_time_to_ready_seconds_count", "cold")] == 1

        stack.hub.kill()
        await stack.hub.start(timeout=120)

        for user in USERS:
            await eventually(lambda user=user: server_ready(stack.api, user), 120, f"{user}'s Chat after the restart")
        await asyncio.sleep(5)  # several orphan sweeps (every 1 s, 2 s grace) and pool rounds
        after = tasks_by_state(ecs)
        assert [t["taskArn"] for t in after["idle"]] == [refill["taskArn"]], "the idle task adopted, none added"
        assert [t["taskArn"] for t in after["claimed"]] == [warm["taskArn"]]
        assert [t["taskArn"] for t in after[""]] == [cold["taskArn"]]
        assert ecs.list_tasks(cluster="calliope", desiredStatus="STOPPED")["taskArns"] == [], "nothing was stopped"
