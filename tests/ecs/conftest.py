"""Fixtures for the ecs tests: EcsApi on moto, and a scripted ECS with a clock for the watcher."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import pytest

from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.status import TaskWatcher
from tests.ecs.scripted import CLUSTER, Clock, ScriptedEcs

REGION = "us-east-1"
_clusters = itertools.count()


@pytest.fixture
def moto_target(moto_ecs: str) -> EcsTarget:
    return EcsTarget(region=REGION, endpoint_url=moto_ecs)


@pytest.fixture
async def moto_api(moto_target: EcsTarget) -> AsyncIterator[EcsApi]:
    api = await EcsApi.create(moto_target, max_attempts=1)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def any_api(ecs_endpoint: str) -> AsyncIterator[EcsApi]:
    """An EcsApi on each ECS implementation in turn (local ECS, then moto)."""
    api = await EcsApi.create(EcsTarget(region=REGION, endpoint_url=ecs_endpoint), max_attempts=1)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def network(request: pytest.FixtureRequest, ecs_endpoint: str) -> dict[str, Any]:
    """awsvpc on the default VPC: moto checks that subnet and group exist, local ECS takes any."""
    subnet, group = "subnet-12345678", "sg-12345678"
    if request.node.callspec.params["ecs_endpoint"] == "moto":
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ecs_endpoint)  # test set-up only
        subnet = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0][
            "SubnetId"
        ]
        group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    return {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}}


@pytest.fixture
def cluster_name() -> str:
    """A cluster of this test's own: moto's state lives as long as the session."""
    return f"calliope-api-{next(_clusters)}"


@pytest.fixture
def ecs(clock: Clock) -> ScriptedEcs:
    """ECS played by the test, stamping each DescribeTasks with the virtual time it was made at."""
    return ScriptedEcs(clock)


@pytest.fixture
async def watchers(ecs: ScriptedEcs, clock: Clock) -> AsyncIterator[Callable[..., TaskWatcher]]:
    """`watchers(**options)`: TaskWatchers on the scripted ECS and the virtual clock, closed at teardown."""
    made: list[TaskWatcher] = []

    def make(**options: Any) -> TaskWatcher:
        made.append(TaskWatcher(ecs, CLUSTER, clock=clock, sleep=clock.sleep, **options))
        return made[-1]

    yield make
    for watcher in made:
        await watcher.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()
