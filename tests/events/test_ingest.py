"""Event ingestion into the TaskWatcher: validation, ordering, and the batched STOPPED confirm.

ECS is played by test_watcher's ScriptedEcs (it counts every DescribeTasks), so each test
can say exactly how many calls an event caused. Events are built by local ECS's own
EventBridge formatter, the shape the endpoint receives in production.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calliope_hub.events.ingest import (
    EventFormatError,
    EventIngest,
    QueueFull,
    parse_delivery,
    sort_delivery,
    task_state_change,
)
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.observability.metrics import EVENTS
from tests.ecs.scripted import CLUSTER, CLUSTER_ARN, NEVER, Clock, ScriptedEcs, arn, ecs_task, event_for

async def until(condition: Any, seconds: float = 5.0) -> None:
    """Let the watcher's batcher (which sleeps its confirm window) run until `condition` holds."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def counted(outcome: str) -> float:
    return EVENTS.labels(outcome)._value.get()


@pytest.fixture
async def watcher(ecs: ScriptedEcs, clock: Clock) -> Any:
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=NEVER, events=True, confirm_window=0.01, clock=clock)  # type: ignore[arg-type]
    yield w
    await w.close()


def running(ecs: ScriptedEcs, watcher: TaskWatcher, n: int, version: int = 3) -> list[str]:
    arns = [arn(i) for i in range(n)]
    for a in arns:
        ecs.tasks[a] = ecs_task(a, "RUNNING", version=version)
        watcher.watch(a)
        assert watcher.apply(ecs.tasks[a])
    return arns


# ---- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"[]", "empty list"),
        (b"[1]", "not a JSON object"),
        (b'{"source": 5, "detail-type": "x"}', "must be strings"),
        (b'{"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": []}', "'detail' must be an object"),
        (b'{"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": {"taskArn": "a"}}', "clusterArn"),
    ],
)
def test_malformed_deliveries_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        sort_delivery(parse_delivery(body), lambda arn: [])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lastStatus": "SLEEPING"}, "not an ECS status"),
        ({"version": "7"}, "version must be a non-empty int"),
        ({"version": True}, "version must be a non-empty int"),
        ({"version": -1}, ">= 0"),
        ({"taskArn": ""}, "taskArn"),
    ],
)
def test_an_ecs_event_missing_what_the_watcher_needs_is_malformed(change: dict, message: str) -> None:
    event = event_for(ecs_task(arn(1)))
    event["detail"].update(change)
    with pytest.raises(EventFormatError, match=message):
        task_state_change(event)


def test_other_sources_detail_types_and_clusters_are_ignored_not_refused() -> None:
    ours = event_for(ecs_task(arn(1)))
    other_cluster = event_for(ecs_task(arn(2)), cluster_arn="arn:aws:ecs:us-east-1:1:cluster/other")
    other_source = {**ours, "source": "aws.ec2"}
    other_type = {**ours, "detail-type": "ECS Container Instance State Change"}
    sorted_ = sort_delivery([ours, other_cluster, other_source, other_type], lambda c: [object()] if c == CLUSTER_ARN else [])  # type: ignore[list-item]
    assert [c.detail["taskArn"] for c in sorted_.changes] == [arn(1)] and sorted_.ignored == 3


def test_one_malformed_event_refuses_the_whole_batch() -> None:
    good, bad = event_for(ecs_task(arn(1))), event_for(ecs_task(arn(2)))
    del bad["detail"]["version"]
    with pytest.raises(EventFormatError, match="event 1"):
        sort_delivery(parse_delivery(json.dumps([good, bad])), lambda c: [object()])  # type: ignore[list-item]


async def test_a_full_queue_takes_nothing_of_a_delivery(watcher: TaskWatcher) -> None:
    ingest = EventIngest(queue_size=3, watchers_of=lambda c: [watcher])
    changes = [task_state_change(event_for(ecs_task(arn(i)))) for i in range(4)]
    with pytest.raises(QueueFull):
        ingest.submit(changes)  # type: ignore[arg-type]
    ingest.submit(changes[:3])  # type: ignore[arg-type]
    await asyncio.wait_for(ingest.join(), 5)
    await ingest.close()


# ---- ordering -----------------------------------------------------------------------------

