"""A scripted stand-in for EcsApi's DescribeTasks and an injectable clock.

ECS is the one thing these unit tests fake: the watcher and event tests assert on what
the real TaskWatcher does with ECS's answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from calliope_hub.ecs.api import DescribeResult
from calliope_hub.localecs.events import task_state_change_event

CLUSTER = "watcher-test"
NEVER = 3600.0  # an interval no test waits for, so only explicit refresh() sweeps


def arn(i: int) -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{i:032x}"


def ecs_task(task_arn: str, status: str = "RUNNING", version: int = 3, **extra: Any) -> dict[str, Any]:
    """A DescribeTasks task as ECS answers it (only the keys the watcher reads)."""
    desired = "STOPPED" if status in ("DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED") else "RUNNING"
    task: dict[str, Any] = {"taskArn": task_arn, "lastStatus": status, "desiredStatus": desired, "version": version}
    if status == "RUNNING":
        task["containers"] = [{"name": "lab", "networkInterfaces": [{"privateIpv4Address": "10.0.0.7"}]}]
    task.update(extra)
    return task


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedEcs:
    """Plays ECS for the watcher: answers from `tasks`, unknown ARNs come back MISSING."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[list[str]] = []
        self.errors: list[BaseException] = []  # raised by the next calls, in order
        self.gate: asyncio.Event | None = None  # when set, calls block until it is set

    async def describe_tasks(self, cluster: str, arns: Sequence[str]) -> DescribeResult:
        assert cluster == CLUSTER and 0 < len(arns) <= 100
        self.calls.append(list(arns))
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


CLUSTER_ARN = f"arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}"


def event_for(task: dict[str, Any], cluster_arn: str = CLUSTER_ARN) -> dict[str, Any]:
    """The EventBridge event local ECS would send for `task`."""
    return task_state_change_event({**task, "clusterArn": cluster_arn}, region="us-east-1", account="123456789012")
