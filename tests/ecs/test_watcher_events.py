"""Events are hints: what the TaskWatcher makes of genuine, forged and replayed events.

ECS is scripted (it stamps every DescribeTasks with the virtual time it was made at), and the
watcher runs on that virtual time, so each test can say exactly how many calls an event cost
and how soon the hub knew. Events are built by the shared EventBridge builder, the shape the
endpoint receives in production. Only ECS's answers may change what the watcher believes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.ecs.status.lookout import RETRY_FIRST, RETRY_MAX
from calliope_hub.observability.metrics import EVENTS
from tests.ecs.scripted import CLUSTER, Clock, ScriptedEcs, arn, ecs_task, event_for, settle

WINDOW, BUSY, RECONCILE = 0.15, 1.5, 300.0
REAL_IP, FORGED_IP = "10.0.0.7", "203.0.113.66"


@pytest.fixture
def make(watchers: Callable[..., TaskWatcher]) -> Callable[..., TaskWatcher]:
    """Watchers with events on: full sweeps at the reconcile cadence, STOPPED events confirmed in a window."""
    defaults = {"sweep_interval": RECONCILE, "busy_interval": BUSY, "confirm_window": WINDOW}
    return lambda **options: watchers(**{**defaults, "rng": random.Random(3), **options})


def known(watcher: TaskWatcher, task_arn: str) -> TaskSnapshot:
    snapshot = watcher.get(task_arn)
    assert snapshot is not None, f"{task_arn} has no snapshot"
    return snapshot


def counted(outcome: str) -> float:
    return EVENTS.labels(outcome)._value.get()


def detail(task: dict[str, Any]) -> dict[str, Any]:
    """An event's `detail`, as the watcher receives it from ingestion."""
    return event_for(task)["detail"]


async def known_running(ecs: ScriptedEcs, watcher: TaskWatcher, n: int = 1, version: int = 3) -> list[str]:
    """`n` RUNNING tasks the watcher has had ECS describe once."""
    arns = [arn(i) for i in range(n)]
    for a in arns:
        ecs.tasks[a] = ecs_task(a, version=version, ip=REAL_IP)
        watcher.watch(a)
    await watcher.refresh()
    ecs.calls.clear()
    ecs.times.clear()
    return arns


# ---- addresses and RUNNING come from ECS only ---------------------------------------------


async def test_a_forged_running_event_never_changes_the_address_a_spawn_gets(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=2)
    watcher.watch(a)
    await watcher.refresh()
    spawn = asyncio.create_task(watcher.wait_for(a, lambda s: s.running, timeout=120))
    assert watcher.apply_event(detail(ecs_task(a, "RUNNING", version=3, ip=FORGED_IP))) == "hint"
    await clock.advance(WINDOW)  # the hint only makes the watcher ask ECS: still PENDING
    assert not spawn.done() and known(watcher, a).last_status == "PENDING"
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=3, ip=REAL_IP)
    await clock.advance(BUSY)
    assert (await spawn).ip == REAL_IP


async def test_a_forged_running_event_for_a_running_task_costs_nothing(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher)
    assert watcher.apply_event(detail(ecs_task(a, "RUNNING", version=4, ip=FORGED_IP))) == "hint"
    await clock.advance(60)
    assert ecs.calls == [] and known(watcher, a).ip == REAL_IP


async def test_with_sweeps_off_an_event_makes_the_watcher_ask_and_ecs_answers(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make(sweeping=False)
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=3, ip=REAL_IP)
    watcher.watch(a)
    await clock.advance(RECONCILE * 2)
    assert ecs.calls == [] and watcher.get(a) is None  # no sweeps at all: the monitor's events drive it
    assert watcher.apply_event(detail(ecs_task(a, "RUNNING", version=3, ip=FORGED_IP))) == "hint"
    await clock.advance(WINDOW)
    assert ecs.calls == [[a]] and known(watcher, a).ip == REAL_IP


