"""The SQS consumer against moto's SQS (the same ThreadedMotoServer that plays ECS).

The queue, the messages and the receive counts are moto's; the consumer under test uses
the real aiobotocore client. The watcher is a recorder, so a test sees exactly what reached it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from calliope_hub.ecs.api import EcsTarget
from calliope_hub.events.ingest import EventIngest, TaskStateChange
from calliope_hub.events.sqs import SqsEventConsumer, sqs_client
from calliope_hub.observability.metrics import EVENTS
from tests.ecs.scripted import CLUSTER_ARN, arn, ecs_task, event_for
from tests.events.conftest import Recorder

_queues = itertools.count()


@pytest.fixture
def queue(moto_ecs: str) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_ecs)  # test set-up only
    return sqs, sqs.create_queue(QueueName=f"calliope-events-{next(_queues)}")["QueueUrl"]


@pytest.fixture
def watcher() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(moto_ecs: str) -> AsyncIterator[Any]:
    async with sqs_client(EcsTarget("us-east-1", moto_ecs)) as sqs:
        yield sqs


class CursedIngest(EventIngest):
    """Fails every change of one task, as a bug or a broken watcher would."""

    def __init__(self, cursed: str, **options: Any):
        super().__init__(**options)
        self.cursed = cursed

    def apply(self, change: TaskStateChange) -> str:
        if change.detail["taskArn"] == self.cursed:
            raise RuntimeError("this one always fails")
        return super().apply(change)


def left_on_queue(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


async def drain(consumer: SqsEventConsumer, polls: int = 20) -> int:
    settled = 0
    for _ in range(polls):
        settled += await consumer.poll_once()
    return settled


async def test_events_on_the_queue_reach_the_watcher_and_are_deleted(
    queue: tuple[Any, str], client: Any, watcher: Recorder
) -> None:
    sqs, url = queue
    arns = [arn(i) for i in range(12)]
    for a in arns:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(a, "RUNNING", version=4))))
    ingest = EventIngest(watchers_of=lambda c: [watcher] if c == CLUSTER_ARN else [])
    consumer = SqsEventConsumer(client, url, ingest, wait_seconds=0)
    assert await drain(consumer, polls=5) == 12
    assert sorted(watcher.seen) == sorted(arns)
    assert left_on_queue(sqs, url) == 0


async def test_a_poison_message_does_not_block_the_queue(
    queue: tuple[Any, str], client: Any, watcher: Recorder
) -> None:
    sqs, url = queue
    good, cursed = arn(1), arn(2)
    ingest = CursedIngest(cursed, watchers_of=lambda c: [watcher])

    poison_before = EVENTS.labels("poison")._value.get()
    sqs.send_message(QueueUrl=url, MessageBody="{this is not an event")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(cursed))))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(good, version=7))))
    consumer = SqsEventConsumer(client, url, ingest, max_receives=3, wait_seconds=0, retry_delay=0)
    await drain(consumer)
    assert watcher.seen == [good]
    assert EVENTS.labels("poison")._value.get() == poison_before + 2  # unparseable at once, failing after 3 tries
    assert left_on_queue(sqs, url) == 0


async def test_started_it_polls_in_the_background_and_close_ends_the_loop(
    queue: tuple[Any, str], client: Any, watcher: Recorder
) -> None:
    sqs, url = queue
    a = arn(3)
    consumer = SqsEventConsumer(client, url, EventIngest(watchers_of=lambda c: [watcher]), wait_seconds=1)
    await consumer.start()
    loop_task = consumer._task
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(a, "RUNNING", version=4))))
    for _ in range(500):  # until the message is applied and deleted
        if watcher.seen and left_on_queue(sqs, url) == 0:
            break
        await asyncio.sleep(0.01)
    await consumer.close()
    assert watcher.seen == [a] and left_on_queue(sqs, url) == 0
    assert loop_task is not None and loop_task.done()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="wait_seconds"):
        SqsEventConsumer(None, "url", EventIngest(watchers_of=lambda c: []), wait_seconds=21)


async def test_hostile_messages_are_dropped_as_poison_and_the_consumer_lives_on(
    queue: tuple[Any, str], client: Any, watcher: Recorder
) -> None:
    sqs, url = queue
    good = arn(5)
    wrong_types = event_for(ecs_task(arn(6)))
    wrong_types["detail"]["containers"] = "not a list"
    hostile = [
        "[" * 50_000 + "]" * 50_000,
        '{"detail": {"updatedAt": ' + "9" * 400 + "}}",
        '{"detail": {"updatedAt": -Infinity}}',
        json.dumps(wrong_types),
    ]
    ingest = EventIngest(watchers_of=lambda c: [watcher])
    consumer = SqsEventConsumer(client, url, ingest, wait_seconds=1, retry_delay=0)
    await consumer.start()
    poison_before = EVENTS.labels("poison")._value.get()
    for body in hostile:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(good, "RUNNING", version=4))))
    for _ in range(500):
        if watcher.seen and left_on_queue(sqs, url) == 0:
            break
        await asyncio.sleep(0.01)
    alive = consumer._task is not None and not consumer._task.done()
    await consumer.close()
    assert alive and watcher.seen == [good] and left_on_queue(sqs, url) == 0
    assert EVENTS.labels("poison")._value.get() == poison_before + len(hostile)  # each at once: retrying cannot fix it
