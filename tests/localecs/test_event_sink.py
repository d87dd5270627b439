"""The EventBridge event shape and HttpEventSink's delivery against real aiohttp receivers on loopback."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections import Counter

import pytest
from aiohttp import web

from calliope_hub.localecs.events import HttpEventSink, parse_header, task_state_change_event

ARN = "arn:aws:ecs:us-east-1:123456789012:task/default/0123456789abcdef0123456789abcdef"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def described_task(version: int = 3, arn: str = ARN) -> dict:
    return {
        "taskArn": arn,
        "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/default",
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "version": version,
        "createdAt": 1579802254.402,
        "startedAt": 1579802278.103,
        "stoppingAt": 1579802300,
        "stoppedAt": 1579802301.5,
        "pullStartedAt": 1579802272.103,
        "pullStoppedAt": 1579802275.103,
        "connectivityAt": 1579802258.453,
        "executionStoppedAt": 1579802300.25,
        "stopCode": "UserInitiated",
        "stoppedReason": "bye",
        "containers": [
            {
                "name": "app",
                "exitCode": 0,
                "managedAgents": [{"name": "ExecuteCommandAgent", "lastStartedAt": 1579802279.0}],
            }
        ],
        "attachments": [
            {"type": "ElasticNetworkInterface", "details": [{"name": "privateIPv4Address", "value": "127.0.0.9"}]}
        ],
    }


def test_event_has_the_eventbridge_shape():
    task = described_task()
    event = task_state_change_event(task, region="us-east-1", account="123456789012")

    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    assert event["version"] == "0"
    assert re.fullmatch(r"[0-9a-f-]{36}", event["id"])
    assert (event["detail-type"], event["source"], event["account"], event["region"]) == (
        "ECS Task State Change",
        "aws.ecs",
        "123456789012",
        "us-east-1",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])
    assert event["resources"] == [ARN]
    detail = event["detail"]
    assert (
        detail["version"] == 3
        and detail["stopCode"] == "UserInitiated"
        and detail["attachments"] == task["attachments"]
    )
    assert detail["createdAt"] == "2020-01-23T17:57:34.402Z"
    assert detail["stoppingAt"] == "2020-01-23T17:58:20.000Z"
    for field in (
        "startedAt",
        "stoppedAt",
        "pullStartedAt",
        "pullStoppedAt",
        "connectivityAt",
        "executionStoppedAt",
        "updatedAt",
    ):
        assert ISO_MS.match(detail[field]), field
    assert ISO_MS.match(detail["containers"][0]["managedAgents"][0]["lastStartedAt"])
    assert detail["containers"][0]["exitCode"] == 0, "numbers that are not timestamps stay numbers"
    assert task["createdAt"] == 1579802254.402, "the task itself is not modified"
    assert event["id"] != task_state_change_event(task, region="us-east-1", account="1")["id"]


def test_parse_header():
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_header("  X-Token :  t  ") == ("X-Token", "t")
    for bad in ("Authorization", "Bad Name: x", ": x", "X-Empty:  "):
        with pytest.raises(ValueError, match="Name: value"):
            parse_header(bad)


class Receiver:
    """An API destination on loopback that answers with a scripted status sequence, then 200."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[dict] = []
        self.answered: list[int] = []
        self.headers: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        status = self.script.pop(0) if self.script else 200
        self.answered.append(status)
        self.headers.append(dict(request.headers))
        if status == 200:
            self.received.append(await request.json())
        return web.Response(status=status)


@pytest.fixture
async def receiver():
    def serve(script=None):
        serving = Receiver(script)
        app = web.Application()
        app.router.add_post("/events", serving.handle)
        return serving, app

    runners = []

    async def start(script=None) -> tuple[Receiver, str]:
        serving, app = serve(script)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return serving, f"http://127.0.0.1:{port}/events"

    yield start
    for runner in runners:
        await runner.cleanup()


