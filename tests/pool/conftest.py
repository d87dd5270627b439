"""A pool keeper on local ECS in process mode: real launchers, real stand-in servers, real SSM secrets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from calliope_hub.catalog import Catalog, Placement, TaskIdentity, load_catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget, aws_client
from calliope_hub.ecs.secrets import SecretStore
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.ecs.taskdefs import TaskDefinitions
from calliope_hub.pool.config import PoolSettings, PoolSpec
from calliope_hub.pool.keeper import WAITING, PoolKeeper, PoolParts

HUB_ID = "pooltest"
CLUSTER = "calliope"
MASTER = b"the hub's cookie secret, 32 byt."
CHAT_SMALL = PoolSpec("chat", "small", min_idle=1, max=2, max_idle_age=3600)


@dataclass
class PoolRig:
    """What a pool test drives: local ECS, the hub's clients, and keepers built on them."""

    local: Any  # tests.conftest.LocalEcsHandle
    api: EcsApi
    watcher: TaskWatcher
    parts: PoolParts
    catalog: Catalog
    keepers: list[PoolKeeper]
    watchers: list[TaskWatcher]

    def keeper(self, *pools: PoolSpec, **settings: Any) -> PoolKeeper:
        defaults: dict[str, Any] = {"interval": 0.5, "claim_timeout": 3.0, "refill_rate": 5.0}
        chosen = PoolSettings(pools or (CHAT_SMALL,), **{**defaults, **settings})
        keeper = PoolKeeper(self.parts, chosen, master=MASTER, suspect_grace=0.5)
        self.keepers.append(keeper)
        return keeper

    def fresh_watcher(self) -> PoolRig:
        """The same ECS and clients, a new watcher: what a restarted hub has."""
        watcher = TaskWatcher(self.api, CLUSTER, sweep_interval=2.0, busy_interval=0.2)
        self.watchers.append(watcher)
        return replace(self, watcher=watcher, parts=replace(self.parts, watcher=watcher))


async def eventually(check: Callable[[], Awaitable[Any] | Any], timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def hub_counts_idle(stack: Any, pool: str, count: int, timeout: float = 120) -> None:
    """Wait for the hub's own gauge: `count` idle warm tasks of `pool`, their launchers answering."""
    import aiohttp

    sample = f'calliope_pool_tasks{{pool="{pool}",state="idle"}} {float(count)}'

    async def counted() -> bool:
        headers = {"Authorization": f"token {stack.token}"}
        async with aiohttp.ClientSession() as http, http.get(f"{stack.hub.url}/hub/metrics", headers=headers) as answer:
            return sample in await answer.text()

    await eventually(counted, timeout, f"the hub counts {count} idle warm {pool}")


async def filled(keeper: PoolKeeper, pool: PoolSpec, idle: int, timeout: float = 60) -> None:
    """Fill rounds until `idle` tasks of `pool` are idle (launchers answering)."""

    async def round_done() -> bool:
        await keeper.fill_once()
        return len(keeper.tasks(pool, WAITING)) >= idle

    await eventually(round_done, timeout, f"{idle} idle warm task(s) of {pool.name}")


def identity(user: str, server: str = "") -> TaskIdentity:
    return TaskIdentity(hub_id=HUB_ID, user=user, server_name=server, service="chat", size="small", attempt=1)


def user_environment(user: str, port: int = 8000) -> dict[str, str]:
    """What JupyterHub's get_env() gives a server (the parts the stand-in reads)."""
    prefix = f"/user/{user}/"
    return {
        "JUPYTERHUB_API_TOKEN": f"token-of-{user}-0123456789abcdef",
        "JUPYTERHUB_USER": user,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{port}{prefix}",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": f"http://127.0.0.1:1/hub/api/users/{user}/activity",
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
    }


@pytest.fixture
async def rig(local_ecs_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PoolRig]:
    # process mode runs the stand-in's `python -m ...` from local ECS's PATH
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    local = local_ecs_factory(mode="process")  # task addresses: fresh_cidr(), a /16 this session holds
    target = EcsTarget(region="us-east-1", endpoint_url=local.endpoint_url)
    api = await EcsApi.create(target, max_attempts=2)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(api.close)
        await api.ensure_cluster(CLUSTER)
        ssm = await stack.enter_async_context(aws_client("ssm", target))
        watcher = TaskWatcher(api, CLUSTER, sweep_interval=2.0, busy_interval=0.2)
        catalog = load_catalog(None)
        parts = PoolParts(
            api=api,
            watcher=watcher,
            catalog=catalog,
            definitions=TaskDefinitions(api),
            secrets=SecretStore(ssm),
            placement=Placement(cluster=CLUSTER, subnets=("subnet-local",)),
            hub_id=HUB_ID,
            secret_root="/calliope",
            local=True,
        )
        rig = PoolRig(local, api, watcher, parts, catalog, [], [watcher])
        try:
            yield rig
        finally:
            for keeper in rig.keepers:
                await keeper.close()
            for each in rig.watchers:
                await each.close()
