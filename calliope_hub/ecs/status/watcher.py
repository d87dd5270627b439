"""The TaskWatcher: the one owner of task status for one ECS cluster in this process.

Stock ECS spawners describe their own task on every poll, so N servers cost N DescribeTasks
per interval and burn the 20/s read quota at ~600 servers. Here spawners only register
ARNs; one sweep loop per cluster describes all of them 100 at a time, and `poll()` becomes a
dict read. Observations enter through `apply`, which keeps the highest ECS `version` per
task, so sweeps and (later) EventBridge events can race without an old answer winning.

Unknown is not stopped: a failed or throttled sweep keeps the last known state and only a
STOPPED answer, or MISSING twice in a row, ends a task.

With events on (`events=True`), EventBridge's "ECS Task State Change" events deliver the
changes: non-terminal ones are applied directly (version-ordered), while a STOPPED event is
only a hint. Anyone who can reach the endpoint could forge one, and a stale one may describe
an earlier task, so the watcher confirms it with DescribeTasks, batched over a short window
(100 ARNs a call), and only ECS's answer ends a server. The full sweep then runs at the
reconcile cadence (`sweep_interval`, 5 min) because events can be lost, and busy sweeps
describe only the tasks in flux. `sweeping=False` turns sweeps off entirely, for a hub fed by
`calliope-hub monitor`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from calliope_hub.observability import emf
from calliope_hub.ecs.api import DESCRIBE_LIMIT, DescribeResult, EcsApi
from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.observability.metrics import EVENTS, SWEEP_DURATION, SWEEP_SIZE, WATCHED_TASKS

log = logging.getLogger(__name__)

OnStopped = Callable[[TaskSnapshot], Awaitable[None]]
UNSEEN = "UNKNOWN"  # the WATCHED_TASKS label of a task no sweep has seen yet
#: how often a STOPPED event's confirmation is retried when its DescribeTasks fails
CONFIRM_ATTEMPTS = 3


class TaskNotWatched(KeyError):
    """wait_for on a task nobody watches (or that was unwatched while waited for)."""


@dataclass
class _Watched:
    """The watcher's book-keeping for one task."""

    on_stopped: OnStopped | None = None
    snapshot: TaskSnapshot | None = None
    last_ok: float | None = None  # watcher clock of the last successful observation
    missing_streak: int = 0
    notified: bool = False
    waiters: list[tuple[Callable[[TaskSnapshot], bool], asyncio.Future[TaskSnapshot]]] = field(
        default_factory=list
    )

    @property
    def status(self) -> str:
        return self.snapshot.last_status if self.snapshot else UNSEEN