def events(count: int, tasks: int = 1) -> list[dict]:
    return [
        task_state_change_event(
            described_task(version=i // tasks + 1, arn=f"{ARN[:-4]}{i % tasks:04d}"), region="r", account="a"
        )
        for i in range(count)
    ]


async def deliver(sink: HttpEventSink, published: list[dict]) -> dict:
    await sink.start()
    for event in published:
        sink.publish(event)
    await sink.close(flush_timeout=20)
    return sink.stats()


def fast_sink(url: str, **options) -> HttpEventSink:
    return HttpEventSink(url, ("Authorization", "Bearer s3cret"), backoff_base=0.01, backoff_cap=0.05, **options)


async def test_delivers_in_order_with_the_header(receiver):
    serving, url = await receiver()
    published = events(10)
    stats = await deliver(fast_sink(url), published)
    assert serving.received == published, "one task's events keep their order without reorder"
    assert all(headers["Authorization"] == "Bearer s3cret" for headers in serving.headers)
    assert all(headers["Content-Type"] == "application/json" for headers in serving.headers)
    assert stats == {
        "published": 10,
        "duplicated": 0,
        "delivered": 10,
        "retried": 0,
        "rejected": 0,
        "dropped": 0,
        "pending": 0,
    }


async def test_retries_5xx_and_429_until_delivered(receiver):
    serving, url = await receiver([503, 429, 500, 502])
    [event] = events(1)
    stats = await deliver(fast_sink(url), [event])
    assert serving.answered == [503, 429, 500, 502, 200]
    assert serving.received == [event]
    assert (stats["retried"], stats["delivered"], stats["dropped"]) == (4, 1, 0)


async def test_gives_up_after_max_attempts(receiver):
    serving, url = await receiver([503] * 10)
    stats = await deliver(fast_sink(url, max_attempts=3), events(1))
    assert serving.answered == [503, 503, 503]
    assert (stats["retried"], stats["delivered"], stats["dropped"]) == (2, 0, 1)


async def test_does_not_retry_other_4xx(receiver):
    serving, url = await receiver([400, 403])
    stats = await deliver(fast_sink(url), events(3))
    assert serving.answered == [400, 403, 200]
    assert (stats["rejected"], stats["delivered"], stats["retried"]) == (2, 1, 0)


async def test_retries_connection_refused_until_the_receiver_is_up(receiver):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    sink = fast_sink(f"http://127.0.0.1:{port}/events")
    await sink.start()
    [event] = events(1)
    sink.publish(event)
    for _ in range(200):
        if sink.stats()["retried"] >= 2:
            break
        await asyncio.sleep(0.01)
    serving = Receiver()
    app = web.Application()
    app.router.add_post("/events", serving.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await sink.close(flush_timeout=10)
    finally:
        await runner.cleanup()
    assert serving.received == [event]
    assert sink.stats()["retried"] >= 2 and sink.stats()["delivered"] == 1


async def test_duplicate_delivers_every_event_twice(receiver):
    serving, url = await receiver()
    published = events(5, tasks=5)
    stats = await deliver(fast_sink(url, duplicate=1.0), published)
    assert Counter(event["id"] for event in serving.received) == {event["id"]: 2 for event in published}
    assert stats["duplicated"] == 5 and stats["delivered"] == 10


async def test_reorder_and_duplicate_still_deliver_every_event(receiver):
    serving, url = await receiver([503] * 3)
    published = events(60, tasks=3)
    sink = fast_sink(url, duplicate=0.3, reorder=True, rng=random.Random(7))
    stats = await deliver(sink, published)
    assert {event["id"] for event in serving.received} == {event["id"] for event in published}
    arrival = [event["id"] for event in serving.received]
    assert arrival != [event["id"] for event in published if event["id"] in arrival], "something was reordered"
    assert stats["dropped"] == 0 and stats["delivered"] == 60 + stats["duplicated"]


async def test_publish_after_close_is_dropped_not_raised(receiver):
    serving, url = await receiver()
    sink = fast_sink(url)
    await sink.start()
    await sink.close()
    sink.publish(events(1)[0])
    assert sink.stats()["dropped"] == 1 and serving.received == []


def test_bad_switches_are_refused():
    with pytest.raises(ValueError, match="probability"):
        HttpEventSink("http://127.0.0.1:1/", duplicate=1.5)


def test_botocore_datetimes_and_epoch_numbers_give_the_same_event() -> None:
    """The monitor describes through aiobotocore (datetimes), local ECS has epoch numbers: one shape."""
    from datetime import UTC, datetime

    epoch_task = described_task()
    datetime_task = {**epoch_task, "createdAt": datetime.fromtimestamp(epoch_task["createdAt"], UTC)}
    a = task_state_change_event(epoch_task, now=1579802300.0)
    b = task_state_change_event(datetime_task, now=1579802300.0)
    assert a["detail"] == b["detail"] and a["detail"]["createdAt"] == "2020-01-23T17:57:34.402Z"
    assert (a["region"], a["account"], a["time"]) == ("us-east-1", "123456789012", "2020-01-23T17:58:20Z")
