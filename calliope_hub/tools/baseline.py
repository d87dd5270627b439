"""The stock status pattern, kept only as the benchmark's baseline.

fargatespawner and awsspawner ask ECS about one task per server per poll. `calliope-hub
bench --mode naive` runs the same spawner with this poller so the two patterns are
measured side by side on the same client, quota and poll interval. Nothing in the
product uses it.
"""

from __future__ import annotations

import time

from calliope_hub.ecs.api import EcsApi, EcsApiError
from calliope_hub.ecs.snapshot import TaskSnapshot


class PerTaskPoller:
    """One DescribeTasks call for one task, as the stock spawners make on every poll."""

    def __init__(self, api: EcsApi, cluster: str):
        self.api = api
        self.cluster = cluster

    async def status(self, arn: str) -> TaskSnapshot | None:
        """The task's snapshot, or None when ECS could not say (unknown is not stopped)."""
        try:
            result = await self.api.describe_tasks(self.cluster, [arn])
        except EcsApiError:
            return None
        if not result.tasks:
            return None
        return TaskSnapshot.from_ecs(result.tasks[0], observed_at=time.monotonic())
