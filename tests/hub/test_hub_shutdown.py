"""A real JupyterHub (stock `python -m jupyterhub`) closes its HubRuntime when it shuts down.

The hub runs with everything the runtime owns switched on: events, an SQS consumer (moto's
SQS), the orphan sweep and EMF. After a spawn it gets SIGTERM, as systemd or ECS would send;
its log must show the runtime closing, and nothing Python reports about a client or a task
left behind.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import boto3

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_ready
from tests.spawner.conftest import prepare

LEFT_BEHIND = ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending", "Traceback")


async def test_sigterm_closes_the_runtime(local_ecs: Any, moto_ecs: str, tmp_path: Path) -> None:
    require_proxy()
    await prepare(local_ecs.endpoint_url)
    queue = boto3.client("sqs", endpoint_url=moto_ecs, region_name="us-east-1").create_queue(QueueName="hub-shutdown")
    token = secrets.token_hex(16)
    settings = HubSettings(
        ecs_endpoint=local_ecs.endpoint_url,
        poll_interval=1,
        events_secret=secrets.token_urlsafe(16),
        extra=[
            api_token_config(token),
            f"c.CalliopeEvents.sqs_queue_url = {queue['QueueUrl']!r}",
            f"c.CalliopeEvents.sqs_endpoint_url = {moto_ecs!r}",
            "c.OrphanSweep.interval = 0.5",
            "c.CloudWatchEmf.enabled = True",
            "c.CloudWatchEmf.path = 'emf.jsonl'",
        ],
    )
    hub = HubProcess(render(settings), workdir=tmp_path / "hub")
    await hub.start(timeout=120)
    try:
        async with HubApi(hub.url, token) as admin:
            assert (await admin.request("POST", "/users/zoe")).status == 201
            assert (await admin.request("POST", "/users/zoe/server", {"user_options": {}})).status in (201, 202)
            await eventually(lambda: server_ready(admin, "zoe"), 30, "ready")
    finally:
        await hub.stop()

    log = (tmp_path / "hub" / "jupyterhub.log").read_text()
    started = [line for line in log.splitlines() if "Calliope Hub runtime started" in line]
    assert started and queue["QueueUrl"] in started[0] and "orphan sweep stop" in started[0], log[-3000:]
    assert "Calliope Hub runtime closed" in log, log[-3000:]
    assert [line for line in log.splitlines() if any(s in line for s in LEFT_BEHIND)] == []
