"""The TaskWatcher: the one owner of task status for one ECS cluster in this process.

Stock ECS spawners describe their own task on every poll, so N servers cost N DescribeTasks
per interval and burn the 20/s read quota at ~600 servers. Here spawners only register ARNs
and read; the watcher is a facade over three parts, each with one concern:

- `TaskStore` (store.py, synchronous): version-ordered snapshots, waiters, stop callbacks.
  `get()` is what `poll()` reads, and a stop callback gets the very snapshot `get()` returns.
- `Sweeper` (sweeper.py): the one sweep loop, ⌈N/100⌉ DescribeTasks a sweep, single-flight
  refresh, MISSING streaks. Unknown is not stopped.
- `Lookout` (lookout.py): events are hints. An event never changes the store; it can only make
  the watcher ask ECS sooner, and a STOPPED one is confirmed by ECS until ECS answers.

All three time themselves with one injected `clock` and `sleep` (timing.py). Busy sweeps
describe only the tasks in flux, with or without events; every task is described once per
`sweep_interval`; with events on, the hub passes the reconcile interval (5 min) as
`sweep_interval`, because events can be lost. `sweeping=False` turns sweeps off entirely, for
a hub fed by `calliope-hub monitor`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.ecs.status.lookout import Lookout
from calliope_hub.ecs.status.store import OnStopped, Predicate, TaskNotWatched, TaskStore
from calliope_hub.ecs.status.sweeper import Cadence, Sweeper, TaskReader
from calliope_hub.ecs.status.timing import Clock, Sleep, Timing

__all__ = ["TaskNotWatched", "TaskWatcher"]


class TaskWatcher:
    """Batched, single-flight, version-ordered task status for one cluster.

    The HubRuntime builds one per cluster with this constructor and closes it; there is no
    process-wide registry.
    """

    def __init__(
        self,
        api: TaskReader,
        cluster: str,
        *,
        sweep_interval: float = 30.0,
        busy_interval: float = 1.5,
        jitter: float = 0.1,
        max_concurrency: int = 4,
        call_timeout: float = 10.0,
        sweeping: bool = True,
        confirm_window: float = 0.15,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ):
        """`clock` and `sleep` come as a pair: one alone would time against another clock."""
        if (clock is None) != (sleep is None):
            raise ValueError("inject clock and sleep together")
        real = Timing()
        self.timing = Timing(clock or real.clock, sleep or real.sleep, rng or real.rng)
        self.cluster = cluster
        self.store = TaskStore(cluster, self.timing.clock)
        cadence = Cadence(sweep_interval, busy_interval, jitter, max_concurrency, call_timeout)
        self.sweeper = Sweeper(api, self.store, cadence, self.timing, sweeping=sweeping)
        self.lookout = Lookout(
            self.sweeper.describe,
            self.store,
            self.timing,
            window=confirm_window,
            cooldown=busy_interval,
            cluster=cluster,
        )

    # ---- registration and reads -----------------------------------------------------------

    def watch(self, arn: str, on_stopped: OnStopped | None = None) -> None:
        """Track `arn`; `on_stopped` runs once, with the snapshot `get(arn)` returns from then on."""
        self.store.watch(arn, on_stopped)
        self.sweeper.wake()

    def unwatch(self, arn: str) -> None:
        self.store.unwatch(arn)

    def get(self, arn: str) -> TaskSnapshot | None:
        """ECS's newest answer about `arn` (a dict read). `.stopped` means ECS said so: no StopTask needed."""
        return self.store.get(arn)

    def staleness(self, arn: str) -> float | None:
        """Seconds since ECS last answered about `arn`; None when never, or not watched."""
        return self.store.staleness(arn)

    @property
    def watched(self) -> int:
        return len(self.store)

    # ---- observations ---------------------------------------------------------------------

    def apply(self, task: Mapping[str, Any] | TaskSnapshot) -> bool:
        """Store one of ECS's own answers (a DescribeTasks task): whether the snapshot changed."""
        snapshot = task if isinstance(task, TaskSnapshot) else TaskSnapshot.from_ecs(task, self.timing.clock())
        return self.store.apply(snapshot)

    def apply_event(self, detail: Mapping[str, Any]) -> str:
        """Hear an event's `detail` as a hint: ignored, stale, implausible, confirming or hint."""
        event = TaskSnapshot.from_ecs(detail, self.timing.clock())
        if not self.store.watching(event.arn):
            return "ignored"
        return self.lookout.hear(event)

    async def wait_for(self, arn: str, predicate: Predicate, timeout: float) -> TaskSnapshot:
        """The first snapshot of `arn` that satisfies `predicate` or is stopped.

        Resolved by ECS's answers only; raises TimeoutError (on the injected clock). While
        anyone waits, the task is swept at the busy cadence.
        """
        future = self.store.add_waiter(arn, predicate)
        if future.done():
            return future.result()
        self.sweeper.wake()
        try:
            return await self.timing.within(future, timeout)
        finally:
            self.store.drop_waiter(arn, future)

    # ---- sweeping -------------------------------------------------------------------------

    async def refresh(self, *, busy_only: bool = False) -> None:
        """Fresh status now: joins the sweep in flight, or starts one."""
        await self.sweeper.refresh(busy_only=busy_only)

    def next_delay(self) -> float:
        return self.sweeper.next_delay()

    async def close(self) -> None:
        """Stop the sweep loop, the event batcher and any sweep in flight; waiters are cancelled."""
        await self.lookout.close()
        await self.sweeper.close()
        self.store.cancel_waiters()
