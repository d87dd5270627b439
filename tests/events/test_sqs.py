"""The SQS consumer against moto's SQS (the same ThreadedMotoServer that plays ECS).

The queue, the messages and the receive counts are moto's; the consumer under test uses
the real aiobotocore client. The watcher is the real TaskWatcher on test_watcher's
ScriptedEcs, so a test can see exactly what reached it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from calliope_hub.ecs.api import EcsTarget
from calliope_hub.events.ingest import EventIngest, TaskStateChange
from calliope_hub.events.sqs import SqsEventConsumer, sqs_client
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.observability.metrics import EVENTS
from tests.ecs.scripted import CLUSTER, CLUSTER_ARN, NEVER, ScriptedEcs, arn, ecs_task, event_for

_queues = itertools.count()


@pytest.fixture
def queue(moto_ecs: str) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_ecs)  # test set-up only
    return sqs, sqs.create_queue(QueueName=f"calliope-events-{next(_queues)}")["QueueUrl"]


@pytest.fixture
async def watcher() -> AsyncIterator[TaskWatcher]:
    w = TaskWatcher(ScriptedEcs(), CLUSTER, sweep_interval=NEVER, events=True)  # type: ignore[arg-type]
    yield w
    await w.close()


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


async def test_events_on_the_queue_reach_the_watcher_and_are_deleted(queue: tuple[Any, str], client: Any, watcher: TaskWatcher) -> None:
    sqs, url = queue
    arns = [arn(i) for i in range(12)]
    for a in arns:
        watcher.watch(a)
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(a, "RUNNING", version=4))))
    ingest = EventIngest(watchers_of=lambda c: [watcher] if c == CLUSTER_ARN else [])
    consumer = SqsEventConsumer(client, url, ingest, wait_seconds=0)
    assert await drain(consumer, polls=5) == 12
    assert all(watcher.get(a).running for a in arns)  # type: ignore[union-attr]
    assert left_on_queue(sqs, url) == 0


async def test_a_poison_message_does_not_block_the_queue(queue: tuple[Any, str], client: Any, watcher: TaskWatcher) -> None:
    sqs, url = queue
    good, cursed = arn(1), arn(2)
    watcher.watch(good)
    ingest = CursedIngest(cursed, watchers_of=lambda c: [watcher])

    poison_before = EVENTS.labels("poison")._value.get()
    sqs.send_message(QueueUrl=url, MessageBody="{this is not an event")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(cursed))))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event_for(ecs_task(good, version=7))))
    consumer = SqsEventConsumer(client, url, ingest, max_receives=3, wait_seconds=0, retry_delay=0)
    await drain(consumer)
    assert watcher.get(good).version == 7  # type: ignore[union-attr]
    assert EVENTS.labels("poison")._value.get() == poison_before + 2  # unparseable at once, failing after 3 tries
    assert left_on_queue(sqs, url) == 0


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="wait_seconds"):
        SqsEventConsumer(None, "url", EventIngest(), wait_seconds=21)
