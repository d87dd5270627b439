"""An ECSSpawner wired to a real ECS endpoint (local ECS or moto), without a whole hub.

The hub-side objects the spawner reads (user, hub, orm_spawner) are the real JupyterHub
classes where they are cheap, so `get_env()` and state handling run as in a hub.
"""

from __future__ import annotations

import datetime
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from jupyterhub.objects import Hub

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.bootstrap import prepare_cluster
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.spawner import ECSSpawner


class FakeDb:
    """The spawner commits its task ARN as soon as RunTask answers; count the commits."""

    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


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


async def spawner_maker(endpoint_url: str, **network: Any) -> Callable[..., ECSSpawner]:
    """`make(name, **config)` for spawners on a prepared cluster at `endpoint_url`."""
    api = await EcsApi.shared(EcsTarget("us-east-1", endpoint_url))
    await prepare_cluster(api, Catalog.load(), "calliope", local=True)

    def make(name: str = "alice", **config: Any) -> ECSSpawner:
        user = SimpleNamespace(name=name, escaped_name=name, url=f"/user/{name}/")
        orm_spawner = SimpleNamespace(
            name="", state=None, server=None, started=datetime.datetime.now(datetime.timezone.utc)
        )
        config.setdefault("poll_interval", 1)
        return ECSSpawner(
            user=user,
            hub=Hub(),
            db=FakeDb(),
            orm_spawner=orm_spawner,
            endpoint_url=endpoint_url,
            start_timeout=30,
            stop_wait_timeout=30,
            **network,
            **config,
        )

    return make


@pytest.fixture
async def spawner_factory(
    ecs_endpoint: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., ECSSpawner]]:
    """Spawners on local ECS (sim) and on moto, in turn."""
    network = {}
    if request.node.callspec.params["ecs_endpoint"] == "moto":
        network = moto_default_network(ecs_endpoint)
        hold_moto_tasks_running(ecs_endpoint)
    yield await spawner_maker(ecs_endpoint, **network)
    await TaskWatcher.close_all()
    await EcsApi.close_all()


@pytest.fixture
async def spawners_on() -> AsyncIterator[Callable[..., Any]]:
    """`await spawners_on(endpoint_url)`: a spawner maker for a local ECS of the test's own."""
    yield spawner_maker
    await TaskWatcher.close_all()
    await EcsApi.close_all()
