"""Proxy loss: two configurable-http-proxy replicas kept in step by CHPReplicas, behind HAProxy."""

from __future__ import annotations

import asyncio
import time

import pytest

from calliope_hub.tools.local.ha import HaStack
from tests.ha.test_failover import answers_through_balancer, servers, spawn
from tests.hubtest import eventually

USERS = ["pa", "pb", "pc"]
pytestmark = pytest.mark.asyncio(loop_scope="module")  # the module's one HA stack (conftest)


async def user_routes(stack: HaStack, i: int) -> set[str]:
    return {path for path in await stack.proxies[i].routes() if path.startswith("/user/")}


async def test_one_replica_down_routes_answer_spawns_go_on_and_it_is_repaired(ha_stack: HaStack) -> None:
    stack = ha_stack
    await asyncio.gather(*(spawn(stack, name) for name in USERS))

    async def ready(names: list[str]) -> bool:
        return all(s.get("ready") for s in (await servers(stack, names)).values())

    await eventually(lambda: ready(USERS), 60, "servers ready")
    expected = {f"/user/{name}" for name in USERS}
    # Earlier tests' servers run on the shared stack too: both replicas hold the same table, ours included.
    assert await user_routes(stack, 0) == await user_routes(stack, 1)
    assert expected <= await user_routes(stack, 1)

    stack.proxies[0].kill()
    for _ in range(5):  # every request, not just one lucky one, reaches a server through the other replica
        for name in USERS:
            assert await eventually(lambda name=name: answers_through_balancer(stack, name), 3, f"{name} via chp-1")

    # A spawn while a replica is down is not held up by it, and is routed by the replica that is up.
    began = time.monotonic()
    await spawn(stack, "pd")
    await eventually(lambda: ready(["pd"]), 30, "pd ready with a replica down")
    assert time.monotonic() - began < 20
    assert await eventually(lambda: answers_through_balancer(stack, "pd"), 5, "pd's route")

    await stack.proxies[0].start()  # same ports, empty table
    restarted = time.monotonic()
    everything = {*expected, "/user/pd"}
    await eventually(lambda: _repaired(stack, everything), 10, "chp-0 repaired")
    repaired_after = time.monotonic() - restarted
    assert repaired_after <= stack.spec.proxy_check_interval + 1.5, repaired_after
    assert "/" in await stack.proxies[0].routes(), "the hub's route too"


async def _repaired(stack: HaStack, ours: set[str]) -> bool:
    """chp-0 holds every route chp-1 does (earlier tests' servers too), ours among them."""
    routes = await user_routes(stack, 0)
    return ours <= routes and routes == await user_routes(stack, 1)
