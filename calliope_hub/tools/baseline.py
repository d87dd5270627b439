"""The bench's baselines, kept out of the product: `NaiveECSSpawner` and `FloorSpawner`.

`FloorSpawner` is JupyterHub's own floor: a spawner that costs nothing (start returns a
stub URL, poll says running), run with the same hub, proxy and database as the product, so
every batched figure has what JupyterHub alone does beside it in the same bench run.

`NaiveECSSpawner` is the stock status pattern: fargatespawner and awsspawner ask ECS about
one task per server per poll, on JupyterHub's own timer per spawner, with no client-side
quota limiter. The bench selects this class with
`c.JupyterHub.spawner_class = "calliope_hub.tools.baseline.NaiveECSSpawner"`, so both
patterns are measured side by side on the same client, quota and poll interval. It starts
and stops tasks exactly as ECSSpawner does (the shared watcher follows a task only until it
is RUNNING, and again while it stops). Nothing in the product uses either.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from jupyterhub.spawner import Spawner
from traitlets import Unicode

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


class FloorSpawner(Spawner):
    """Zero cost: no task, no poll traffic; every server is a route to one stub HTTP server.

    JupyterHub checks each new server's URL answers (any HTTP status below 500), so the
    bench runs one stub that answers every path. The running flag lives in the server's
    state, so a restarted hub finds the servers it had, as it would with real ones.
    """

    stub_url = Unicode(config=True, help="URL every server's route points at: a server that answers any path")

    _running: bool = False

    async def start(self) -> str:
        if not self.stub_url:
            raise ValueError("FloorSpawner.stub_url is not set: the bench's stub server URL")
        self._running = True
        return str(self.stub_url)

    async def poll(self) -> int | None:
        return None if self._running else 0

    async def stop(self, now: bool = False) -> None:
        self._running = False

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._running:
            state["floor_running"] = True
        return dict(state)

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._running = bool(state.get("floor_running"))

    def clear_state(self) -> None:
        super().clear_state()
        self._running = False
