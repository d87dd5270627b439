"""Warm pools across a failover of a real HA pair: the new leader keeps the claimed server and the idle pool.

Issue 15: "hub restart and failover keep claimed servers; idle pool tasks are not lost or leaked, and the
orphan sweeper leaves them alone". tests/pool/test_pool_hub.py covers the restart; this is the failover.
It needs real launchers, so its HA stack is its own, with local ECS in process mode (the module's shared
stack in conftest runs sim tasks, which no one can claim): Chat's stand-in behind the pool's launcher.

A user claims a warm task, the pool refills, the leader is killed (-9). The standby takes over, and then:
the claimed task is still the user's server (same ARN, ready, answering through the balancer); the idle
tasks are the same ones (adopted: none stopped, none started in their place); the orphan sweep, run every
second with a 2 s grace, has swept several times and stopped nothing; and an adopted task can be claimed
by the new leader (the pool key derives from the shared cookie secret, so it is the same on both hubs).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from calliope_hub.tools.local.ha import HaSpec, HaStack
from tests.conftest import fresh_cidr
from tests.ha.conftest import PG_SERVER, ecs_client, require_services, started
from tests.hubtest import eventually, server_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

POOL = "chat/small"
IDLE = 2
CHAT = {"user_options": {"service": "chat", "size": "small"}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool_ha_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HaStack]:
    """Two HA hubs keeping a pool of two warm Chat servers, on local ECS in process mode, its tasks on a /24 of
    the /16 this pytest session holds (tests/conftest.py's fresh_cidr: a launcher must bind its service's port)."""
    require_services()
    db_url = f"{PG_SERVER}/calliope_ha_pool_{uuid.uuid4().hex[:10]}"
    spec = HaSpec(
        db_url=db_url,
        workdir=tmp_path_factory.mktemp("ha-pool") / "stack",
        ecs_args=["--mode", "process", "--throttle", "off", "--cidr", fresh_cidr(), "--stop-timeout", "5"],
        extra=[
            "c.ECSSpawner.poll_interval = 2",  # no events here: a warm task is seen RUNNING by a status sweep
            f"c.CalliopePool.pools = {{{POOL!r}: {{'min_idle': {IDLE}, 'max': {IDLE}}}}}",
            "c.CalliopePool.interval = 1",
            "c.OrphanSweep.interval = 1",
            "c.OrphanSweep.grace_period = 2",
            # A config that sets tornado_settings, as many do: JupyterHub reloads it after the takeover, which
            # once dropped the leader's lock from the settings, and the leader never swept nor filled a pool.
            "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}",
        ],
    )
    async with started(spec) as stack:
        yield stack


def running_by_pool_state(stack: HaStack) -> dict[str, set[str]]:
    """ARNs of tasks ECS runs and means to keep running, by their calliope:pool tag ('' for a cold server)."""
    client = ecs_client(stack)
    arns = client.list_tasks(cluster="calliope", desiredStatus="RUNNING")["taskArns"]
    found: dict[str, set[str]] = {"idle": set(), "claimed": set(), "": set()}
    described = client.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"] if arns else []
    for task in described:
        tags = {tag["key"]: tag["value"] for tag in task.get("tags", [])}
        if task["lastStatus"] == "RUNNING":
            found[tags.get("calliope:pool", "")].add(task["taskArn"])
    return found


def stopped_arns(stack: HaStack) -> list[str]:
    return list(ecs_client(stack).list_tasks(cluster="calliope", desiredStatus="STOPPED")["taskArns"])


async def leader_counts_idle(stack: HaStack, count: int) -> bool:
    """The serving hub's own gauge says `count` idle warm tasks (launchers answering "waiting")."""
    assert stack.api is not None
    answer = await stack.api.request("GET", "/../metrics")
    return answer.status == 200 and f'calliope_pool_tasks{{pool="{POOL}",state="idle"}} {float(count)}' in answer.text


async def claim_warm(stack: HaStack, user: str) -> str:
    """Spawn Chat for `user`; the server's task ARN once ready, which must be a claimed warm task."""
    assert stack.api is not None
    assert (await stack.api.request("POST", f"/users/{user}")).status == 201
    answer = await stack.api.request("POST", f"/users/{user}/server", CHAT)
    assert answer.status in (201, 202), answer.text
    model = await eventually(lambda: server_ready(stack.api, user), 90, f"{user}'s Chat ready")  # type: ignore[arg-type]
    return str(model["state"]["task_arn"])


async def answers_through_balancer(stack: HaStack, user: str) -> bool:
    """The user's stand-in server itself answers at /user/<name>/api/status through HAProxy and a proxy."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{stack.url}/user/{user}/api/status", allow_redirects=False) as answer,
    ):
        return answer.status == 200 and answer.content_type == "application/json"


async def list_tasks_calls(stack: HaStack) -> int:
    assert stack.ecs is not None
    stats: dict[str, Any] = await stack.ecs.stats()
    return sum(stats.get("calls", {}).get("ListTasks", {}).values())


async def test_failover_keeps_the_claimed_server_and_the_idle_pool_and_the_sweep_leaves_them(
    pool_ha_stack: HaStack,
) -> None:
    stack = pool_ha_stack
    old = await stack.wait_for_leader()
    standby = next(hub for hub in stack.hubs if hub is not old)
    await eventually(lambda: leader_counts_idle(stack, IDLE), 120, f"{IDLE} idle warm {POOL}")
    warm_before = running_by_pool_state(stack)["idle"]
    assert len(warm_before) == IDLE

    claimed = await claim_warm(stack, "ivy")
    assert claimed in warm_before, "ivy's server is a warm task"
    await eventually(lambda: leader_counts_idle(stack, IDLE), 120, "the pool refilled")
    before = await asyncio.to_thread(running_by_pool_state, stack)
    assert before["claimed"] == {claimed} and before[""] == set()
    assert len(before["idle"]) == IDLE and claimed not in before["idle"]

    old.kill()
    new = await stack.wait_for_leader(60, not_=old)
    assert new is standby
    await eventually(lambda: leader_counts_idle(stack, IDLE), 60, "the new leader counts the idle tasks")
    listed = await list_tasks_calls(stack)
    await asyncio.sleep(6)  # orphan sweeps every 1 s with a 2 s grace, pool rounds every 1 s
    assert await list_tasks_calls(stack) - listed >= 4, "the new leader's orphan sweep ran (ListTasks each time)"

    after = await asyncio.to_thread(running_by_pool_state, stack)
    assert after == before, "same claimed server, same idle tasks: none lost, none leaked, none swept"
    assert await asyncio.to_thread(stopped_arns, stack) == [], "nothing was stopped"
    model = await server_ready(stack.api, "ivy")  # type: ignore[arg-type]
    assert model is not None and model["state"]["task_arn"] == claimed
    assert await eventually(lambda: answers_through_balancer(stack, "ivy"), 20, "ivy's route")

    began = time.monotonic()
    adopted = await claim_warm(stack, "jay")
    assert adopted in before["idle"], "the new leader claimed a task the old one started"
    print(f"claim of an adopted warm task after the failover: ready in {time.monotonic() - began:.1f}s")
