"""Fixtures for the ECS client and watcher tests: moto's ECS server on a free loopback port."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from moto.server import ThreadedMotoServer

from calliope_hub.ecs.api import EcsApi, EcsTarget

REGION = "us-east-1"
_clusters = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's ECS (a second, independent ECS implementation), shared by the session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_target(moto_endpoint: str) -> EcsTarget:
    return EcsTarget(region=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
async def moto_api(moto_target: EcsTarget) -> AsyncIterator[EcsApi]:
    api = await EcsApi.create(moto_target, max_attempts=1)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def cluster_name() -> str:
    """A cluster of this test's own: moto's state lives as long as the session."""
    return f"calliope-test-{next(_clusters)}"