# ---- versions are bounded and plausible ---------------------------------------------------


async def test_a_forged_huge_version_never_hides_a_real_crash(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher)
    stopped: list[TaskSnapshot] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        stopped.append(snapshot)

    watcher.watch(a, on_stopped)
    assert watcher.apply_event(detail(ecs_task(a, "RUNNING", version=10**9, ip=FORGED_IP))) == "implausible"
    assert watcher.apply_event(detail(ecs_task(a, "STOPPED", version=2**40))) == "implausible"
    await clock.advance(30)
    assert ecs.calls == [] and known(watcher, a).running
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=5, stopCode="EssentialContainerExited")  # the real crash
    crashed = clock.now
    assert watcher.apply_event(detail(ecs.tasks[a])) == "confirming"
    await clock.advance(2.0)
    assert len(stopped) == 1 and stopped[0].stop_code == "EssentialContainerExited"
    assert ecs.times[-1] - crashed <= 2.0


async def test_stale_and_duplicate_events_are_stale(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher, version=3)
    assert watcher.apply_event(detail(ecs_task(a, "PENDING", version=2))) == "stale"
    assert watcher.apply_event(detail(ecs_task(a, "STOPPED", version=3))) == "stale"  # ECS said v3 is RUNNING
    assert watcher.apply_event(detail(ecs_task(arn(99), "RUNNING"))) == "ignored"  # not ours
    await clock.advance(60)
    assert ecs.calls == []


# ---- no event pins a task in flux ---------------------------------------------------------


async def test_a_forged_pending_event_adds_at_most_one_describe(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher)
    assert watcher.apply_event(detail(ecs_task(a, "PENDING", version=4))) == "hint"
    assert watcher.next_delay() >= RECONCILE * 0.9  # still settled: the busy cadence is not switched on
    await clock.advance(RECONCILE * 0.8)
    assert len(ecs.calls) <= 1 and known(watcher, a).running


async def test_a_flood_of_forged_events_costs_one_describe_per_cooldown(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make(sweeping=False)
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=2)
    watcher.watch(a)
    for step in range(60):  # 6 s of forged RUNNING events, 10 a second, each a version higher
        watcher.apply_event(detail(ecs_task(a, "RUNNING", version=3 + step, ip=FORGED_IP)))
        await clock.advance(0.1)
    assert 1 <= len(ecs.calls) <= math.ceil(6.0 / BUSY) + 1
    assert all(b - t >= BUSY for t, b in zip(ecs.times, ecs.times[1:], strict=False))
    assert known(watcher, a).last_status == "PENDING"


# ---- STOPPED confirmations ----------------------------------------------------------------


async def test_a_forged_stopped_event_for_a_live_task_is_refuted(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher)
    stopped: list[str] = []

    async def on_stopped(snapshot: TaskSnapshot) -> None:
        stopped.append(snapshot.arn)

    watcher.watch(a, on_stopped)
    refuted = counted("refuted")
    assert watcher.apply_event(detail(ecs_task(a, "STOPPED", version=4))) == "confirming"
    await clock.advance(WINDOW)
    assert counted("refuted") == refuted + 1
    assert ecs.calls == [[a]] and known(watcher, a).running and stopped == []


@pytest.mark.parametrize("n", [1, 100, 101, 250])
async def test_n_stopped_events_cost_ceil_n_over_100_describes(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher], n: int
) -> None:
    watcher = make()
    arns = await known_running(ecs, watcher, n)
    for a in arns:
        ecs.tasks[a] = ecs_task(a, "STOPPED", version=5)
    events = [ecs.tasks[a] for a in arns] * 2  # every event delivered twice
    random.Random(n).shuffle(events)
    confirmed = counted("confirmed")
    for task in events:
        watcher.apply_event(detail(task))
    await clock.advance(WINDOW)
    assert all(known(watcher, a).stopped for a in arns)
    assert len(ecs.calls) == math.ceil(n / 100) and sorted([a for call in ecs.calls for a in call]) == sorted(arns)
    assert counted("confirmed") == confirmed + n


