"""The stock status pattern, kept only as the benchmark's baseline: `NaiveECSSpawner`.

fargatespawner and awsspawner ask ECS about one task per server per poll, on JupyterHub's
own timer per spawner, with no client-side quota limiter. The bench selects this class with
`c.JupyterHub.spawner_class = "calliope_hub.tools.baseline.NaiveECSSpawner"`, so both
patterns are measured side by side on the same client, quota and poll interval. It starts
and stops tasks exactly as ECSSpawner does (the shared watcher follows a task only until it
is RUNNING, and again while it stops); nothing in the product uses it.
"""

from __future__ import annotations

import time
from typing import ClassVar

from calliope_hub.ecs.api import EcsApiError
from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.spawner import ECSSpawner, exit_status


class NaiveECSSpawner(ECSSpawner):
    """One DescribeTasks per server per poll, as the stock ECS spawners make."""

    client_quotas: ClassVar[bool] = False

    async def poll(self) -> int | None:
        if not self.task_arn:
            return 0
        api = await self._ecs()
        try:
            result = await api.describe_tasks(self.cluster, [self.task_arn])
        except EcsApiError:
            return None  # unknown is not stopped
        if not result.tasks:
            return None
        return exit_status(TaskSnapshot.from_ecs(result.tasks[0], observed_at=time.monotonic()))

    def start_polling(self) -> None:
        """JupyterHub's own PeriodicCallback per spawner, calling poll() every poll_interval."""
        super(ECSSpawner, self).start_polling()

    async def _wait_until_answering(self, url: str) -> None:
        """Once started, the server is tracked only by its own DescribeTasks per poll."""
        await super()._wait_until_answering(url)
        (await self._status()).unwatch(self.task_arn)
