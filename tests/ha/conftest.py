"""The HA stack for the HA tests: real PostgreSQL (a database of the test's own), local ECS in sim
mode, two configurable-http-proxy replicas, two HA JupyterHub processes and Debian's HAProxy."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from calliope_hub.tools.local.ha import HaSpec, HaStack, drop_database
from tests.hubtest import require_proxy

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"


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


@pytest.fixture
def db_url() -> Iterator[str]:
    """A database of this test's own (the stack creates it; the fixture drops it)."""
    require_services()
    url = f"{PG_SERVER}/calliope_ha_{uuid.uuid4().hex[:10]}"
    yield url
    drop_database(url)


@pytest.fixture
async def ha_stack(db_url: str, tmp_path: Path) -> AsyncIterator[HaStack]:
    """One HA stack; the spawns answer 202 at once so a test can catch them in flight."""
    spec = HaSpec(
        db_url=db_url,
        workdir=tmp_path / "stack",
        ecs_args=["--mode", "sim", "--throttle", "off", "--sim-provisioning", "3", "--sim-pending", "0.5"],
        extra=["c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"],
    )
    stack = HaStack(spec)
    await stack.start()
    try:
        await stack.wait_for_leader()
        yield stack
    finally:
        await stack.close()


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
