"""The orphan sweeper: finds tasks this hub started that no spawner owns, and ends or re-adopts them.

A hub that dies between RunTask and committing the ARN, a task started by hand with the
hub's startedBy, or a spawner whose state was wiped all leave a task that bills forever
and that nothing watches. Every task the hub starts carries `startedBy=calliope-hub/<hub_id>`
and calliope:* tags, so one ListTasks (all pages) plus DescribeTasks (100 a call) finds them.

Safety comes first, because stopping a live server is worse than paying for an idle one:
- a task is a candidate only while it stays unowned for a whole grace period (longer than
  any start), counted from the first sweep that saw it unowned;
- a task whose tags name a server that is starting is never a candidate;
- ownership is read again right before acting, with no await between that read and the
  StopTask call, so a spawn that took the task in the meantime keeps it;
- an idle warm-pool task (`calliope:pool=idle`, no user yet) belongs to the pool keeper, which
  recycles it; once claimed it carries its user's tags and is swept like any server;
- a task tagged for another hub (two hub ids can share a startedBy) is never touched;
  a task with this hub's startedBy and no calliope:hub tag at all (started by hand, or by a
  tool that left the tags off) is this hub's by its startedBy, and swept like any other.

The core is plain code with an injectable clock; what "owned" means comes from an `Owners`
(the JupyterHub binding is calliope_hub.hub.owners, a fake in the tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from calliope_hub.ecs.api import EcsApi, EcsApiError
from calliope_hub.ecs.identity import POOL_IDLE, POOL_TAG, read_tags
from calliope_hub.observability.metrics import ORPHANS

log = logging.getLogger(__name__)

ORPHAN_STOP_REASON = "Orphan stopped by Calliope Hub"
#: a warm task no user has claimed: the pool keeper's (calliope_hub.pool), never an orphan
IDLE_POOL_TAG = {"key": POOL_TAG, "value": POOL_IDLE}
ACTIONS = ("stop", "dry-run", "off")

#: (user name, server name): the identity a task's calliope:user/server tags carry
ServerKey = tuple[str, str]


@dataclass
class Ownership:
    """What the hub owns at one moment.

    `arns`: every task ARN some spawner's state holds. `starting`: servers whose start is in
    progress (their task may exist before its ARN is known). `adoptable`: servers the hub
    believes running whose state lost the ARN.
    """

    arns: set[str] = field(default_factory=set)
    starting: set[ServerKey] = field(default_factory=set)
    adoptable: set[ServerKey] = field(default_factory=set)

    def claims(self, arn: str, key: ServerKey) -> bool:
        """Whether the task is owned or belongs to a start in progress: then it is never touched."""
        return arn in self.arns or key in self.starting


class Owners(Protocol):
    """The hub's side of the sweep: who owns what, and taking a task back into a spawner."""

    def ownership(self) -> Ownership:
        """Synchronous on purpose: nothing may change between this read and a StopTask."""

    def ownership_of(self, arn: str, key: ServerKey) -> Ownership:
        """`ownership()` as far as one task and its server go: the fresh re-read before acting on it.

        Synchronous for the same reason; narrow because a sweep may act on `max_actions` tasks,
        and a whole-hub read per task would be that many full reads on the event loop.
        """

    async def adopt(self, key: ServerKey, task: dict[str, Any]) -> bool:
        """Put the task back into the server's spawner; False when that is no longer safe."""


class OrphanApi(Protocol):
    """The EcsApi calls the sweeper makes (EcsApi itself, or a fake in the tests)."""

    async def list_tasks(
        self, cluster: str, *, started_by: str | None = ..., desired_status: str = ...
    ) -> list[str]: ...
    async def describe_all(self, cluster: str, arns: Sequence[str]) -> list[Any]: ...
    async def stop_task(self, cluster: str, arn: str, reason: str) -> dict[str, Any] | None: ...


@dataclass
class SweepReport:
    """What one sweep saw and did (also what the tests assert on)."""

    listed: int = 0
    unowned: int = 0
    found: list[str] = field(default_factory=list)  # newly seen unowned this sweep
    stopped: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    would_act: list[str] = field(default_factory=list)  # dry-run: due, but only logged


