"""The HA stack for the HA tests: real PostgreSQL (a database of the module's own), local ECS in sim
mode, two configurable-http-proxy replicas, two HA JupyterHub processes and Debian's HAProxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
import pytest_asyncio

from calliope_hub.tools.local.ha import HaSpec, HaStack, drop_database
from tests.hubtest import eventually, require_proxy

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
#: CALLIOPE_HA_FULL_SCALE=1: the leader kill at the issue's own 200 running and 20 in flight
FULL_SCALE = os.environ.get("CALLIOPE_HA_FULL_SCALE") == "1"
#: seconds a spawn stays in flight (provisioning): long enough to kill the leader in the middle of 20 of them
SIM_PROVISIONING = "30" if FULL_SCALE else "3"


def require(condition: bool, why: str) -> None:
    """Skip locally, fail on CI (CI=true), when a service the test needs is missing."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def require_services() -> None:
    import psycopg2

    require_proxy()
    require(shutil.which("haproxy") is not None or Path("/usr/sbin/haproxy").exists(), "no haproxy: `make haproxy`")
    try:
        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        require(False, f"no PostgreSQL at 127.0.0.1:5432: {e}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_ha_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HaStack]:
    """One HA stack for a test module, on a database of its own (dropped after); the spawns answer 202
    at once so a test can catch them in flight. A stack costs ~30 s to start on a loaded 2-core machine,
    and each test only needs two hubs (one leading) and two proxies: `ha_stack` restores that. Module,
    not package, scope: tests/ is no Python package, so a package fixture here would live all session."""
    require_services()
    db_url = f"{PG_SERVER}/calliope_ha_{uuid.uuid4().hex[:10]}"
    spec = HaSpec(
        db_url=db_url,
        workdir=tmp_path_factory.mktemp("ha") / "stack",
        ecs_args=["--mode", "sim", "--throttle", "off", "--sim-provisioning", SIM_PROVISIONING, "--sim-pending", "0.5"],
        extra=["c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"],
    )
    async with started(spec) as stack:
        yield stack


@contextlib.asynccontextmanager
async def started(spec: HaSpec) -> AsyncIterator[HaStack]:
    """An HA stack on a database of its own: closed, and the database dropped, however the test ends."""
    stack = HaStack(spec)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.close()
        drop_database(spec.db_url)


@pytest_asyncio.fixture(loop_scope="module")
async def ha_stack(shared_ha_stack: HaStack) -> HaStack:
    """The module's stack as each test expects it: both proxies and both hubs running, one of them the
    leader and the other standing by. A test that killed or fenced a hub or a proxy had it started again
    here (same ports, same config), as an operator's supervisor would; servers of earlier tests keep running."""
    stack = shared_ha_stack
    for proxy in stack.proxies:
        if proxy.pid is None:  # killed
            await proxy.start()
    for hub in stack.hubs:
        if hub.pid is None or hub.exit_code() is not None:  # killed, or fenced (it exits by itself)
            await hub.start()  # back once its /leader answers: standing by, or leading
    await stack.wait_for_leader()
    await eventually(lambda: api_answers(stack), 30, "the hub API through the balancer")  # HAProxy saw it too
    return stack


async def api_answers(stack: HaStack) -> bool:
    """The hub API answers through HAProxy (a 503 while the balancer has no healthy hub yet)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        try:
            async with session.get(f"{stack.url}/hub/api/") as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


class LeaderProbe:
    """Asks every hub's /leader every 50 ms and keeps the answers: who led at each moment."""

    def __init__(self, stack: HaStack):
        self.stack = stack
        self.rounds: list[tuple[float, list[str]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            leaders = [hub.name for hub in await self.stack.leaders()]
            self.rounds.append((time.monotonic(), leaders))
            await asyncio.sleep(0.05)

    def __enter__(self) -> LeaderProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def most_at_once(self) -> int:
        return max((len(leaders) for _, leaders in self.rounds), default=0)

    def first_led_by(self, name: str) -> float | None:
        return next((t for t, leaders in self.rounds if name in leaders), None)


def ecs_client(stack: HaStack) -> Any:
    return boto3.client(
        "ecs",
        endpoint_url=stack.ecs_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def running_task_arns(stack: HaStack) -> set[str]:
    """Tasks ECS still means to run (desiredStatus RUNNING): a stopped or stopping task is not one."""
    client, arns, token = ecs_client(stack), set(), ""
    while True:
        page = client.list_tasks(cluster="calliope", desiredStatus="RUNNING", **({"nextToken": token} if token else {}))
        arns.update(page["taskArns"])
        token = page.get("nextToken", "")
        if not token:
            return arns