async def test_a_confirmation_is_retried_with_backoff_until_ecs_answers(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make(sweeping=False)  # only the confirmation asks ECS
    (a,) = await known_running(ecs, watcher)
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=4)
    ecs.errors = [RuntimeError("ThrottlingException")] * 8  # 30 s of ECS trouble
    confirmed, refuted = counted("confirmed"), counted("refuted")
    watcher.apply_event(detail(ecs.tasks[a]))
    await clock.advance(40)
    backoff = [min(RETRY_MAX, RETRY_FIRST * 2**k) for k in range(8)]
    assert len(ecs.calls) == 9 and [round(g, 6) for g in gaps(ecs.times)] == backoff
    assert known(watcher, a).stopped and counted("confirmed") == confirmed + 1
    assert counted("refuted") == refuted


async def test_a_stopped_event_for_a_task_ecs_forgot_is_confirmed_by_missing_twice(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make(sweeping=False)
    (a,) = await known_running(ecs, watcher)
    del ecs.tasks[a]
    watcher.apply_event(detail(ecs_task(a, "STOPPED", version=4)))
    await clock.advance(WINDOW + RETRY_FIRST)
    assert len(ecs.calls) == 2 and known(watcher, a).stopped


async def test_a_users_stop_counts_as_confirmed_not_refuted(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    """The spawner's stop(): wait for STOPPED, then unwatch at once, while the event's confirmation runs."""
    watcher = make()
    (a,) = await known_running(ecs, watcher)

    async def stop() -> None:
        await watcher.wait_for(a, lambda s: s.stopped, timeout=30)
        watcher.unwatch(a)

    stopping = asyncio.create_task(stop())
    await settle()
    confirmed, refuted = counted("confirmed"), counted("refuted")
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=6, stopCode="UserInitiated")
    watcher.apply_event(detail(ecs.tasks[a]))
    await clock.advance(WINDOW)
    await stopping
    assert watcher.watched == 0
    assert counted("confirmed") == confirmed + 1 and counted("refuted") == refuted


async def test_a_stop_a_sweep_saw_first_is_confirmed_without_another_describe(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    (a,) = await known_running(ecs, watcher)
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=6)
    confirmed = counted("confirmed")
    assert watcher.apply_event(detail(ecs.tasks[a])) == "confirming"
    await watcher.refresh()  # a sweep gets there inside the window
    await clock.advance(WINDOW)
    assert len(ecs.calls) == 1 and counted("confirmed") == confirmed + 1


# ---- genuine events, duplicated and reordered, converge on ECS's answer --------------------

LIFE = ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(range(len(LIFE))), duplicates=st.lists(st.integers(0, len(LIFE) - 1), max_size=6))
def test_duplicated_and_reordered_events_converge_on_ecs(order: list[int], duplicates: list[int]) -> None:
    async def scenario() -> None:
        clock = Clock()
        ecs = ScriptedEcs(clock)
        watcher = TaskWatcher(ecs, CLUSTER, sweeping=False, clock=clock, sleep=clock.sleep)
        a = arn(1)
        ecs.tasks[a] = ecs_task(a, "RUNNING", version=len(LIFE), ip=REAL_IP)  # where the task now is
        watcher.watch(a)
        for i in [*order, *duplicates]:
            watcher.apply_event(detail(ecs_task(a, LIFE[i], version=i + 1, ip=FORGED_IP)))
        await clock.advance(5)
        snapshot = watcher.get(a)
        assert snapshot is not None and snapshot.running and snapshot.ip == REAL_IP
        assert snapshot.version == len(LIFE) and len(ecs.calls) == 1
        await watcher.close()

    asyncio.run(scenario())


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]