class OrphanSweeper:
    """One sweep at a time over one cluster's tasks with this hub's startedBy."""

    def __init__(
        self,
        api: OrphanApi | EcsApi,
        cluster: str,
        *,
        hub_id: str,
        started_by: str,
        owners: Owners,
        grace_period: float = 600.0,
        action: str = "stop",
        max_actions: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ):
        if action not in ACTIONS:
            raise ValueError(f"orphan action must be one of {', '.join(ACTIONS)}, not {action!r}")
        if grace_period < 0:
            raise ValueError(f"grace_period must be >= 0 seconds, not {grace_period!r}")
        self.api = api
        self.cluster = cluster
        self.hub_id = hub_id
        self.started_by = started_by
        self.owners = owners
        self.grace_period = grace_period
        self.action = action
        self.max_actions = max_actions
        self._clock = clock
        #: unowned task ARN -> clock when a sweep first saw it unowned
        self._first_seen: dict[str, float] = {}
        self.sweeps = 0

    async def sweep(self) -> SweepReport:
        """List, describe the unowned, and act on those unowned for longer than the grace period."""
        report = SweepReport()
        if self.action == "off":
            return report
        arns = await self.api.list_tasks(self.cluster, started_by=self.started_by, desired_status="RUNNING")
        report.listed = len(arns)
        ownership = self.owners.ownership()
        unowned = [arn for arn in arns if arn not in ownership.arns]
        report.unowned = len(unowned)
        candidates = await self._candidates(unowned, ownership)
        now = self._clock()
        report.found = [arn for arn in candidates if arn not in self._first_seen]
        ORPHANS.labels("found").inc(len(report.found))
        # forget tasks that became owned, started, or stopped: their grace starts over
        self._first_seen = {arn: self._first_seen.get(arn, now) for arn in candidates}
        overdue = [arn for arn in candidates if now - self._first_seen[arn] >= self.grace_period]
        # Bounded, because each action re-reads ownership; the rest keep their place in line.
        due = {arn: candidates[arn][0] for arn in overdue[: self.max_actions]}
        if due:
            await self._act(due, {arn: task for arn, (_, task) in candidates.items()}, report)
        self.sweeps += 1
        return report

    async def _candidates(
        self, unowned: list[str], ownership: Ownership
    ) -> dict[str, tuple[ServerKey, dict[str, Any]]]:
        """Unowned, live tasks tagged for this hub, not idle in a warm pool, and not of a server that is starting."""
        found: dict[str, tuple[ServerKey, dict[str, Any]]] = {}
        answers = await self.api.describe_all(self.cluster, unowned)
        for answer in answers:  # unknown is not orphaned: a failed chunk means this sweep acts on nothing
            if isinstance(answer, EcsApiError):
                raise answer
        for result in answers:
            for task in getattr(result, "tasks", ()):
                tags = read_tags(task.get("tags") or ())
                if tags.get("hub", self.hub_id) != self.hub_id or task.get("desiredStatus") == "STOPPED":
                    continue
                if IDLE_POOL_TAG in (task.get("tags") or ()):  # the pool keeper's, until a user claims it
                    continue
                key = (tags.get("user", ""), tags.get("server", ""))
                if not ownership.claims(task["taskArn"], key):
                    found[task["taskArn"]] = (key, task)
        return found

    async def _act(self, due: dict[str, ServerKey], tasks: dict[str, dict[str, Any]], report: SweepReport) -> None:
        for arn, key in due.items():
            ownership = self.owners.ownership_of(arn, key)  # fresh, and no await before the StopTask below
            if ownership.claims(arn, key):
                self._first_seen.pop(arn, None)
                continue
            if self.action == "dry-run":
                what = "re-adopt" if key in ownership.adoptable else "stop"
                log.warning("orphan task %s (user %r, server %r): would %s (dry run)", arn, *key, what)
                report.would_act.append(arn)
                continue
            if key in ownership.adoptable and await self.owners.adopt(key, tasks[arn]):
                log.warning("orphan task %s re-adopted by %r/%r", arn, *key)
                ORPHANS.labels("adopted").inc()
                report.adopted.append(arn)
            else:
                await self._stop(arn, key, report)
            self._first_seen.pop(arn, None)

    async def _stop(self, arn: str, key: ServerKey, report: SweepReport) -> None:
        try:
            await self.api.stop_task(self.cluster, arn, ORPHAN_STOP_REASON)
        except EcsApiError as e:
            log.warning("orphan task %s: StopTask failed (%s); the next sweep tries again", arn, e)
            return
        log.warning("orphan task %s (user %r, server %r) stopped", arn, *key)
        ORPHANS.labels("stopped").inc()
        report.stopped.append(arn)


async def sweep_forever(
    sweeper: OrphanSweeper,
    interval: float,
    *,
    may_sweep: Callable[[], Awaitable[bool]],
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Sweep every `interval` seconds while `may_sweep()` (e.g. this hub holds the lock); survives errors."""
    if interval <= 0:
        raise ValueError(f"the orphan sweep interval must be > 0 seconds, not {interval!r}")
    while True:
        try:
            if await may_sweep():
                report = await sweeper.sweep()
                if report.found or report.stopped or report.adopted:
                    log.info(
                        "orphan sweep of %s: %d listed, %d unowned, %d new, %d stopped, %d re-adopted",
                        sweeper.cluster,
                        report.listed,
                        report.unowned,
                        len(report.found),
                        len(report.stopped),
                        len(report.adopted),
                    )
        except Exception:
            log.exception("orphan sweep of %s failed; the next one runs as scheduled", sweeper.cluster)
        await sleep(interval)
