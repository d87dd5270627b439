"""The synchronous half of the TaskWatcher: what this hub knows about each watched task.

Nothing here awaits or talks to ECS, so every read (`get`, which is what `poll()` uses) is a
dict lookup and every write is one version comparison. Observations come in through `apply`,
which keeps the newest ECS `version` per task, so a slow sweep can never overwrite a newer
answer, and STOPPED is final. Who waits for what (`add_waiter`) and who is told of a stop
(`watch(on_stopped=...)`) live beside the snapshot they depend on.

Only ECS's own answers are applied here: events never reach the store (see lookout.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.ecs.status.timing import Clock
from calliope_hub.observability.metrics import WATCHED_TASKS

log = logging.getLogger(__name__)

OnStopped = Callable[[TaskSnapshot], Awaitable[None]]
Predicate = Callable[[TaskSnapshot], bool]
UNSEEN = "UNKNOWN"  # the WATCHED_TASKS label of a task ECS has not described yet


class TaskNotWatched(KeyError):
    """wait_for on a task nobody watches (or that was unwatched while waited for)."""


@dataclass
class _Watched:
    """The store's book-keeping for one task."""

    on_stopped: OnStopped | None = None
    snapshot: TaskSnapshot | None = None
    last_ok: float | None = None  # clock time of the last answer ECS gave about the task
    notified: bool = False
    waiters: list[tuple[Predicate, asyncio.Future[TaskSnapshot]]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.snapshot.last_status if self.snapshot else UNSEEN


class TaskStore:
    """Version-ordered snapshots, waiters and stop callbacks for one cluster's tasks."""

    def __init__(self, cluster: str, clock: Clock):
        self.cluster = cluster
        self._clock = clock
        self._tasks: dict[str, _Watched] = {}
        #: tasks that set the busy cadence: not yet seen, starting, stopping, or waited for
        self.busy: set[str] = set()
        self._by_status: collections.Counter[str] = collections.Counter()
        self._callbacks: set[asyncio.Task[None]] = set()

    # ---- membership -----------------------------------------------------------------------

    def watch(self, arn: str, on_stopped: OnStopped | None = None) -> None:
        """Track `arn`; `on_stopped` runs once, with the stored STOPPED snapshot."""
        watched = self._tasks.get(arn)
        if watched is None:
            watched = self._tasks[arn] = _Watched()
            self._count_status(None, UNSEEN)
            self._update_busy(arn, watched)
        if on_stopped is not None:
            watched.on_stopped = on_stopped
            if watched.snapshot is not None and watched.snapshot.stopped:
                self._notify_stopped(watched, watched.snapshot)

    def unwatch(self, arn: str) -> None:
        watched = self._tasks.pop(arn, None)
        if watched is None:
            return
        self.busy.discard(arn)
        self._count_status(watched.status, None)
        for _, future in watched.waiters:
            if not future.done():
                future.set_exception(TaskNotWatched(arn))

    def watching(self, arn: str) -> bool:
        return arn in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    # ---- reads ----------------------------------------------------------------------------

    def get(self, arn: str) -> TaskSnapshot | None:
        """The newest snapshot ECS gave; once STOPPED, the very object the stop callback got."""
        watched = self._tasks.get(arn)
        return watched.snapshot if watched else None

    def staleness(self, arn: str) -> float | None:
        """Seconds since ECS last answered about `arn`; None when never, or not watched."""
        watched = self._tasks.get(arn)
        if watched is None or watched.last_ok is None:
            return None
        return self._clock() - watched.last_ok

    def oldest_answer(self, arns: list[str]) -> float:
        """Seconds since the stalest of `arns` was last answered for (0 when none was)."""
        now = self._clock()
        ages = [now - w.last_ok for w in map(self._tasks.get, arns) if w and w.last_ok is not None]
        return max(ages, default=0.0)

    def live(self, *, busy_only: bool = False) -> list[str]:
        """The tasks worth describing: not known STOPPED (and in flux, when `busy_only`)."""
        if busy_only:
            return list(self.busy)
        return [arn for arn, w in self._tasks.items() if not (w.snapshot and w.snapshot.stopped)]

    # ---- writes ---------------------------------------------------------------------------

    def answered(self, arn: str, now: float) -> None:
        """ECS answered about `arn` (even with nothing new): it is not stale."""
        watched = self._tasks.get(arn)
        if watched is not None:
            watched.last_ok = now if watched.last_ok is None else max(watched.last_ok, now)

    def apply(self, snapshot: TaskSnapshot) -> bool:
        """Store an observation unless an equal or newer version is known: whether it changed.

        Unwatched ARNs are ignored, and nothing supersedes STOPPED.
        """
        watched = self._tasks.get(snapshot.arn)
        if watched is None:
            return False
        current = watched.snapshot
        if current is not None and (current.stopped or not snapshot.supersedes(current)):
            return False
        watched.snapshot = snapshot
        self._count_status(current.last_status if current else UNSEEN, snapshot.last_status)
        self._resolve_waiters(watched, snapshot)
        self._update_busy(snapshot.arn, watched)
        if snapshot.stopped:
            self._notify_stopped(watched, snapshot)
        return True

    # ---- waiters --------------------------------------------------------------------------

    def add_waiter(self, arn: str, predicate: Predicate) -> asyncio.Future[TaskSnapshot]:
        """A future for the first snapshot that satisfies `predicate` or is stopped.

        Already resolved when the current snapshot does. A waited-for task is busy: swept at
        the busy cadence until `drop_waiter` (e.g. a stop just requested).
        """
        watched = self._tasks.get(arn)
        if watched is None:
            raise TaskNotWatched(arn)
        future: asyncio.Future[TaskSnapshot] = asyncio.get_running_loop().create_future()
        current = watched.snapshot
        if current is not None and (current.stopped or predicate(current)):
            future.set_result(current)
            return future
        watched.waiters.append((predicate, future))
        self._update_busy(arn, watched)
        return future

    def drop_waiter(self, arn: str, future: asyncio.Future[TaskSnapshot]) -> None:
        watched = self._tasks.get(arn)
        if watched is None:
            return
        watched.waiters = [entry for entry in watched.waiters if entry[1] is not future]
        self._update_busy(arn, watched)

    def cancel_waiters(self) -> None:
        for watched in self._tasks.values():
            for _, future in watched.waiters:
                future.cancel()

    def _resolve_waiters(self, watched: _Watched, snapshot: TaskSnapshot) -> None:
        for entry in list(watched.waiters):
            predicate, future = entry
            try:
                done = future.done() or snapshot.stopped or predicate(snapshot)
                if not future.done() and done:
                    future.set_result(snapshot)
            except Exception as e:  # a broken predicate fails its own waiter, nobody else
                future.set_exception(e)
                done = True
            if done:
                watched.waiters.remove(entry)

    # ---- internals ------------------------------------------------------------------------

    def _update_busy(self, arn: str, watched: _Watched) -> None:
        snapshot = watched.snapshot
        in_flux = snapshot is None or snapshot.starting or snapshot.stopping
        if not (snapshot and snapshot.stopped) and (in_flux or watched.waiters):
            self.busy.add(arn)
        else:
            self.busy.discard(arn)

    def _notify_stopped(self, watched: _Watched, snapshot: TaskSnapshot) -> None:
        if watched.notified or watched.on_stopped is None:
            return
        watched.notified = True
        callback = asyncio.get_running_loop().create_task(self._run_callback(watched.on_stopped, snapshot))
        self._callbacks.add(callback)
        callback.add_done_callback(self._callbacks.discard)

    async def _run_callback(self, on_stopped: OnStopped, snapshot: TaskSnapshot) -> None:
        try:
            await on_stopped(snapshot)
        except Exception:
            log.exception("on_stopped callback for %s failed", snapshot.arn)

    def _count_status(self, old: str | None, new: str | None) -> None:
        for status, delta in ((old, -1), (new, 1)):
            if status is not None:
                self._by_status[status] += delta
                WATCHED_TASKS.labels(self.cluster, status).set(self._by_status[status])