class TaskWatcher:
    """Batched, single-flight, version-ordered task status for one cluster."""

    _registry: ClassVar[dict[tuple[EcsApi, str], TaskWatcher]] = {}

    def __init__(
        self,
        api: EcsApi,
        cluster: str,
        *,
        sweep_interval: float = 30.0,
        busy_interval: float = 1.5,
        jitter: float = 0.1,
        max_concurrency: int = 4,
        call_timeout: float = 10.0,
        events: bool = False,
        sweeping: bool = True,
        confirm_window: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
    ):
        if sweep_interval <= 0 or busy_interval <= 0 or max_concurrency < 1 or not 0 <= jitter < 1:
            raise ValueError("intervals must be positive, max_concurrency >= 1 and 0 <= jitter < 1")
        if confirm_window < 0:
            raise ValueError("confirm_window must be >= 0")
        self.api = api
        self.cluster = cluster
        self.sweep_interval = sweep_interval
        self.busy_interval = busy_interval
        self.jitter = jitter
        self.max_concurrency = max_concurrency
        self.call_timeout = call_timeout
        self.events = events
        self.sweeping = sweeping
        self.confirm_window = confirm_window
        self._clock = clock
        self._tasks: dict[str, _Watched] = {}
        self._busy: set[str] = set()  # tasks that set the busy cadence (see _update_busy)
        self._by_status: collections.Counter[str] = collections.Counter()
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._callbacks: set[asyncio.Task[None]] = set()
        self._to_confirm: dict[str, int] = {}  # ARN -> confirmation attempts so far
        self._confirming: asyncio.Task[None] | None = None
        self._last_full_sweep = time.monotonic()
        self.sweeps = 0
        self.confirm_calls = 0

    @classmethod
    def for_cluster(cls, api: EcsApi, cluster: str, **options: Any) -> TaskWatcher:
        """The process's watcher for (api, cluster); `options` only apply when it is created."""
        watcher = cls._registry.get((api, cluster))
        if watcher is None:
            watcher = cls._registry[(api, cluster)] = cls(api, cluster, **options)
        return watcher

    @classmethod
    def existing(cls, api: EcsApi, cluster: str) -> TaskWatcher | None:
        """The process's watcher for (api, cluster) if one was made."""
        return cls._registry.get((api, cluster))

    @classmethod
    def for_cluster_arn(cls, cluster_arn: str) -> list[TaskWatcher]:
        """Every watcher of this process for the cluster an event names (by ARN or name)."""
        name = cluster_arn.rsplit("/", 1)[-1]
        return [w for (_, cluster), w in cls._registry.items() if cluster in (cluster_arn, name)]

    @classmethod
    async def close_all(cls) -> None:
        """Stop every registered watcher (at hub shutdown)."""
        for watcher in list(cls._registry.values()):
            await watcher.close()

    # ---- registration and reads -----------------------------------------------------------

    def watch(self, arn: str, on_stopped: OnStopped | None = None) -> None:
        """Track `arn`; `on_stopped` runs once when the task is first seen stopped."""
        watched = self._tasks.get(arn)
        if watched is None:
            watched = self._tasks[arn] = _Watched()
            self._count_status(None, UNSEEN)
            self._update_busy(arn, watched)
        if on_stopped is not None:
            watched.on_stopped = on_stopped
            if watched.snapshot is not None and watched.snapshot.stopped:
                self._notify_stopped(watched, watched.snapshot)
        self._ensure_loop()
        self._wake.set()

    def unwatch(self, arn: str) -> None:
        watched = self._tasks.pop(arn, None)
        if watched is None:
            return
        self._busy.discard(arn)
        self._count_status(watched.status, None)
        for _, future in watched.waiters:
            if not future.done():
                future.set_exception(TaskNotWatched(arn))

    def get(self, arn: str) -> TaskSnapshot | None:
        watched = self._tasks.get(arn)
        return watched.snapshot if watched else None

    def staleness(self, arn: str) -> float | None:
        """Seconds since `arn` was last observed; None when never observed or not watched."""
        watched = self._tasks.get(arn)
        if watched is None or watched.last_ok is None:
            return None
        return self._clock() - watched.last_ok

    @property
    def watched(self) -> int:
        return len(self._tasks)

    # ---- observations ---------------------------------------------------------------------

    def apply(self, task: dict[str, Any] | TaskSnapshot) -> bool:
        """Store an observation unless an equal or newer version is already known.

        Returns whether the stored snapshot changed. Unwatched ARNs are ignored.
        """
        snapshot = task if isinstance(task, TaskSnapshot) else TaskSnapshot.from_ecs(task, self._clock())
        watched = self._tasks.get(snapshot.arn)
        if watched is None:
            return False
        current = watched.snapshot
        if current is not None and (current.stopped or not snapshot.supersedes(current)):
            return False
        watched.snapshot = snapshot
        watched.last_ok = max(watched.last_ok or snapshot.observed_at, snapshot.observed_at)
        self._count_status(current.last_status if current else UNSEEN, snapshot.last_status)
        self._resolve_waiters(watched, snapshot)
        self._update_busy(snapshot.arn, watched)
        if snapshot.stopped:
            self._notify_stopped(watched, snapshot)
        return True

    def apply_event(self, detail: Mapping[str, Any]) -> str:
        """Take an event's `detail`: the outcome (applied, stale, ignored or confirming).

        A STOPPED event is not applied: it queues the task for a batched DescribeTasks, and
        ECS's answer decides. Events carry no tags, so a task keeps the tags it had.
        """
        snapshot = TaskSnapshot.from_ecs(detail, self._clock())
        watched = self._tasks.get(snapshot.arn)
        if watched is None:
            return "ignored"
        current = watched.snapshot
        if current is not None and (current.stopped or not snapshot.supersedes(current)):
            return "stale"
        if snapshot.stopped:
            self._confirm_soon(snapshot.arn)
            return "confirming"
        if current is not None and not snapshot.tags:
            snapshot = replace(snapshot, tags=current.tags)
        self.apply(snapshot)
        return "applied"

    async def wait_for(
        self, arn: str, predicate: Callable[[TaskSnapshot], bool], timeout: float
    ) -> TaskSnapshot:
        """The first snapshot of `arn` that satisfies `predicate` or is stopped.

        Resolved by sweeps and events through `apply`; raises asyncio.TimeoutError. While
        anyone waits, the task is swept at the busy cadence (e.g. a stop just requested).
        """
        watched = self._tasks.get(arn)
        if watched is None:
            raise TaskNotWatched(arn)
        current = watched.snapshot
        if current is not None and (current.stopped or predicate(current)):
            return current
        future: asyncio.Future[TaskSnapshot] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        watched.waiters.append(entry)
        self._update_busy(arn, watched)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in watched.waiters:
                watched.waiters.remove(entry)
                self._update_busy(arn, watched)

    def _update_busy(self, arn: str, watched: _Watched) -> None:
        """Busy tasks set the busy cadence: not yet seen, starting, stopping, or waited for."""
        snapshot = watched.snapshot
        in_flux = snapshot is None or snapshot.starting or snapshot.stopping
        if not (snapshot and snapshot.stopped) and (in_flux or watched.waiters):
            self._busy.add(arn)
        else:
            self._busy.discard(arn)

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

    # ---- sweeping -------------------------------------------------------------------------

    async def refresh(self, *, busy_only: bool = False) -> None:
        """Fresh status now: joins the sweep in flight, or starts one.

        `busy_only` describes just the tasks in flux (the events-mode busy sweep).
        """
        if self._inflight is None or self._inflight.done():
            if not busy_only:
                self._last_full_sweep = time.monotonic()
            self._inflight = asyncio.ensure_future(self._sweep(busy_only))
        await asyncio.shield(self._inflight)

    async def _sweep(self, busy_only: bool = False) -> None:
        """Describe every live watched task, 100 a call, at most max_concurrency calls at once."""
        arns = [
            arn
            for arn, w in self._tasks.items()
            if not (w.snapshot and w.snapshot.stopped) and (not busy_only or arn in self._busy)
        ]
        if not arns:
            return
        started = time.perf_counter()
        failed, calls = await self._describe_all(arns)
        if failed:
            self._warn_stale(failed, calls)
        self.sweeps += 1
        SWEEP_SIZE.labels(self.cluster).set(len(arns))
        elapsed = time.perf_counter() - started
        SWEEP_DURATION.labels(self.cluster).observe(elapsed)
        emf.poll(elapsed, len(arns))

    async def _describe_all(
        self, arns: Sequence[str]
    ) -> tuple[list[tuple[Sequence[str], BaseException]], int]:
        """DescribeTasks over `arns`, 100 a call, bounded concurrency: (failed chunks, calls)."""
        gate = asyncio.Semaphore(self.max_concurrency)
        chunks = [arns[i : i + DESCRIBE_LIMIT] for i in range(0, len(arns), DESCRIBE_LIMIT)]
        errors = await asyncio.gather(*(self._sweep_chunk(chunk, gate) for chunk in chunks))
        return [(chunk, error) for chunk, error in zip(chunks, errors) if error is not None], len(chunks)

    # ---- confirming STOPPED events ----------------------------------------------------------

    def _confirm_soon(self, arn: str) -> None:
        """Queue `arn` for the next batched confirmation; one batcher runs at a time."""
        self._to_confirm.setdefault(arn, 0)
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.get_running_loop().create_task(self._confirm_pending())

    async def _confirm_pending(self) -> None:
        """Collect STOPPED events for `confirm_window`, then ask ECS about all of them at once."""
        while self._to_confirm:
            await asyncio.sleep(self.confirm_window)
            batch, self._to_confirm = self._to_confirm, {}
            arns = [arn for arn in batch if arn in self._tasks]
            try:
                failed, calls = await self._describe_all(arns)
            except Exception:  # never lose the batcher: the sweep still reconciles
                log.exception("%s: confirming STOPPED events failed", self.cluster)
                continue
            self.confirm_calls += calls
            self._count_confirmations(arns, batch, {arn for chunk, _ in failed for arn in chunk})

    def _count_confirmations(self, arns: list[str], attempts: dict[str, int], failed: set[str]) -> None:
        for arn in arns:
            if arn in failed:
                if attempts[arn] + 1 < CONFIRM_ATTEMPTS:
                    self._to_confirm[arn] = max(self._to_confirm.get(arn, 0), attempts[arn] + 1)
                else:
                    log.warning("%s: could not confirm STOPPED for %s; the sweep will", self.cluster, arn)
                continue
            snapshot = self.get(arn)
            EVENTS.labels("confirmed" if snapshot and snapshot.stopped else "refuted").inc()

    async def _sweep_chunk(self, arns: Sequence[str], gate: asyncio.Semaphore) -> BaseException | None:
        """One DescribeTasks; returns its error instead of raising, so a chunk never ends a sweep."""
        async with gate:
            try:
                result = await asyncio.wait_for(self.api.describe_tasks(self.cluster, arns), self.call_timeout)
            except Exception as e:
                return e
        self._observe(result, self._clock())
        return None

    def _observe(self, result: DescribeResult, now: float) -> None:
        for task in result.tasks:
            watched = self._tasks.get(task.get("taskArn", ""))
            if watched is None:
                continue
            watched.missing_streak = 0
            watched.last_ok = now
            self.apply(TaskSnapshot.from_ecs(task, now))
        for arn in result.missing:
            watched = self._tasks.get(arn)
            if watched is None:
                continue
            watched.missing_streak += 1
            if watched.missing_streak >= 2:
                self.apply(TaskSnapshot.missing(arn, now, watched.snapshot))

    def _warn_stale(self, failed: list[tuple[Sequence[str], BaseException]], calls: int) -> None:
        now = self._clock()
        arns = [arn for chunk, _ in failed for arn in chunk]
        ages = [now - w.last_ok for w in map(self._tasks.get, arns) if w and w.last_ok is not None]
        log.warning(
            "%s: %d of %d DescribeTasks calls failed (%r); %d tasks keep their last known state, "
            "the stalest observed %.1fs ago",
            self.cluster,
            len(failed),
            calls,
            failed[0][1],
            len(arns),
            max(ages, default=0.0),
        )

    # ---- the loop -------------------------------------------------------------------------

    def next_delay(self) -> float:
        """Seconds to the next sweep: busy_interval while any task is in flux, else jittered."""
        if self._busy:
            return self.busy_interval
        return self.sweep_interval * (1 + random.uniform(-self.jitter, self.jitter))

    def _ensure_loop(self) -> None:
        if not self.sweeping:
            return
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _busy_only_due(self) -> bool:
        """With events on, a busy sweep between reconciles describes only the tasks in flux."""
        return self.events and time.monotonic() - self._last_full_sweep < self.sweep_interval

    async def _run(self) -> None:
        """The one sweep loop: sleep, sweep, repeat; survives any error."""
        while True:
            await self._sleep_until_due()
            try:
                await self.refresh(busy_only=self._busy_only_due())
            except Exception:
                log.exception("%s: sweep failed; the next one runs as scheduled", self.cluster)

    async def _sleep_until_due(self) -> None:
        """Sleep for next_delay(); a new watch re-evaluates it (e.g. idle → busy)."""
        due = time.monotonic() + self.next_delay()
        while (remaining := due - time.monotonic()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            due = min(due, time.monotonic() + self.next_delay())

    async def close(self) -> None:
        """Stop the loop and any sweep in flight; waiters are cancelled."""
        if self._registry.get((self.api, self.cluster)) is self:
            del self._registry[(self.api, self.cluster)]
        for task in (self._loop_task, self._inflight, self._confirming):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for watched in self._tasks.values():
            for _, future in watched.waiters:
                future.cancel()
