"""An ECSSpawner wired to a real ECS endpoint (local ECS or moto), without a whole hub.

The hub-side objects the spawner reads (user, hub, orm_spawner) are the real JupyterHub
classes where they are cheap, so `get_env()` and state handling run as in a hub. The user's
`settings` dict stands for the hub's tornado settings: the spawners of one maker share it,
and so share one HubRuntime, as the spawners of one hub do.
"""

from __future__ import annotations

import datetime
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from sqlalchemy import event

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.taskdefs import prepare_cluster
from calliope_hub.hub.runtime import SETTINGS_KEY, HubRuntime
from calliope_hub.spawner import ECSSpawner


class HubDatabase:
    """JupyterHub's own tables in SQLite: the spawner commits its task ARN through the row's session."""

    def __init__(self) -> None:
        self.session = orm.new_session_factory("sqlite://")()
        self.commits = 0
        event.listen(self.session, "after_commit", self._count)

    def _count(self, _session: Any) -> None:
        self.commits += 1

    def spawner_row(self, user: str) -> orm.Spawner:
        orm_user = self.session.query(orm.User).filter_by(name=user).one_or_none() or orm.User(name=user)
        row = orm.Spawner(name="", user=orm_user, started=datetime.datetime.now(datetime.UTC))
        self.session.add(row)
        self.session.flush()
        return row


def moto_default_network(endpoint_url: str) -> dict[str, list[str]]:
    """moto wants a real subnet and security group of its default VPC."""
    ec2 = boto3.client("ec2", endpoint_url=endpoint_url, region_name="us-east-1")
    return {
        "subnets": [ec2.describe_subnets()["Subnets"][0]["SubnetId"]],
        "security_groups": [ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]],
    }


def hold_moto_tasks_running(endpoint_url: str) -> None:
    """moto moves a task one lifecycle step per DescribeTasks by default; real tasks stay RUNNING."""
    body = {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/state-manager/set-transition",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201


class SpawnerMaker:
    """`make(name, **config)`: spawners of one pretend hub on a prepared cluster at `endpoint_url`."""

    def __init__(self, endpoint_url: str, spawner_class: type[ECSSpawner] = ECSSpawner, **network: Any):
        self.endpoint_url = endpoint_url
        self.spawner_class = spawner_class
        self.network = network
        self.hub_settings: dict[str, Any] = {}
        self.database = HubDatabase()

    @property
    def runtime(self) -> HubRuntime | None:
        runtime: HubRuntime | None = self.hub_settings.get(SETTINGS_KEY)
        return runtime

    async def close(self) -> None:
        """What the hub's shutdown does: close the runtime."""
        if self.runtime is not None:
            await self.runtime.close()

    def __call__(self, name: str = "alice", **config: Any) -> ECSSpawner:
        user = SimpleNamespace(name=name, escaped_name=name, url=f"/user/{name}/", settings=self.hub_settings)
        config.setdefault("poll_interval", 1)
        return self.spawner_class(
            user=user,
            hub=Hub(),
            orm_spawner=self.database.spawner_row(name),
            endpoint_url=self.endpoint_url,
            start_timeout=30,
            stop_wait_timeout=30,
            **self.network,
            **config,
        )


async def prepare(endpoint_url: str) -> None:
    api = await EcsApi.create(EcsTarget("us-east-1", endpoint_url))
    try:
        await prepare_cluster(api, Catalog.load(), "calliope", local=True)
    finally:
        await api.close()


@pytest.fixture
async def spawner_factory(ecs_endpoint: str, request: pytest.FixtureRequest) -> AsyncIterator[SpawnerMaker]:
    """Spawners on local ECS (sim) and on moto, in turn."""
    network = {}
    if request.node.callspec.params["ecs_endpoint"] == "moto":
        network = moto_default_network(ecs_endpoint)
        hold_moto_tasks_running(ecs_endpoint)
    await prepare(ecs_endpoint)
    maker = SpawnerMaker(ecs_endpoint, **network)
    yield maker
    await maker.close()


@pytest.fixture
async def spawners_on() -> AsyncIterator[Callable[..., Awaitable[SpawnerMaker]]]:
    """`await spawners_on(endpoint_url, spawner_class=...)`: a maker for a local ECS of the test's own."""
    makers: list[SpawnerMaker] = []

    async def make(endpoint_url: str, spawner_class: type[ECSSpawner] = ECSSpawner) -> SpawnerMaker:
        await prepare(endpoint_url)
        makers.append(SpawnerMaker(endpoint_url, spawner_class))
        return makers[-1]

    yield make
    for maker in makers:
        await maker.close()
