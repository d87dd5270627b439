"""The TaskWatcher's own loop on virtual time: busy and idle cadence, jitter, reconcile, wake-ups.

The watcher gets the test's clock and sleep, so its loop really runs: every DescribeTasks the
scripted ECS sees is stamped with the virtual time it was made at, and the tests assert on the
gaps between them. No interval is set to an hour to keep the loop away, and nothing waits for
real.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

import pytest

from calliope_hub.ecs.status import TaskWatcher
from tests.ecs.scripted import Clock, ScriptedEcs, arn, ecs_task

SWEEP, BUSY, JITTER = 30.0, 1.5, 0.1


@pytest.fixture
def make(watchers: Callable[..., TaskWatcher]) -> Callable[..., TaskWatcher]:
    """Watchers polling at SWEEP with jitter, busy at BUSY."""
    defaults = {"sweep_interval": SWEEP, "busy_interval": BUSY, "jitter": JITTER}
    return lambda **options: watchers(**{**defaults, "rng": random.Random(7), **options})


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_busy_cadence_while_starting_then_the_idle_cadence(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    start = clock.now
    watcher.watch(a)
    await clock.advance(4 * BUSY)
    assert ecs.times == [start + BUSY * k for k in (1, 2, 3, 4)]
    ecs.tasks[a] = ecs_task(a, "RUNNING", version=2)
    await clock.advance(BUSY)  # this sweep sees RUNNING: the task settles
    settled = clock.now
    await clock.advance(SWEEP * (1 - JITTER) - 0.01)
    assert len(ecs.times) == 5  # nothing before the jittered idle interval can end
    await clock.advance(SWEEP * 2 * JITTER + 0.02)
    assert len(ecs.times) == 6 and SWEEP * (1 - JITTER) <= ecs.times[-1] - settled <= SWEEP * (1 + JITTER)


async def test_idle_sweeps_are_jittered_within_bounds(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    a = arn(1)
    ecs.tasks[a] = ecs_task(a)
    watcher.watch(a)
    await clock.advance(BUSY)  # first sighting, at the busy cadence
    await clock.advance(60 * SWEEP)
    idle = gaps(ecs.times)
    assert len(idle) >= 50
    assert all(SWEEP * (1 - JITTER) <= gap <= SWEEP * (1 + JITTER) for gap in idle)
    assert min(idle) < SWEEP * 0.95 and max(idle) > SWEEP * 1.05  # spread out, not one fixed beat


async def test_a_new_watch_wakes_an_idle_loop(ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]) -> None:
    watcher = make()
    a, b = arn(1), arn(2)
    ecs.tasks[a] = ecs_task(a)
    ecs.tasks[b] = ecs_task(b, "PENDING", version=1)
    watcher.watch(a)
    await clock.advance(BUSY)
    assert len(ecs.calls) == 1  # now idle: the next sweep is ~30 s away
    await clock.advance(5)
    watcher.watch(b)
    await clock.advance(BUSY)
    assert len(ecs.calls) == 2 and ecs.times[-1] == ecs.times[0] + 5 + BUSY
    assert ecs.calls[-1] == [b]  # the settled task waits for the full sweep


async def test_a_waited_for_task_is_swept_at_the_busy_cadence_until_it_settles(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    a = arn(1)
    ecs.tasks[a] = ecs_task(a)
    watcher.watch(a)
    await clock.advance(BUSY)
    waiting = asyncio.create_task(watcher.wait_for(a, lambda s: s.stopped, timeout=60))  # a stop was just sent
    await clock.advance(3 * BUSY)
    assert gaps(ecs.times) == [BUSY] * 3
    ecs.tasks[a] = ecs_task(a, "STOPPED", version=4)
    await clock.advance(BUSY)
    assert (await waiting).stopped
    await clock.advance(10 * SWEEP)
    assert len(ecs.calls) == 5  # a stopped task is never described again


async def test_the_loop_survives_a_failing_sweep(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    watcher = make()
    a = arn(1)
    ecs.tasks[a] = ecs_task(a, "PENDING", version=1)
    ecs.errors = [RuntimeError("first sweep blows up")]
    watcher.watch(a)
    await clock.advance(2 * BUSY)
    assert len(ecs.calls) == 2 and watcher.get(a) is not None


async def test_busy_sweeps_describe_only_tasks_in_flux_and_the_full_sweep_describes_all(
    ecs: ScriptedEcs, clock: Clock, make: Callable[..., TaskWatcher]
) -> None:
    """The full sweep runs at sweep_interval (the poll, or with events the reconcile): between
    full sweeps a spawn in progress costs one DescribeTasks per busy sweep, not one per 100
    watched tasks."""
    reconcile = 300.0
    watcher = make(sweep_interval=reconcile)
    settled = [arn(i) for i in range(150)]
    for a in settled:
        ecs.tasks[a] = ecs_task(a)
        watcher.watch(a)
    await watcher.refresh()  # the first full sweep
    assert len(ecs.calls) == 2
    starting = arn(1000)
    ecs.tasks[starting] = ecs_task(starting, "PENDING", version=1)
    watcher.watch(starting)
    await clock.advance(3 * BUSY)
    assert ecs.calls[2:] == [[starting]] * 3  # the 150 settled tasks wait for the reconcile
    ecs.tasks[starting] = ecs_task(starting, "RUNNING", version=2)
    await clock.advance(BUSY)
    quiet = len(ecs.calls)
    await clock.advance(reconcile * (1 - JITTER) - 0.01)
    assert len(ecs.calls) == quiet  # nothing between full sweeps once nothing is in flux
    await clock.advance(reconcile * 2 * JITTER + 0.02)
    assert len(ecs.calls) == quiet + 2 and sorted([a for call in ecs.calls[quiet:] for a in call]) == sorted(
        [*settled, starting]
    )
