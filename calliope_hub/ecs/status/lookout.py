"""Events are hints: an event can make the watcher ask ECS sooner, never tell it what is true.

Anyone who holds the events secret, or replays an old delivery, can send an event, so no
event is ever stored. A STOPPED event queues a *confirmation*; any other event that could
change what the hub does (a first sighting, RUNNING, a stop the hub did not know of) queues a
*look*. Both are batched over a short window into ⌈N/100⌉ DescribeTasks, and ECS's answer is
applied through the sweeper like any sweep's, so an address or a RUNNING state is only ever
believed from ECS itself, and a forged event cannot pin a task "in flux".

A round that ECS does not answer (a throttle, an outage, a first MISSING) is asked again with
backoff until it does, so a crash during ECS trouble is noticed as soon as ECS answers again.
A look at a task is not repeated sooner than `cooldown` after the last answer about it, so a
flood of events costs at most one DescribeTasks per 100 tasks per cooldown. A confirmation is
counted once, from ECS's own answer: `confirmed` or `refuted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.ecs.status.store import TaskStore
from calliope_hub.ecs.status.sweeper import Answers
from calliope_hub.ecs.status.timing import Timing
from calliope_hub.observability.metrics import EVENTS

log = logging.getLogger(__name__)

#: the first retry of an unanswered round waits this long; each further one twice as long
RETRY_FIRST = 0.5
#: ... up to this, so a task that died during an ECS outage is noticed within it of the end
RETRY_MAX = 4.0
#: an event's version may run at most this far ahead of ECS's last answer (ECS adds one a change)
MAX_VERSION_LEAP = 100
#: no real task's version comes near this; a larger one is forged
MAX_VERSION = 2**31 - 1
#: retries after which a still-unanswered confirmation is logged (it keeps being retried)
WARN_AFTER = 3


def _telling(event: TaskSnapshot, known: TaskSnapshot | None) -> bool:
    """Whether an event could change what the hub does, so it is worth a look before the next sweep.

    A first sighting, a RUNNING the hub has not seen (a server to route), or a stop it did
    not know of. Earlier stages of a task already known are left to the busy sweep, which
    describes tasks in flux anyway.
    """
    if known is None:
        return True
    if event.last_status == "RUNNING" and known.last_status != "RUNNING":
        return True
    return event.desired_status == "STOPPED" and known.desired_status != "STOPPED"


class Why(enum.IntEnum):
    """Why a task is to be described; a confirmation outranks a look."""

    LOOK = 1
    CONFIRM = 2


@dataclass
class _Due:
    why: Why
    at: float  # clock time the task is next described
    retries: int = 0


class Lookout:
    """The batcher of event-prompted DescribeTasks for one cluster."""

    def __init__(
        self,
        describe: Callable[[Sequence[str]], Awaitable[Answers]],
        store: TaskStore,
        timing: Timing,
        *,
        window: float,
        cooldown: float,
        cluster: str,
    ):
        if window < 0 or cooldown < 0:
            raise ValueError("the confirm window and the look cooldown must be >= 0")
        self._describe = describe
        self.store = store
        self.timing = timing
        self.window = window
        self.cooldown = cooldown
        self.cluster = cluster
        self._due: dict[str, _Due] = {}
        self._answered_at: dict[str, float] = {}  # ARN -> when ECS last answered a look at it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def hear(self, event: TaskSnapshot) -> str:
        """Judge one event about a watched task: the outcome the events metric counts.

        `stale`: not newer than ECS's last answer (or the task is known STOPPED);
        `implausible`: a version no real change sequence reaches; `confirming`: a STOPPED
        event, queued for confirmation; `hint`: any other, which queues a look when it could
        change what the hub does.
        """
        known = self.store.get(event.arn)
        if known is not None and (known.stopped or not event.supersedes(known)):
            return "stale"
        if event.version > MAX_VERSION or (known is not None and event.version > known.version + MAX_VERSION_LEAP):
            return "implausible"
        if event.stopped:
            self.confirm(event.arn)
            return "confirming"
        if _telling(event, known):
            self.look(event.arn)
        return "hint"

    def confirm(self, arn: str) -> None:
        """A STOPPED event: ask ECS after the window, and until it answers."""
        self._queue(arn, Why.CONFIRM, self.timing.clock() + self.window)

    def look(self, arn: str) -> None:
        """Any other telling event: ask ECS soon, but not sooner than `cooldown` after its last answer."""
        now = self.timing.clock()
        self._queue(arn, Why.LOOK, max(now + self.window, self._answered_at.get(arn, -self.cooldown) + self.cooldown))

    @property
    def pending(self) -> int:
        return len(self._due)

    def _queue(self, arn: str, why: Why, at: float) -> None:
        due = self._due.get(arn)
        if due is None:
            self._due[arn] = _Due(why, at)
        else:
            due.why, due.at = max(due.why, why), min(due.at, at)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        """Sleep until the earliest due task (a sooner one wakes us), then describe all that are due."""
        while self._due:
            now = self.timing.clock()
            first = min(due.at for due in self._due.values())
            if first > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await self.timing.within(self._wake.wait(), first - now)
                continue
            batch = {arn: due for arn, due in self._due.items() if due.at <= now}
            for arn in batch:
                del self._due[arn]
            arns = [arn for arn in batch if self._needs_look(arn, batch[arn])]
            if not arns:
                continue
            try:
                answers = await self._describe(arns)
            except Exception as e:  # never lose the batcher, nor the batch
                log.exception("%s: describing %d event-prompted tasks failed", self.cluster, len(arns))
                answers = Answers(unsure=set(arns), errors=[e])
            self._settle(batch, arns, answers)

    def _needs_look(self, arn: str, due: _Due) -> bool:
        """Unwatched tasks are forgotten; one a sweep already saw STOPPED needs no second answer."""
        known = self.store.get(arn)
        if known is None or not known.stopped:
            return self.store.watching(arn)
        if due.why is Why.CONFIRM:
            EVENTS.labels("confirmed").inc()
        return False

    def _settle(self, batch: dict[str, _Due], arns: list[str], answers: Answers) -> None:
        now = self.timing.clock()
        self._answered_at = {a: t for a, t in self._answered_at.items() if now - t < self.cooldown}
        for arn in arns:
            due = batch[arn]
            if arn in answers.unsure:
                self._retry(arn, due, now, answers)
                continue
            self._answered_at[arn] = now
            if due.why is Why.CONFIRM:
                EVENTS.labels("confirmed" if arn in answers.stopped else "refuted").inc()

    def _retry(self, arn: str, due: _Due, now: float, answers: Answers) -> None:
        """Ask again with backoff; a newer event queued meanwhile keeps its own, sooner time."""
        due.retries += 1
        if due.retries == WARN_AFTER and due.why is Why.CONFIRM:
            error = answers.errors[0] if answers.errors else "MISSING once"
            log.warning("%s: STOPPED for %s still unconfirmed (%s); asking ECS again", self.cluster, arn, error)
        self._queue(arn, due.why, now + min(RETRY_MAX, RETRY_FIRST * 2 ** (due.retries - 1)))
        self._due[arn].retries = max(self._due[arn].retries, due.retries)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
