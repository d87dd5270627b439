"""A scripted ECS (DescribeTasks only, chunked as the hub chunks) and virtual time, for the watcher and event tests.

ECS is the one thing these unit tests fake: the tests assert on what the real TaskWatcher does
with ECS's answers. `Clock` is the watcher's one clock *and* its one sleep: time moves only
when a test calls `advance()`, so hours of sweep cadence run in microseconds and nothing
waits for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sequence
from typing import Any

from calliope_hub.ecs.api import CallGuard, DescribeResult, EcsApiError, describe_in_chunks
from calliope_hub.ecs.status.sweeper import TaskReader
from calliope_hub.ecsfacts import task_state_change_event

CLUSTER = "watcher-test"
CLUSTER_ARN = f"arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}"
NEVER = 3600.0  # an interval a test does not advance to
SETTLE_TURNS = 50  # loop turns `advance` gives woken coroutines to run to their next sleep


def arn(i: int) -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{i:032x}"


def ecs_task(
    task_arn: str, status: str = "RUNNING", version: int = 3, ip: str = "10.0.0.7", **extra: Any
) -> dict[str, Any]:
    """A DescribeTasks task as ECS answers it (only the keys the watcher reads)."""
    desired = "STOPPED" if status in ("DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED") else "RUNNING"
    task: dict[str, Any] = {"taskArn": task_arn, "lastStatus": status, "desiredStatus": desired, "version": version}
    if status == "RUNNING":
        task["containers"] = [{"name": "lab", "networkInterfaces": [{"privateIpv4Address": ip}]}]
    task.update(extra)
    return task


def event_for(task: dict[str, Any], cluster_arn: str = CLUSTER_ARN) -> dict[str, Any]:
    """The EventBridge event local ECS would send for `task`."""
    return task_state_change_event({**task, "clusterArn": cluster_arn}, region="us-east-1", account="123456789012")


async def settle(turns: int = SETTLE_TURNS) -> None:
    """Let every ready coroutine run until it waits again (the scripted ECS never blocks)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Clock:
    """Virtual time: `clock()` reads it, `sleep()` waits on it, `advance()` moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own moment, in order."""
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
                await settle()
        self.now = end
        await settle()


class ScriptedEcs(TaskReader):
    """Plays ECS for the watcher: answers from `tasks`, unknown ARNs come back MISSING.

    The watcher asks through `describe_all`, chunked by the hub's own chunker; each call it
    makes is one scripted `describe_tasks` (recorded, gated, failed as the test says).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[list[str]] = []
        self.times: list[float] = []  # the virtual time of each call, when a clock is given
        self.errors: list[BaseException] = []  # raised by the next calls, in order
        self.gate: asyncio.Event | None = None  # when set, calls block until it is set

    async def describe_all(
        self, cluster: str, arns: Sequence[str], *, concurrency: int = 4, within: CallGuard | None = None
    ) -> list[DescribeResult | EcsApiError]:
        return await describe_in_chunks(
            lambda chunk: self.describe_tasks(cluster, chunk), arns, concurrency=concurrency, within=within
        )

    async def describe_tasks(self, cluster: str, arns: Sequence[str]) -> DescribeResult:
        assert cluster == CLUSTER and 0 < len(arns) <= 100
        self.calls.append(list(arns))
        if self.clock is not None:
            self.times.append(self.clock())
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        missing = [a for a in arns if a not in self.tasks]
        return DescribeResult(
            tasks=[self.tasks[a] for a in arns if a in self.tasks],
            missing=missing,
            failures=[{"arn": a, "reason": "MISSING"} for a in missing],
        )
