"""`calliope-hub monitor` end to end: a real hub that runs no sweeps learns everything from it.

Local ECS (sim, in a thread) sends no events here; the monitor sweeps it and pushes the
changes to the hub's endpoint. The spawn only completes because the monitor pushed RUNNING,
and a killed task's server only ends because it pushed STOPPED (which the hub confirmed).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.taskdefs import prepare_cluster
from calliope_hub.events.monitor import Monitor
from calliope_hub.events.wire import DEFAULT_HEADER
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_gone, server_ready


async def test_a_hub_with_a_dotted_id_and_no_sweeps_follows_the_monitor(local_ecs_factory: Callable[..., Any]) -> None:
    require_proxy()
    ecs = local_ecs_factory()
    api = await EcsApi.create(EcsTarget("us-east-1", ecs.endpoint_url))
    await prepare_cluster(api, Catalog.load(), "calliope", local=True)
    secret, token = secrets.token_urlsafe(24), secrets.token_hex(16)
    settings = HubSettings(
        ecs_endpoint=ecs.endpoint_url, hub_id="prod.hub", events_secret=secret, events_sweeps="off",
        extra=[api_token_config(token)],
    )  # fmt: skip
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as hub_api:
        args = argparse.Namespace(
            hub_url=hub.url, secret=secret, header=DEFAULT_HEADER, region="us-east-1",
            cluster="calliope", hub_id="prod.hub", interval=0.2, sweeps=0,
        )  # fmt: skip
        async with aiohttp.ClientSession() as session:
            monitor = asyncio.create_task(Monitor(api, session, args).run())
            try:
                await hub_api.request("POST", "/users/mo")
                assert (await hub_api.request("POST", "/users/mo/server", {"user_options": {}})).status in (201, 202)
                server = await eventually(lambda: server_ready(hub_api, "mo"))
                task_id = server["state"]["task_arn"].rsplit("/", 1)[-1]
                assert ecs.kill(task_id)[0] == 202
                await eventually(lambda: server_gone(hub_api, "mo"))
            finally:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
        wrong = argparse.Namespace(**{**vars(args), "secret": "forged"})
        async with aiohttp.ClientSession() as session:
            with pytest.raises(RuntimeError, match="HTTP 401"):
                await Monitor(api, session, wrong)._push([{"source": "aws.ecs"}])
    await api.close()
