"""TaskWatcher unit tests: a scripted ECS and virtual time, no network and no real waiting.

The scripted ECS is the one thing faked (it plays ECS); every assertion is about what the
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
from tests.ecs.scripted import CLUSTER, NEVER, Clock, ScriptedEcs, arn, ecs_task, settle


def make_watcher(ecs: ScriptedEcs, clock: Clock, **options: Any) -> TaskWatcher:
    """A watcher on virtual time; by default its loop never sweeps on its own."""
    options = {"sweep_interval": NEVER, "busy_interval": NEVER, **options}
    return TaskWatcher(ecs, CLUSTER, clock=clock, sleep=clock.sleep, **options)


@pytest.fixture
async def watcher(ecs: ScriptedEcs, clock: Clock) -> AsyncIterator[TaskWatcher]:
    w = make_watcher(ecs, clock)
    yield w
    await w.close()


def known(watcher: TaskWatcher, task_arn: str) -> TaskSnapshot:
    snapshot = watcher.get(task_arn)
    assert snapshot is not None, f"{task_arn} has no snapshot"
    return snapshot


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
    assert all(known(watcher, a).running for a in arns)
    assert SWEEP_SIZE.labels(CLUSTER)._value.get() == n
    assert WATCHED_TASKS.labels(CLUSTER, "RUNNING")._value.get() == n


class CountingEcs(ScriptedEcs):
    """Counts how many DescribeTasks are in flight at once."""

    in_flight = peak = 0

    async def describe_tasks(self, cluster: str, arns: Sequence[str]) -> DescribeResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0)
        try:
            return await super().describe_tasks(cluster, arns)
        finally:
            self.in_flight -= 1


async def test_concurrency_is_bounded(clock: Clock) -> None:
    ecs = CountingEcs(clock)
    w = make_watcher(ecs, clock, max_concurrency=3)
    add_running(ecs, w, 1000)
    await w.refresh()
    await w.close()
    assert len(ecs.calls) == 10 and ecs.peak == 3


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
    await settle()
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
    assert known(watcher, a).last_status == "RUNNING"
    ecs.tasks[a] = ecs_task(a, "PROVISIONING", version=1)  # a lagging DescribeTasks answer
    await watcher.refresh()
    assert known(watcher, a).version == 5
    assert watcher.apply(ecs_task(a, "DEACTIVATING", version=6))
    assert known(watcher, a).stopping


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
    [
        EcsApiError("DescribeTasks", "ThrottlingException", "Rate exceeded", throttled=True),
        EcsApiError("DescribeTasks", "EndpointConnectionError", "connection refused"),
        RuntimeError("a bug in a lower layer"),
    ],
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
    assert known(watcher, a).running
    assert watcher.staleness(a) == 45
    assert "keep their last known state" in caplog.text and "45.0s" in caplog.text


async def test_timed_out_sweep_keeps_state(ecs: ScriptedEcs, clock: Clock) -> None:
    w = make_watcher(ecs, clock, call_timeout=2.0)
    (a,) = add_running(ecs, w, 1)
    await w.refresh()
    ecs.gate = asyncio.Event()  # ECS stops answering
    clock.now += 10
    sweep = asyncio.create_task(w.refresh())
    await clock.advance(1.9)
    assert not sweep.done()
    await clock.advance(0.1)  # the call timeout, on the watcher's clock
    await sweep
    await w.close()
    assert known(w, a).running and w.staleness(a) == 12


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
    assert known(watcher, a).running
    ecs.tasks[a] = running
    await watcher.refresh()  # seen again: the streak starts over
    del ecs.tasks[a]
    await watcher.refresh()
    assert known(watcher, a).running and not stopped
    await watcher.refresh()  # the second MISSING in a row
    await settle()
    snapshot = known(watcher, a)
    assert snapshot.stopped and snapshot.stopped_reason == MISSING_REASON and snapshot.stop_code is None
    assert snapshot.version == 8
    assert stopped == [snapshot] and stopped[0] is snapshot  # the one poll() reads


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
    await settle()
    assert calls == ["Essential container in task exited"]
    assert "on_stopped callback" in caplog.text
    assert ecs.calls[-1] == [b]  # a stopped task is not described again
    assert known(watcher, b).running


async def test_the_stop_callback_gets_the_snapshot_poll_reads(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    told: list[TaskSnapshot] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        told.append(snapshot)

    a = arn(1)
    ecs.tasks[a] = ecs_task(a)
    watcher.watch(a, on_stopped)
    await watcher.refresh()
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=4, stopCode="EssentialContainerExited")
    await watcher.refresh()
    await settle()
    assert len(told) == 1 and told[0] is watcher.get(a)
    assert known(watcher, a).stopped  # what a spawner's stop() checks before sending StopTask


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
    await settle()
    assert told == [a]


async def test_wait_for_resolves_on_stop_or_times_out_on_the_watchers_clock(
    ecs: ScriptedEcs, watcher: TaskWatcher, clock: Clock
) -> None:
    a, b = arn(1), arn(2)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    ecs.tasks[b] = ecs_task(b, "PENDING", version=1)
    watcher.watch(a)
    watcher.watch(b)
    waiting = asyncio.create_task(watcher.wait_for(a, lambda s: s.running, timeout=5))
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=2, stopCode="TaskFailedToStart", stoppedReason="CannotPull")
    await watcher.refresh()
    snapshot = await waiting
    assert snapshot.stopped and snapshot.stop_code == "TaskFailedToStart"
    timing_out = asyncio.create_task(watcher.wait_for(b, lambda s: s.running, timeout=30))
    await clock.advance(29.9)
    assert not timing_out.done()
    await clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await timing_out
    assert await watcher.wait_for(a, lambda s: s.running, timeout=0) is snapshot  # already known


async def test_a_broken_predicate_fails_only_its_own_waiter(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    watcher.watch(a)

    def broken(snapshot: TaskSnapshot) -> bool:
        raise ValueError("predicate bug")

    bad = asyncio.create_task(watcher.wait_for(a, broken, timeout=5))
    good = asyncio.create_task(watcher.wait_for(a, lambda s: s.last_status == "PENDING", timeout=5))
    await settle()
    await watcher.refresh()
    assert (await good).last_status == "PENDING"
    with pytest.raises(ValueError, match="predicate bug"):
        await bad


async def test_unwatch_fails_the_waiters(ecs: ScriptedEcs, watcher: TaskWatcher) -> None:
    a = arn(1)
    watcher.watch(a)
    waiting = asyncio.create_task(watcher.wait_for(a, lambda s: s.running, timeout=5))
    await settle()
    watcher.unwatch(a)
    with pytest.raises(TaskNotWatched):
        await waiting


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"busy_interval": 0}, "busy_interval"),
        ({"jitter": 1.0}, "jitter"),
        ({"confirm_window": -1}, "window"),
    ],
)
def test_bad_options_are_refused(ecs: ScriptedEcs, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskWatcher(ecs, CLUSTER, **options)


def test_clock_and_sleep_come_together(ecs: ScriptedEcs, clock: Clock) -> None:
    with pytest.raises(ValueError, match="together"):
        TaskWatcher(ecs, CLUSTER, clock=clock)


async def test_with_real_parts_on_local_ecs(local_ecs_factory: Callable[..., Any]) -> None:
    """The real EcsApi against local ECS (sim), on real time: 250 starts, batched sweeps, a stop noticed."""
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
        )  # fmt: skip
        request = {"cluster": "real", "taskDefinition": "lab", "count": 10, "launchType": "FARGATE",
                   "networkConfiguration": network}  # fmt: skip
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
