"""A real Calliope Hub: JupyterHub + configurable-http-proxy + ECSSpawner + local ECS.

Local ECS runs in process mode, so every server is a real jupyterhub-singleuser with
JupyterLab on its own loopback address.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings
from calliope_hub.tools.local.hubproc import HubProcess
from calliope_hub.tools.local.stack import LocalStack, RunningEcs, StackSpec
from tests.conftest import FAST_LOCAL_ECS, LocalEcsHandle, fresh_cidr
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


def singleuser_processes(markers: tuple[str, ...] = ("jupyterhub-singleuser",)) -> list[psutil.Process]:
    """This test's servers: local ECS runs in this process, so its tasks are our children
    (other people's hubs on this machine are not ours to count or kill)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(marker in part for part in process.cmdline() for marker in markers):
                found.append(process)
        except psutil.Error:
            continue
    return found


#: Every task process local ECS may start here: JupyterLab, and the Chat/WAIIDE stand-ins.
TASK_MARKERS = ("jupyterhub-singleuser", "calliope_hub.standins")


@dataclass
class Stack:
    hub: HubProcess
    api: HubApi
    ecs: object  # tests/conftest.py's LocalEcsHandle
    token: str = TOKEN

    @staticmethod
    def server_processes() -> list[psutil.Process]:
        return singleuser_processes()


@contextlib.asynccontextmanager
async def running_stack(local_ecs_factory, tmp_path: Path, extra: list[str]) -> AsyncIterator[Stack]:
    """The shared LocalStack on a local ECS run in this process, so tests can reach its
    control plane directly (stats, kill); `extra` config lines are appended last."""
    require_proxy()
    ecs = local_ecs_factory(mode="process", stop_timeout_s=5)
    settings = HubSettings(
        user_password=PASSWORD,
        poll_interval=2,
        cleanup_servers=False,  # a restart must find its servers still running
        # Always 202, so every spawn's progress stream is followed to the end.
        extra=["c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}", *extra],
    )
    spec = StackSpec(
        hub=settings, ecs=RunningEcs(ecs.endpoint_url), workdir=tmp_path, api_token=TOKEN, api_service="e2e"
    )
    local = LocalStack(spec)
    await local.start()
    try:
        assert local.hub is not None
        yield Stack(local.hub, local.api, ecs)
    finally:
        await local.close()
        ecs.stop()
        leftovers = singleuser_processes(TASK_MARKERS)
        for process in leftovers:
            process.kill()
        assert not leftovers, f"servers outlived the stack: {leftovers}"


@pytest.fixture
async def stack(local_ecs_factory, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(local_ecs_factory, tmp_path, []) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for a module whose tests each use users of their own and leave no server running
    (their module runs on the module's event loop): a stack costs 5-12 s to start on a loaded machine."""
    handles: list[LocalEcsHandle] = []

    def make(**fields: object) -> LocalEcsHandle:
        handles.append(LocalEcsHandle(replace(FAST_LOCAL_ECS, cidr=fresh_cidr(), **fields)))
        return handles[-1]

    try:
        async with running_stack(make, tmp_path_factory.mktemp("stack"), []) as running:
            yield running
    finally:
        for handle in handles:
            handle.stop()


@pytest.fixture
async def named_stack(local_ecs_factory, tmp_path: Path) -> AsyncIterator[Stack]:
    """The same stack with named servers on, so one user runs Lab, Chat and WAIIDE side by side."""
    async with running_stack(local_ecs_factory, tmp_path, ["c.JupyterHub.allow_named_servers = True"]) as running:
        yield running
