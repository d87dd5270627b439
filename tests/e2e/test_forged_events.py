"""Forged events on the real stack: a real JupyterHub + configurable-http-proxy + local ECS (sim), events on.

A forger here holds the events secret (the worst case: a leaked EventBridge connection key), so
every forged event is accepted by the endpoint and reaches the watcher. Events are hints
(DESIGN.md invariant 9): whatever a forged event claims, only ECS's own answer may route a
server, end it, or keep the hub looking. Local ECS sends every genuine event twice and shuffled,
and the hub's own sweeps are an hour apart, so only events (and the DescribeTasks they prompt)
tell the hub anything. One hub serves the whole module, to keep it well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import pytest_asyncio

from calliope_hub.ecs.identity import read_tags
from calliope_hub.ecsfacts import task_state_change_event
from calliope_hub.events.wire import DEFAULT_HEADER
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config, free_port
from tests.conftest import FAST_LOCAL_ECS, LocalEcsHandle, fresh_cidr
from tests.hub.test_events_handler import ROUTE, EventsStack, post_blocking
from tests.hubtest import eventually, require_proxy, server_gone, server_model, server_ready
from tests.spawner.conftest import prepare

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: how long a spawn stays PENDING in local ECS: the window a forger aims at
PENDING_S = 3.0


#: a spawn request answers 202 at once, so a test can act while the task is PENDING
ANSWER_AT_ONCE = "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[EventsStack]:
    require_proxy()
    port, secret, admin_token = free_port(), secrets.token_urlsafe(24), secrets.token_hex(16)
    ecs = LocalEcsHandle(
        replace(
            FAST_LOCAL_ECS,
            cidr=fresh_cidr(),
            sim_pending_s=PENDING_S,
            events_url=f"http://127.0.0.1:{port}{ROUTE}",
            events_header=(DEFAULT_HEADER, secret),
            event_duplicate=1.0,
            event_reorder=True,
        )
    )
    try:
        await prepare(ecs.endpoint_url)
        proxy_reader = (
            "c.JupyterHub.load_roles.append({'name': 'proxy-reader', 'scopes': ['proxy'], 'services': ['loadtest']})"
        )
        settings = HubSettings(
            ecs_endpoint=ecs.endpoint_url, poll_interval=3600, events_secret=secret,
            extra=[api_token_config(admin_token), proxy_reader, ANSWER_AT_ONCE],
        )  # fmt: skip
        async with HubProcess(render(settings), port=port) as hub:
            admin = HubApi(hub.url, admin_token)
            try:
                yield EventsStack(hub, ecs, admin, secret, sender_token="")
            finally:
                await admin.close()
    finally:
        ecs.stop()


def ecs_client(stack: EventsStack) -> Any:
    return boto3.client("ecs", region_name="us-east-1", endpoint_url=stack.ecs.endpoint_url)  # test set-up only


def task_of(stack: EventsStack, user: str) -> dict[str, Any]:
    """The user's live task as ECS describes it, with the wire's epoch numbers."""
    ecs = ecs_client(stack)
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    tasks = ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"] if arns else []
    mine = [t for t in tasks if read_tags(t.get("tags", [])).get("user") == user]
    assert len(mine) == 1, mine
    return json.loads(json.dumps(mine[0], default=lambda moment: moment.timestamp()))


def task_ip(task: dict[str, Any]) -> str:
    return next(c["networkInterfaces"][0]["privateIpv4Address"] for c in task["containers"])


def forged(task: dict[str, Any], **change: Any) -> dict[str, Any]:
    """An EventBridge event for `task` with `change` applied, sent with the real secret."""
    detail = {**task, **change}
    if "ip" in change:
        detail.pop("ip")
        detail["containers"] = [
            {**c, "networkInterfaces": [{"privateIpv4Address": change["ip"]}]} for c in task["containers"]
        ]
        detail["attachments"] = [
            {"type": "ElasticNetworkInterface", "status": "ATTACHED",
             "details": [{"name": "privateIPv4Address", "value": change["ip"]}]}
        ]  # fmt: skip
    return task_state_change_event(detail, region="us-east-1", account="000000000000")


async def send(stack: EventsStack, *events: dict[str, Any]) -> None:
    """POST the events with the real secret, and wait until a watcher judged them (not ignored as unknown)."""
    before = await heard(stack)
    status, text = await asyncio.to_thread(post_blocking, stack.url, json.dumps(list(events)).encode(), stack.signed())
    assert status == 202 and json.loads(text)["accepted"] == len(events), text
    await eventually(lambda: _more(heard(stack), before + len(events)), 5, "the forged events heard by a watcher")


async def heard(stack: EventsStack) -> float:
    """Events a watcher of the task judged: a hint (look sooner), stale, implausible, or a STOPPED to confirm."""
    return sum([await stack.metric(o) for o in ("hint", "stale", "implausible", "confirming")])


async def _more(value: Any, at_least: float) -> bool:
    return bool(await value >= at_least)


async def route_target(stack: EventsStack, user: str) -> str | None:
    routes = (await stack.admin.request("GET", "/proxy")).json()
    route = next((r for spec, r in routes.items() if spec.endswith(f"/user/{user}/")), None)
    return route["target"] if route else None


async def spawn(stack: EventsStack, user: str) -> None:
    assert (await stack.admin.request("POST", f"/users/{user}")).status in (201, 409)
    assert (await stack.admin.request("POST", f"/users/{user}/server", {"user_options": {}})).status in (201, 202)


def describe_calls(stack: EventsStack) -> int:
    calls = stack.ecs.stats()["calls"].get("DescribeTasks", {})
    return int(sum(calls.values()))


async def test_a_forged_running_event_with_a_new_ip_never_changes_the_route(stack: EventsStack) -> None:
    await spawn(stack, "ann")
    pending = await eventually(lambda: _status_of(stack, "ann", "PENDING"), 10, "PENDING")
    forger = "127.250.250.250"
    await send(stack, forged(pending, lastStatus="RUNNING", version=pending["version"] + 1, ip=forger))
    await eventually(lambda: server_ready(stack.admin, "ann"), PENDING_S + 15, "ready")
    real = task_of(stack, "ann")
    target = await route_target(stack, "ann")
    assert target is not None and forger not in target and task_ip(real) in target, (target, real["containers"])
    # After it runs, too: a forged address for a running server moves nothing.
    await send(stack, forged(real, version=real["version"] + 1, ip=forger))
    await asyncio.sleep(1)
    assert task_ip(real) in (await route_target(stack, "ann") or "")


async def test_a_forged_high_version_never_hides_a_real_crash(stack: EventsStack) -> None:
    await spawn(stack, "bob")
    await eventually(lambda: server_ready(stack.admin, "bob"), PENDING_S + 15, "ready")
    task = task_of(stack, "bob")
    implausible = await stack.metric("implausible")
    await send(
        stack,
        forged(task, version=task["version"] + 50),  # plausible, and false
        forged(task, version=2**31 - 1),  # the highest a version may be: implausible
    )
    assert await stack.metric("implausible") == implausible + 1
    killed_at = time.monotonic()
    status, _ = stack.ecs.kill(task["taskArn"].rsplit("/", 1)[-1])
    assert status == 202
    await eventually(lambda: server_gone(stack.admin, "bob"), 10, "noticed as stopped")
    assert time.monotonic() - killed_at <= 2.0, "a crash must be noticed within 2 s of the real STOPPED"


async def test_a_forged_pending_adds_at_most_one_describe(stack: EventsStack) -> None:
    await spawn(stack, "cat")
    await eventually(lambda: server_ready(stack.admin, "cat"), PENDING_S + 15, "ready")
    task = task_of(stack, "cat")
    await _quiet(stack)
    before = describe_calls(stack)
    await send(stack, forged(task, lastStatus="PENDING", desiredStatus="RUNNING", version=task["version"] + 1))
    await asyncio.sleep(4)
    assert describe_calls(stack) - before <= 1, "one look, never a task pinned in flux"
    assert await server_ready(stack.admin, "cat")


async def test_duplicated_and_reordered_genuine_events_converge(stack: EventsStack) -> None:
    users = ["dan", "eve", "fin"]
    for user in users:
        await spawn(stack, user)
    for user in users:
        await eventually(lambda u=user: server_ready(stack.admin, u), PENDING_S + 20, f"{user} ready")
    dan = task_of(stack, "dan")
    assert stack.ecs.kill(dan["taskArn"].rsplit("/", 1)[-1])[0] == 202
    assert (await stack.admin.request("DELETE", "/users/eve/server")).status in (202, 204)
    await eventually(lambda: server_gone(stack.admin, "dan"), 10, "dan's crash noticed")
    await eventually(lambda: server_gone(stack.admin, "eve"), 20, "eve stopped")
    fin = task_of(stack, "fin")
    assert fin["lastStatus"] == "RUNNING" and await server_ready(stack.admin, "fin")
    assert task_ip(fin) in (await route_target(stack, "fin") or "")
    assert await route_target(stack, "dan") is None and await route_target(stack, "eve") is None


async def _status_of(stack: EventsStack, user: str, status: str) -> dict[str, Any] | None:
    if await server_model(stack.admin, user) is None:
        return None
    try:
        task = task_of(stack, user)
    except AssertionError:
        return None
    return task if task["lastStatus"] == status else None


async def _quiet(stack: EventsStack) -> None:
    """Until the watchers stop asking (no spawn in flight, every look answered)."""
    last = -1
    while (now := describe_calls(stack)) != last:
        last = now
        await asyncio.sleep(1.5)
