"""TaskWatcher unit tests: a scripted stand-in for EcsApi and an injected clock, no network.

The stand-in is the one thing faked (it plays ECS); every assertion is about what the
watcher does with ECS's answers: how many calls, which state survives, who gets told.
The last test runs the same watcher on the real EcsApi and local ECS.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from calliope_hub.ecs.api import DescribeResult, EcsApi, EcsApiError, EcsTarget
from calliope_hub.ecs.snapshot import MISSING_REASON, TaskSnapshot
from calliope_hub.ecs.status import TaskNotWatched, TaskWatcher
from calliope_hub.observability.metrics import SWEEP_SIZE, WATCHED_TASKS
from tests.ecs.scripted import CLUSTER, NEVER, Clock, ScriptedEcs, arn, ecs_task

@pytest.fixture
async def watcher(ecs: ScriptedEcs, clock: Clock) -> AsyncIterator[TaskWatcher]:
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=NEVER, clock=clock)  # type: ignore[arg-type]
    yield w
    await w.close()


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let other coroutines run until `condition` holds (a bounded number of loop turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def add_running(ecs: ScriptedEcs, watcher: TaskWatcher, n: int) -> list[str]:
    arns = [arn(i) for i in range(n)]
    for a in arns:
        ecs.tasks[a] = ecs_task(a)
        watcher.watch(a)
    return arns


@pytest.mark.parametrize("n", [1, 100, 101, 1000])
async def test_one_describe_per_hundred_tasks(ecs: ScriptedEcs, watcher: TaskWatcher, n: int) -> None:
    arns = add_running(ecs, watcher, n)
    await watcher.refresh()
    assert len(ecs.calls) == math.ceil(n / 100)
    assert sorted(a for call in ecs.calls for a in call) == sorted(arns)
    assert all(watcher.get(a).running for a in arns)  # type: ignore[union-attr]
    assert SWEEP_SIZE.labels(CLUSTER)._value.get() == n
    assert WATCHED_TASKS.labels(CLUSTER, "RUNNING")._value.get() == n


async def test_concurrency_is_bounded(ecs: ScriptedEcs, clock: Clock) -> None:
    in_flight = peak = 0
    plain_describe = ecs.describe_tasks

    async def counting_describe(cluster: str, arns: Sequence[str]) -> DescribeResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        try:
            return await plain_describe(cluster, arns)
        finally:
            in_flight -= 1

    ecs.describe_tasks = counting_describe  # type: ignore[method-assign]
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=NEVER, max_concurrency=3, clock=clock)  # type: ignore[arg-type]
    add_running(ecs, w, 1000)
    await w.refresh()
    await w.close()
    assert len(ecs.calls) == 10 and peak == 3


async def test_concurrent_demand_joins_the_sweep_in_flight(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    watcher.watch(a)
    ecs.gate = asyncio.Event()
    first = asyncio.create_task(watcher.refresh())
    await until(lambda: len(ecs.calls) == 1)
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=2)
    joiners = [asyncio.create_task(watcher.refresh()) for _ in range(20)]
    waiter = asyncio.create_task(watcher.wait_for(a, lambda s: s.running, timeout=5))
    for _ in range(5):  # let every joiner and the waiter reach its await
        await asyncio.sleep(0)
    ecs.gate.set()
    await asyncio.gather(first, *joiners)
    snapshot = await waiter
    assert snapshot.running and snapshot.version == 2
    assert len(ecs.calls) == 1


async def test_older_or_equal_version_never_overwrites(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a = arn(1)
    watcher.watch(a)
    assert watcher.apply(ecs_task(a, "RUNNING", version=5))
    assert not watcher.apply(ecs_task(a, "PENDING", version=4))
    assert not watcher.apply(ecs_task(a, "STOPPED", version=5))  # a duplicate carries the same version
    assert watcher.get(a).last_status == "RUNNING"  # type: ignore[union-attr]
    ecs.tasks[a] = ecs_task(a, "PROVISIONING", version=1)  # a lagging DescribeTasks answer
    await watcher.refresh()
    assert watcher.get(a).version == 5  # type: ignore[union-attr]
    assert watcher.apply(ecs_task(a, "DEACTIVATING", version=6))
    assert watcher.get(a).stopping  # type: ignore[union-attr]


async def test_unwatched_tasks_are_ignored(watcher: TaskWatcher) -> None:
    a = arn(1)
    assert not watcher.apply(ecs_task(a))
    watcher.watch(a)
    watcher.unwatch(a)
    assert not watcher.apply(ecs_task(a))
    assert watcher.get(a) is None and watcher.watched == 0
    with pytest.raises(TaskNotWatched):
        await watcher.wait_for(a, lambda s: s.running, timeout=1)


@pytest.mark.parametrize(
    "error",
    [EcsApiError("DescribeTasks", "ThrottlingException", "Rate exceeded", throttled=True),
     EcsApiError("DescribeTasks", "EndpointConnectionError", "connection refused"),
     RuntimeError("a bug in a lower layer")],
)
async def test_failed_sweep_keeps_state_and_reports_staleness(
    ecs: ScriptedEcs, watcher: TaskWatcher, clock: Clock, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    (a,) = add_running(ecs, watcher, 1)
    await watcher.refresh()
    assert watcher.staleness(a) == 0
    del ecs.tasks[a]
    ecs.errors = [error]
    clock.now += 45
    with caplog.at_level(logging.WARNING, logger="calliope_hub.ecs.status"):
        await watcher.refresh()
    assert watcher.get(a).running  # type: ignore[union-attr]
    assert watcher.staleness(a) == 45
    assert "keep their last known state" in caplog.text and "45.0s" in caplog.text


async def test_timed_out_sweep_keeps_state(ecs: ScriptedEcs, clock: Clock) -> None:
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=NEVER, call_timeout=0.01, clock=clock)  # type: ignore[arg-type]
    (a,) = add_running(ecs, w, 1)
    await w.refresh()
    ecs.gate = asyncio.Event()  # ECS stops answering
    clock.now += 10
    await w.refresh()
    await w.close()
    assert w.get(a).running and w.staleness(a) == 10  # type: ignore[union-attr]


async def test_missing_twice_in_a_row_stops(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    stopped: list[TaskSnapshot] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        stopped.append(snapshot)

    a = arn(1)
    ecs.tasks[a] = ecs_task(a, version=7)
    watcher.watch(a, on_stopped)
    await watcher.refresh()
    running = ecs.tasks.pop(a)
    await watcher.refresh()  # one MISSING: maybe briefly invisible
    assert watcher.get(a).running  # type: ignore[union-attr]
    ecs.tasks[a] = running
    await watcher.refresh()  # seen again: the streak starts over
    del ecs.tasks[a]
    await watcher.refresh()
    assert watcher.get(a).running and not stopped  # type: ignore[union-attr]
    await watcher.refresh()  # the second MISSING in a row
    await asyncio.sleep(0)
    snapshot = watcher.get(a)
    assert snapshot is not None and snapshot.stopped
    assert snapshot.stopped_reason == MISSING_REASON and snapshot.stop_code is None
    assert snapshot.version == 8
    assert stopped == [snapshot]


async def test_on_stopped_runs_once_and_its_failure_is_contained(
    ecs: ScriptedEcs, watcher: TaskWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def broken_callback(snapshot: TaskSnapshot) -> None:
        calls.append(snapshot.stopped_reason or "")
        raise RuntimeError("spawner bug")

    a, b = arn(1), arn(2)
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=9, stoppedReason="Essential container in task exited")
    ecs.tasks[b] = ecs_task(b)
    watcher.watch(a, broken_callback)
    watcher.watch(b)
    await watcher.refresh()
    assert not watcher.apply(ecs_task(a, "STOPPED", version=10))  # STOPPED is final
    await watcher.refresh()
    await asyncio.sleep(0)
    assert calls == ["Essential container in task exited"]
    assert "on_stopped callback" in caplog.text
    assert ecs.calls[-1] == [b]  # a stopped task is not described again
    assert watcher.get(b).running  # type: ignore[union-attr]


async def test_late_callback_for_an_already_stopped_task(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    told: list[str] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        told.append(snapshot.arn)

    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "STOPPED")
    watcher.watch(a)
    await watcher.refresh()
    watcher.watch(a, on_stopped)  # e.g. a spawner re-attaching after a hub restart
    watcher.watch(a, on_stopped)
    await asyncio.sleep(0)
    assert told == [a]


async def test_wait_for_resolves_on_stop_or_times_out(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a, b = arn(1), arn(2)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    ecs.tasks[b] = ecs_task(b, "PENDING", version=1)
    watcher.watch(a)
    watcher.watch(b)
    waiting = asyncio.create_task(watcher.wait_for(a, lambda s: s.running, timeout=5))
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=2, stopCode="TaskFailedToStart", stoppedReason="CannotPullContainerError")
    await watcher.refresh()
    snapshot = await waiting
    assert snapshot.stopped and snapshot.stop_code == "TaskFailedToStart"
    with pytest.raises(asyncio.TimeoutError):
        await watcher.wait_for(b, lambda s: s.running, timeout=0.01)
    assert await watcher.wait_for(a, lambda s: s.running, timeout=0) is snapshot  # already known


async def test_busy_and_idle_cadence(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    watcher.sweep_interval, watcher.busy_interval, watcher.jitter = 30.0, 1.5, 0.1
    a = arn(1)
    watcher.watch(a)
    assert watcher.next_delay() == 1.5  # not yet seen
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    await watcher.refresh()
    assert watcher.next_delay() == 1.5  # starting
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=2)
    await watcher.refresh()
    assert all(27.0 <= watcher.next_delay() <= 33.0 for _ in range(50))
    watcher.sweep_interval = 300.0  # events stretch it to a reconcile sweep
    assert 270.0 <= watcher.next_delay() <= 330.0
    assert watcher.apply(ecs_task(a, "STOPPING", version=3))
    assert watcher.next_delay() == 1.5


async def test_a_waited_for_task_is_swept_at_the_busy_cadence(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    watcher.sweep_interval, watcher.busy_interval = 30.0, 1.5
    (a,) = add_running(ecs, watcher, 1)
    await watcher.refresh()
    assert watcher.next_delay() != 1.5
    stop_wait = asyncio.create_task(watcher.wait_for(a, lambda s: s.stopped, timeout=5))  # a stop was just sent
    await until(lambda: watcher.next_delay() == 1.5)
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=4)
    await watcher.refresh()
    assert (await stop_wait).stopped
    assert watcher.next_delay() != 1.5


async def test_the_loop_sweeps_busy_tasks_until_they_settle(ecs: ScriptedEcs, clock: Clock) -> None:
    w = TaskWatcher(ecs, CLUSTER, sweep_interval=NEVER, busy_interval=0.001, clock=clock)  # type: ignore[arg-type]
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    ecs.errors = [RuntimeError("first sweep blows up")]
    w.watch(a)
    await w.wait_for(a, lambda s: s.last_status == "PENDING", timeout=5)
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=2)
    await w.wait_for(a, lambda s: s.running, timeout=5)
    settled = len(ecs.calls)
    for _ in range(20):
        await asyncio.sleep(0.001)
    await w.close()
    assert settled >= 3 and len(ecs.calls) == settled  # idle now: no sweep for an hour


async def test_for_cluster_is_one_watcher_per_cluster(ecs: ScriptedEcs) -> None:
    first = TaskWatcher.for_cluster(ecs, CLUSTER, sweep_interval=12.0)  # type: ignore[arg-type]
    again = TaskWatcher.for_cluster(ecs, CLUSTER, sweep_interval=99.0)  # type: ignore[arg-type]
    other = TaskWatcher.for_cluster(ecs, "another-cluster")  # type: ignore[arg-type]
    assert first is again and first.sweep_interval == 12.0 and other is not first
    await TaskWatcher.close_all()
    assert TaskWatcher.for_cluster(ecs, CLUSTER) is not first  # type: ignore[arg-type]
    await TaskWatcher.close_all()


def test_bad_options_are_refused(ecs: ScriptedEcs) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        TaskWatcher(ecs, CLUSTER, max_concurrency=0)  # type: ignore[arg-type]


async def test_with_real_parts_on_local_ecs(local_ecs_factory: Callable[..., Any]) -> None:
    """The real EcsApi against local ECS (sim): 250 starts, batched sweeps, a stop noticed."""
    server = local_ecs_factory()
    api = await EcsApi.create(EcsTarget("us-east-1", server.endpoint_url))
    network = {"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"]}}
    stopped: list[TaskSnapshot] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        stopped.append(snapshot)

    watcher = TaskWatcher(api, "real", busy_interval=0.05, sweep_interval=NEVER)
    try:
        await api.ensure_cluster("real")
        await api.register_task_definition(
            {"family": "lab", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": "256",
             "memory": "512", "containerDefinitions": [{"name": "lab", "image": "calliope/lab", "essential": True}]}
        )
        request = {"cluster": "real", "taskDefinition": "lab", "count": 10, "launchType": "FARGATE",
                   "networkConfiguration": network}
        arns = [t["taskArn"] for _ in range(25) for t in (await api.run_task(request))["tasks"]]
        for task_arn in arns:
            watcher.watch(task_arn, on_stopped)
        ready = await asyncio.gather(*(watcher.wait_for(a, lambda s: s.running, timeout=20) for a in arns))
        assert all(s.running and s.ip for s in ready)
        described = api.calls[("DescribeTasks", "ok")]
        await watcher.refresh()
        assert api.calls[("DescribeTasks", "ok")] - described == 3  # ⌈250/100⌉
        await api.stop_task("real", arns[7], "Stopped by Calliope Hub")
        final = await watcher.wait_for(arns[7], lambda s: s.stopped, timeout=20)
        await until(lambda: len(stopped) == 1)
    finally:
        await watcher.close()
        await api.close()
    assert final.stopped_reason == "Stopped by Calliope Hub" and stopped == [final]
