"""Local ECS publishes one "ECS Task State Change" per transition to its configured sink.

(The sink itself, with its retries, is tested in test_events.py by its author.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiobotocore.session import get_session
from aiohttp import web

from calliope_hub.localecs import LocalEcs, LocalEcsConfig
from calliope_hub.localecs.model import LIFECYCLE

NETWORK = {"awsvpcConfiguration": {"subnets": ["subnet-1"]}}


class Receiver:
    """A tiny EventBridge API destination: records every event it is sent."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.headers: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.events.append(await request.json())
        self.headers.append(request.headers.get("X-Hub-Token"))
        return web.Response(text="ok")

    def versions(self, arn: str) -> list[tuple[int, str]]:
        return [(e["detail"]["version"], e["detail"]["lastStatus"]) for e in self.events if e["resources"] == [arn]]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield receiver, f"http://127.0.0.1:{port}/events"
    await runner.cleanup()


async def run_one_task_to_stopped(url: str, cidr: str, **fields) -> tuple[LocalEcs, str]:
    server = LocalEcs(
        LocalEcsConfig(
            port=0,
            throttle="off",
            cidr=cidr,
            sim_provisioning_s=0.01,
            sim_pending_s=0.02,
            events_url=url,
            events_header=("X-Hub-Token", "secret"),
            **fields,
        )
    )
    endpoint = await server.start()
    session = get_session()
    async with session.create_client("ecs", endpoint_url=endpoint, region_name="us-east-1") as ecs:
        await ecs.register_task_definition(
            family="lab",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="256",
            memory="512",
            containerDefinitions=[{"name": "lab", "image": "lab"}],
        )
        arn = (await ecs.run_task(taskDefinition="lab", networkConfiguration=NETWORK))["tasks"][0]["taskArn"]
        for _ in range(200):
            if (await ecs.describe_tasks(tasks=[arn]))["tasks"][0]["lastStatus"] == "RUNNING":
                break
            await asyncio.sleep(0.01)
        await ecs.stop_task(task=arn, reason="done")
    return server, arn


async def wait_for_events(receiver: Receiver, arn: str, count: int) -> None:
    for _ in range(500):
        if len({v for v, _ in receiver.versions(arn)}) >= count:
            return
        await asyncio.sleep(0.01)


async def test_one_event_per_transition_with_rising_version(receiver, task_cidr):
    sink, url = receiver
    server, arn = await run_one_task_to_stopped(url, task_cidr)
    await wait_for_events(sink, arn, len(LIFECYCLE))
    await server.stop()
    assert sink.versions(arn) == [(version, status) for version, status in enumerate(LIFECYCLE, start=1)]
    last = sink.events[-1]
    assert last["detail-type"] == "ECS Task State Change" and last["source"] == "aws.ecs"
    assert last["detail"]["stopCode"] == "UserInitiated" and last["detail"]["stoppedReason"] == "done"
    assert isinstance(last["detail"]["stoppedAt"], str)  # ISO in events, epoch in DescribeTasks
    assert set(sink.headers) == {"secret"}


async def test_duplicated_and_reordered_events_all_arrive(receiver, task_cidr):
    sink, url = receiver
    server, arn = await run_one_task_to_stopped(url, task_cidr, event_duplicate=0.5, event_reorder=True)
    await wait_for_events(sink, arn, len(LIFECYCLE))
    await server.stop()
    seen = sink.versions(arn)
    assert sorted(set(seen)) == [(version, status) for version, status in enumerate(LIFECYCLE, start=1)]
    assert len(seen) >= len(LIFECYCLE)
