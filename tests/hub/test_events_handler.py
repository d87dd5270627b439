"""The events endpoint in a real JupyterHub, fed by local ECS's EventBridge-style sink.

Local ECS (sim, in a thread) POSTs every task state change to the hub, each one twice and
shuffled (`event_duplicate=1.0`, `event_reorder=True`). The hub's own sweeps are an hour
apart, so only events (and their confirm) can tell it that a task died.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import boto3
import pytest

from calliope_hub.events.wire import DEFAULT_HEADER, SCOPE
from calliope_hub.localecs.events import task_state_change_event
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config, free_port
from tests.hubtest import eventually, require_proxy, server_ready
from tests.spawner.conftest import prepare

ROUTE = "/hub/api/calliope/ecs-events"


@dataclass
class EventsStack:
    hub: HubProcess
    ecs: Any  # tests/conftest.py LocalEcsHandle
    admin: HubApi
    secret: str
    sender_token: str

    @property
    def url(self) -> str:
        return self.hub.url + ROUTE

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, data=data, headers=headers or {}) as answer,
        ):
            return answer.status, await answer.text()

    def signed(self) -> dict[str, str]:
        return {DEFAULT_HEADER: self.secret, "Content-Type": "application/json"}

    def task_of_running_server(self) -> dict[str, Any]:
        ecs = boto3.client("ecs", region_name="us-east-1", endpoint_url=self.ecs.endpoint_url)  # test set-up only
        arns = ecs.list_tasks(cluster="calliope")["taskArns"]
        assert len(arns) == 1
        task = ecs.describe_tasks(cluster="calliope", tasks=arns)["tasks"][0]
        return json.loads(json.dumps(task, default=lambda moment: moment.timestamp()))  # the wire's epochs

    async def server_running(self, user: str) -> bool:
        return bool(await server_ready(self.admin, user))

    async def metric(self, outcome: str) -> float:
        text = (await self.admin.request("GET", "/../metrics")).text
        line = f'calliope_ecs_events_total{{outcome="{outcome}"}} '
        return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


@pytest.fixture
async def stack(local_ecs_factory: Callable[..., Any]) -> AsyncIterator[EventsStack]:
    require_proxy()
    port, secret, admin_token, sender_token = (
        free_port(),
        secrets.token_urlsafe(24),
        secrets.token_hex(16),
        secrets.token_hex(16),
    )
    ecs = local_ecs_factory(
        events_url=f"http://127.0.0.1:{port}{ROUTE}",
        events_header=(DEFAULT_HEADER, secret),
        event_duplicate=1.0,
        event_reorder=True,
    )
    await prepare(ecs.endpoint_url)
    sender = [
        f"c.JupyterHub.services.append({{'name': 'events-sender', 'api_token': {sender_token!r}}})",
        "c.JupyterHub.load_roles.append("
        f"{{'name': 'events-sender', 'scopes': [{SCOPE!r}], 'services': ['events-sender']}})",
    ]
    settings = HubSettings(
        ecs_endpoint=ecs.endpoint_url, poll_interval=3600, events_secret=secret,
        extra=[api_token_config(admin_token), *sender],
    )  # fmt: skip
    async with HubProcess(render(settings), port=port) as hub:
        admin = HubApi(hub.url, admin_token)
        try:
            yield EventsStack(hub, ecs, admin, secret, sender_token)
        finally:
            await admin.close()


async def spawn(stack: EventsStack, user: str) -> None:
    assert (await stack.admin.request("POST", f"/users/{user}")).status in (201, 409)
    assert (await stack.admin.request("POST", f"/users/{user}/server", {"user_options": {}})).status in (201, 202)
    await eventually(lambda: stack.server_running(user))


async def test_the_endpoint_guards_state_and_events_end_a_dead_server(stack: EventsStack) -> None:
    await spawn(stack, "ann")
    task = stack.task_of_running_server()
    forged = task_state_change_event(
        {**task, "lastStatus": "STOPPED", "desiredStatus": "STOPPED", "version": task["version"] + 50},
        region="us-east-1", account="000000000000",
    )  # fmt: skip
    json_only = {"Content-Type": "application/json"}
    assert (await stack.post(forged, json_only))[0] == 401
    assert (await stack.post(forged, {**json_only, DEFAULT_HEADER: stack.secret + "x"}))[0] == 401
    assert (await stack.post(b"{not json", stack.signed()))[0] == 400
    status, body = await stack.post({**forged, "source": "aws.ec2"}, stack.signed())
    assert status == 202 and json.loads(body) == {"accepted": 0, "ignored": 1}
    other_source = {"source": "my.app", "detail-type": "x", "detail": {}}
    scoped = {"Authorization": f"token {stack.sender_token}", "Content-Type": "application/json"}
    assert (await stack.post(other_source, scoped))[0] == 202  # a token with the events scope
    assert (await stack.admin.request("POST", "/calliope/ecs-events", other_source)).status == 403  # without

    refuted = await stack.metric("refuted")
    assert (await stack.post([forged, forged], stack.signed()))[0] == 202  # right secret, false claim
    await eventually(lambda: _grew(stack, "refuted", refuted))
    assert await stack.server_running("ann")

    judged = await _judged(stack)
    status, _ = stack.ecs.kill(task["taskArn"].rsplit("/", 1)[-1])
    assert status == 202
    await eventually(lambda: _not(stack.server_running("ann")), seconds=10)
    assert await stack.metric("confirmed") >= 1
    assert await _judged(stack) >= judged + 2  # the STOPPED event and its duplicate both reached the watcher


async def _judged(stack: EventsStack) -> float:
    """Events that reached a watcher (events are hints: a duplicate is judged, never stored)."""
    return sum([await stack.metric(o) for o in ("confirming", "hint", "stale", "implausible", "ignored")])


async def _grew(stack: EventsStack, outcome: str, before: float) -> bool:
    return await stack.metric(outcome) > before


async def _not(check: Any) -> bool:
    return not await check
