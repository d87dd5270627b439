"""EventBridge "ECS Task State Change" events into the TaskWatcher: validation and a bounded queue.

Both inputs (the hub's HTTP endpoint for API destinations, and the SQS consumer) end here.
Validation is all-or-nothing per delivery, so a batch with one malformed event changes
nothing. Events that are well formed but not ours (another source, detail-type or cluster)
are counted and acknowledged: EventBridge retries only 5xx/429, so answering 4xx for them
would only lose them, and answering 5xx would make it retry them forever.

The HTTP endpoint must answer within 5 s, so it only validates and queues; one worker applies.
The queue is bounded: when it is full the endpoint answers 503 and EventBridge retries later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from calliope_hub.ecs.snapshot import _epoch
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.ecsfacts import LIFECYCLE
from calliope_hub.observability.metrics import EVENT_LAG, EVENTS

log = logging.getLogger(__name__)

SOURCE = "aws.ecs"
DETAIL_TYPE = "ECS Task State Change"
#: a delivery larger than this is refused (EventBridge events are at most 256 KiB each)
MAX_BATCH = 1000


class EventFormatError(ValueError):
    """A delivery that is not JSON, not events, or an ECS task event missing its fields."""


class QueueFull(RuntimeError):
    """The ingestion queue is full; the sender should retry later (HTTP 503)."""


@dataclass(frozen=True)
class TaskStateChange:
    """One validated task state change, as the watcher needs it."""

    cluster_arn: str
    detail: Mapping[str, Any]
    #: epoch seconds of the change (detail.updatedAt, else the event's `time`), for EVENT_LAG
    changed_at: float | None


def parse_delivery(body: bytes | str) -> list[Any]:
    """One event or a JSON list of events, as a list; EventFormatError for anything else."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise EventFormatError(f"the body is not JSON: {e}") from None
    events = decoded if isinstance(decoded, list) else [decoded]
    if not events:
        raise EventFormatError("an empty list holds no events")
    if len(events) > MAX_BATCH:
        raise EventFormatError(f"at most {MAX_BATCH} events per delivery, got {len(events)}")
    return events


def _require(detail: Mapping[str, Any], key: str, kind: type, index: int) -> Any:
    value = detail.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or value == "":
        raise EventFormatError(f"event {index}: detail.{key} must be a non-empty {kind.__name__}")
    return value


def task_state_change(event: Any, index: int = 0) -> TaskStateChange | None:
    """The change an event carries; None for an event that is not an ECS task state change.

    Raises EventFormatError for an ECS task state change that lacks what the watcher needs.
    """
    if not isinstance(event, dict):
        raise EventFormatError(f"event {index} is not a JSON object")
    source, detail_type = event.get("source"), event.get("detail-type")
    if not isinstance(source, str) or not isinstance(detail_type, str):
        raise EventFormatError(f"event {index}: 'source' and 'detail-type' must be strings")
    if source != SOURCE or detail_type != DETAIL_TYPE:
        return None
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise EventFormatError(f"event {index}: 'detail' must be an object")
    _require(detail, "taskArn", str, index)
    cluster_arn = _require(detail, "clusterArn", str, index)
    if _require(detail, "lastStatus", str, index) not in LIFECYCLE:
        raise EventFormatError(f"event {index}: detail.lastStatus {detail['lastStatus']!r} is not an ECS status")
    if _require(detail, "version", int, index) < 0:
        raise EventFormatError(f"event {index}: detail.version must be >= 0")
    changed_at = _epoch(detail.get("updatedAt")) or _epoch(event.get("time"))
    return TaskStateChange(cluster_arn, detail, changed_at)


@dataclass
class Sorted:
    """A validated delivery: the changes for clusters this hub watches, and how many were not."""

    changes: list[TaskStateChange]
    ignored: int


WatchersOf = Callable[[str], list[TaskWatcher]]


def sort_delivery(events: list[Any], watchers_of: WatchersOf = TaskWatcher.for_cluster_arn) -> Sorted:
    """Validate every event first (EventFormatError changes nothing), then keep ours."""
    parsed = [task_state_change(event, i) for i, event in enumerate(events)]
    changes = [c for c in parsed if c is not None and watchers_of(c.cluster_arn)]
    return Sorted(changes, len(parsed) - len(changes))


class EventIngest:
    """The bounded queue between the endpoint and the watchers, with its one worker."""

    _shared: ClassVar[dict[asyncio.AbstractEventLoop, EventIngest]] = {}

    def __init__(
        self,
        queue_size: int = 10_000,
        *,
        watchers_of: WatchersOf = TaskWatcher.for_cluster_arn,
        wall_clock: Callable[[], float] = time.time,
    ):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.watchers_of = watchers_of
        self._wall_clock = wall_clock
        self._queue: asyncio.Queue[TaskStateChange] = asyncio.Queue(queue_size)
        self._worker: asyncio.Task[None] | None = None

    @classmethod
    def shared(cls, queue_size: int) -> EventIngest:
        """The process's queue in the running loop; `queue_size` applies when it is made."""
        loop = asyncio.get_running_loop()
        ingest = cls._shared.get(loop)
        if ingest is None:
            cls._shared.clear()  # a queue of a finished loop (tests) is of no use
            ingest = cls._shared[loop] = cls(queue_size)
        return ingest

    def submit(self, changes: list[TaskStateChange]) -> None:
        """Queue all of `changes` or none (QueueFull); never blocks."""
        if self._queue.maxsize - self._queue.qsize() < len(changes):
            EVENTS.labels("overflow").inc(len(changes))
            raise QueueFull(f"the event queue is full ({self._queue.maxsize}); retry later")
        for change in changes:
            self._queue.put_nowait(change)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            change = await self._queue.get()
            try:
                self.apply(change)
            except Exception:  # one bad change must not stop the rest
                log.exception("applying the event for %s failed", change.detail.get("taskArn"))
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Until everything queued so far is applied (tests, shutdown)."""
        await self._queue.join()

    def apply(self, change: TaskStateChange) -> str:
        """Hand one change to its cluster's watchers; the outcome is counted and returned."""
        outcomes = [w.apply_event(change.detail) for w in self.watchers_of(change.cluster_arn)]
        outcome = next((o for o in ("confirming", "applied", "stale") if o in outcomes), "ignored")
        EVENTS.labels(outcome).inc()
        if outcome in ("applied", "confirming") and change.changed_at is not None:
            EVENT_LAG.observe(max(0.0, self._wall_clock() - change.changed_at))
        return outcome

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
