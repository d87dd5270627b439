"""The events endpoint in a real JupyterHub, fed by local ECS's EventBridge-style sink.

Local ECS (sim, in a thread) POSTs every task state change to the hub, each one twice and
shuffled (`event_duplicate=1.0`, `event_reorder=True`). The hub's own sweeps are an hour
apart, so only events (and their confirm) can tell it that a task died.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---- bad input on a real hub: every malformed body is a 4xx with its reason, never a 500 ----------


def post_blocking(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """One POST from this thread (the hub is another process, so blocking here stalls nothing of it)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


_numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["-Infinity", "Infinity", "NaN", "9" * 400, "1e400", "-1e400"]),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.text(max_size=20), _numbers),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)
_DETAIL_KEYS = ["taskArn", "clusterArn", "lastStatus", "desiredStatus", "version", "updatedAt", "attachments",
                "containers", "tags", "stoppedReason", "stopCode", "startedAt"]  # fmt: skip


def _dump(value: Any) -> str:
    """JSON text; sampled strings of numbers and non-finite floats go out as bare tokens, as a stranger may send."""
    if isinstance(value, str) and value in ("-Infinity", "Infinity", "NaN", "9" * 400, "1e400", "-1e400"):
        return value
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # NaN and ±Infinity floats come out bare too


@st.composite
def hostile_bodies(draw: st.DrawFn, genuine: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["field", "nesting", "any", "batch"]))
    if kind == "nesting":
        depth = draw(st.integers(min_value=1, max_value=200_000))
        return (draw(st.sampled_from(["[", '{"a":['])) * depth).encode()
    if kind == "any":
        return _dump(draw(_json)).encode()
    event = json.loads(json.dumps(genuine))
    for key in draw(st.lists(st.sampled_from(_DETAIL_KEYS), min_size=1, max_size=3, unique=True)):
        event["detail"][key] = draw(_json)
    return _dump([event] * draw(st.integers(1, 3)) if kind == "batch" else event).encode()


async def test_fuzzed_bodies_never_get_a_500_and_change_nothing(stack: EventsStack) -> None:
    await spawn(stack, "fay")
    task = stack.task_of_running_server()
    genuine = task_state_change_event(task, region="us-east-1", account="000000000000")
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(hostile_bodies(genuine))
    def fuzz(body: bytes) -> None:
        status, text = post_blocking(stack.url, body, stack.signed())
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (status, text[:300], body[:300])
        if status >= 400:
            assert "message" in json.loads(text), text[:300]

    fuzz()
    assert seen.get(400, 0) > 50, seen  # most of what a stranger sends is refused, with a reason

    cases = {
        b"[" * 100_000: "nested deeper than 32",
        json.dumps({**genuine, "detail": {**genuine["detail"], "updatedAt": 0}})
        .encode()
        .replace(b'"updatedAt": 0', b'"updatedAt": ' + b"9" * 400): "more than 19 digits",
        json.dumps(genuine).encode().replace(b'"version": ', b'"version": -Infinity, "v": '): "-Infinity",
        json.dumps({**genuine, "detail": {**genuine["detail"], "version": 10**30}}).encode(): "19 digits",
        json.dumps({**genuine, "detail": {**genuine["detail"], "containers": {"a": 1}}}).encode(): "not an ECS task",
    }
    for body, reason in cases.items():
        status, text = post_blocking(stack.url, body, stack.signed())
        assert status == 400 and reason in json.loads(text)["message"], (status, text[:300])
    big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    status, text = post_blocking(stack.url, big, stack.signed())
    assert status == 413 and "larger than" in json.loads(text)["message"]
    status, _ = post_blocking(stack.url, big, {"Content-Type": "application/json"})
    assert status == 401  # no secret: refused before the body is read

    assert await stack.server_running("fay")  # none of it ended or moved the server
    text = (await stack.admin.request("GET", "/../metrics")).text
    lag_sum = next(r for r in text.splitlines() if r.startswith("calliope_ecs_event_lag_seconds_sum"))
    assert math.isfinite(float(lag_sum.split()[-1]))


async def test_our_log_lines_use_jupyterhub_format(stack: EventsStack) -> None:
    """calliope_hub.* INFO lines reach the hub's log with JupyterHub's level letter and timestamp (one logger)."""
    await spawn(stack, "gus")
    ours = re.compile(
        r"^\[I \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
        r"calliope_hub\.ecs\.taskdefs taskdefs:\d+\] registered task definition"
    )
    log_text = (stack.hub.workdir / "jupyterhub.log").read_text()
    assert any(ours.match(line) for line in log_text.splitlines()), log_text[-3000:]
