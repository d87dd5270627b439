"""A real Calliope Hub: JupyterHub + configurable-http-proxy + ECSSpawner + local ECS.

Local ECS runs in process mode, so every server is a real jupyterhub-singleuser with
JupyterLab on its own loopback address.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.bootstrap import prepare_cluster
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import require_proxy

TOKEN = "calliope-e2e-admin-token"
PASSWORD = "e2e-password-1234"


@pytest.fixture(scope="session", autouse=True)
def scripts_on_path() -> Iterator[None]:
    """Process-mode tasks run `jupyterhub-singleuser` from this Python's environment."""
    saved = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved])
    yield
    os.environ["PATH"] = saved


def singleuser_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("jupyterhub-singleuser" in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


@dataclass
class Stack:
    hub: HubProcess
    api: HubApi
    ecs: object  # tests/conftest.py's LocalEcsHandle
    token: str = TOKEN

    @staticmethod
    def server_processes() -> list[psutil.Process]:
        return singleuser_processes()


@pytest.fixture
async def stack(local_ecs_factory, tmp_path: Path) -> AsyncIterator[Stack]:
    require_proxy()
    ecs = local_ecs_factory(mode="process", stop_timeout_s=5)
    client = await EcsApi.shared(EcsTarget("us-east-1", ecs.endpoint_url))
    await prepare_cluster(client, Catalog.load(), "calliope", local=True)
    await EcsApi.close_all()
    settings = HubSettings(
        ecs_endpoint=ecs.endpoint_url,
        user_password=PASSWORD,
        poll_interval=2,
        cleanup_servers=False,  # a restart must find its servers still running
        # Always 202, so every spawn's progress stream is followed to the end.
        extra=["c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"],
    )
    hub = HubProcess(render(settings) + api_token_config(TOKEN, "e2e"), workdir=tmp_path / "hub")
    await hub.start(timeout=120)
    api = HubApi(hub.url, TOKEN, max_retries=3)
    try:
        yield Stack(hub, api, ecs)
    finally:
        await api.close()
        await hub.stop()
        ecs.stop()
        leftovers = singleuser_processes()
        for process in leftovers:
            process.kill()
        assert not leftovers, f"servers outlived the stack: {leftovers}"