LIFE = ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING", "STOPPING"]


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(LIFE))), duplicates=st.lists(st.integers(0, len(LIFE) - 1), max_size=6))
def test_duplicated_and_reordered_events_never_move_state_backwards(order: list[int], duplicates: list[int]) -> None:
    async def scenario() -> None:
        ecs, watcher = ScriptedEcs(), TaskWatcher(ScriptedEcs(), CLUSTER, sweep_interval=NEVER, events=True)  # type: ignore[arg-type]
        a = arn(1)
        watcher.watch(a)
        ingest = EventIngest(watchers_of=lambda c: [watcher])
        seen = 0
        for i in [*order, *duplicates]:
            ingest.apply(task_state_change(event_for(ecs_task(a, LIFE[i], version=i + 1))))  # type: ignore[arg-type]
            version = watcher.get(a).version  # type: ignore[union-attr]
            assert version >= seen
            seen = version
        assert watcher.get(a).last_status == "STOPPING" and watcher.get(a).version == len(LIFE)  # type: ignore[union-attr]
        assert ecs.calls == []  # non-terminal events never describe
        await watcher.close()

    asyncio.run(scenario())


async def test_events_keep_the_tags_a_sweep_read(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a = arn(1)
    watcher.watch(a)
    watcher.apply(ecs_task(a, "PENDING", version=1, tags=[{"key": "calliope:user", "value": "ann"}]))
    assert watcher.apply_event(ecs_task(a, "RUNNING", version=2)) == "applied"
    assert watcher.get(a).tags == {"calliope:user": "ann"}  # type: ignore[union-attr]


# ---- the STOPPED confirm ------------------------------------------------------------------


async def test_a_forged_stopped_event_for_a_live_task_is_refuted(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    (a,) = running(ecs, watcher, 1)
    stopped: list[str] = []

    async def on_stopped(snapshot: Any) -> None:
        stopped.append(snapshot.arn)

    watcher.watch(a, on_stopped)
    refuted = counted("refuted")
    assert watcher.apply_event(ecs_task(a, "STOPPED", version=99)) == "confirming"
    await until(lambda: counted("refuted") == refuted + 1)
    assert ecs.calls == [[a]] and watcher.get(a).running and stopped == []  # type: ignore[union-attr]


async def test_a_real_stop_is_confirmed_and_notified(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    (a,) = running(ecs, watcher, 1)
    done = asyncio.Event()

    async def on_stopped(snapshot: Any) -> None:
        done.set()

    watcher.watch(a, on_stopped)
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=6, stoppedReason="Essential container exited")
    watcher.apply_event(ecs.tasks[a])
    await asyncio.wait_for(done.wait(), 5)
    assert watcher.get(a).stopped_reason == "Essential container exited"  # type: ignore[union-attr]
    watcher.apply_event(ecs.tasks[a])  # a duplicate after the stop: nothing more to ask ECS
    await asyncio.sleep(0.05)
    assert len(ecs.calls) == 1


@pytest.mark.parametrize("n", [1, 100, 101, 250])
async def test_n_stopped_events_cost_ceil_n_over_100_describes(ecs: ScriptedEcs, watcher: TaskWatcher, n: int) -> None:
    arns = running(ecs, watcher, n)
    for a in arns:
        ecs.tasks[a] = ecs_task(a, "STOPPED", version=5)
    events = [ecs.tasks[a] for a in arns] * 2  # every event delivered twice
    random.Random(n).shuffle(events)
    for detail in events:
        watcher.apply_event(detail)
    await until(lambda: all(watcher.get(a).stopped for a in arns))  # type: ignore[union-attr]
    assert len(ecs.calls) == math.ceil(n / 100) and sorted(sum(ecs.calls, [])) == sorted(arns)


async def test_a_failed_confirm_is_retried_and_never_ends_the_task(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    (a,) = running(ecs, watcher, 1)
    ecs.errors = [RuntimeError("throttled")] * 3
    watcher.apply_event(ecs_task(a, "STOPPED", version=9))
    await until(lambda: len(ecs.calls) == 3 and not watcher._to_confirm)
    assert watcher.get(a).running  # type: ignore[union-attr]


# ---- cadence ------------------------------------------------------------------------------


async def test_with_events_busy_sweeps_describe_only_tasks_in_flux(ecs: ScriptedEcs, clock: Clock) -> None:
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=0.001, events=True, clock=clock)  # type: ignore[arg-type]
    settled = running(ecs, w, 150)
    starting = arn(1000)
    ecs.tasks[starting] = ecs_task(starting, "PENDING", version=1)
    w.watch(starting)
    await until(lambda: len(ecs.calls) >= 3)
    await w.close()
    assert all(call == [starting] for call in ecs.calls) and settled  # the 150 settled tasks wait for the reconcile


async def test_with_sweeps_off_nothing_is_described_until_an_event_asks(ecs: ScriptedEcs, clock: Clock) -> None:
    w = TaskWatcher(ecs, CLUSTER, busy_interval=0.001, events=True, sweeping=False, confirm_window=0, clock=clock)  # type: ignore[arg-type]
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=3)
    w.watch(a)
    await asyncio.sleep(0.05)
    assert ecs.calls == [] and w.get(a) is None
    assert w.apply_event(ecs.tasks[a]) == "applied" and w.get(a).running  # type: ignore[union-attr]
    await w.close()
