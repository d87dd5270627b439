"""EventBridge "ECS Task State Change" events into the TaskWatchers: one front half for HTTP and SQS.

Both inputs (the hub's HTTP endpoint for API destinations, and the SQS consumer) hand the
raw body to `EventIngest.receive`, which validates, sorts and counts; so the two can never
disagree on what an event is, and the events metric has one owner. Validation is
all-or-nothing per delivery, so a batch with one malformed event changes nothing. Events that
are well formed but not ours (another source, detail-type or cluster) are counted and
acknowledged: EventBridge retries only 5xx/429, so answering 4xx for them would only lose
them, and answering 5xx would make it retry them forever.

The HTTP endpoint must answer within 5 s, so it only receives and queues (`submit`); one
worker applies. The queue is bounded: when it is full the endpoint answers 503 and
EventBridge retries later. SQS applies at once (`apply`), because a message may be deleted
only after its events reached the watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from calliope_hub.ecs.snapshot import TaskSnapshot, _epoch
from calliope_hub.ecsfacts import DETAIL_TYPE, LIFECYCLE, SOURCE, JsonBoundsError, bounded_json
from calliope_hub.observability.metrics import EVENT_LAG, EVENTS, observe_finite

log = logging.getLogger(__name__)

#: a delivery of more events than this is refused
MAX_BATCH = 1000
#: a body larger than this is refused before it is parsed (an EventBridge event is at most
#: 256 KiB, an SQS message too; a list of small events from the monitor stays well under)
MAX_BODY_BYTES = 1024 * 1024
#: a lag longer than EventBridge keeps retrying (24 h) is a clock or a forger, not a lag
MAX_LAG_SECONDS = 24 * 3600.0
#: What the watchers said of one change, most telling first: the one counted when several watch a cluster.
_OUTCOMES = ("confirming", "hint", "implausible", "stale")
#: Outcomes where the change was taken up, so its lag is observed.
_TAKEN = frozenset({"confirming", "hint"})


class EventFormatError(ValueError):
    """A delivery that is not JSON, not events, or an ECS task event missing its fields."""


class QueueFull(RuntimeError):
    """The ingestion queue is full; the sender should retry later (HTTP 503)."""


class EventTarget(Protocol):
    """What ingestion needs of a TaskWatcher: take one event's task, say what became of it."""

    def apply_event(self, detail: Mapping[str, Any]) -> str: ...


#: cluster ARN (or name) named by an event -> the watchers of that cluster (none: not ours)
WatchersOf = Callable[[str], Sequence[EventTarget]]


@dataclass(frozen=True)
class TaskStateChange:
    """One validated task state change, as the watcher needs it."""

    cluster_arn: str
    detail: Mapping[str, Any]
    #: epoch seconds of the change (detail.updatedAt, else the event's `time`), for EVENT_LAG
    changed_at: float | None


@dataclass
class Sorted:
    """A validated delivery: the changes for clusters this hub watches, and how many were not."""

    changes: list[TaskStateChange]
    ignored: int


def parse_delivery(body: bytes | str) -> list[Any]:
    """One event or a JSON list of events, as a list; EventFormatError for anything else.

    The body is bounded in size, nesting and numbers (ecsfacts.bounded_json) before anything
    reads it, so a stranger's body can earn a 400 but never a 500, which EventBridge retries.
    """
    if len(body) > MAX_BODY_BYTES:
        raise EventFormatError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        decoded = bounded_json(body)
    except JsonBoundsError as e:
        raise EventFormatError(f"the body is not JSON an event can be: {e}") from None
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
    try:  # everything the watcher will read of it, read once now so a bad field is a 400, not a crash later
        TaskSnapshot.from_ecs(detail, 0.0)
        changed_at = _epoch(detail.get("updatedAt")) or _epoch(event.get("time"))
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
        raise EventFormatError(f"event {index}: detail is not an ECS task ({type(e).__name__}: {e})") from None
    return TaskStateChange(cluster_arn, detail, changed_at)


def sort_delivery(events: list[Any], watchers_of: WatchersOf) -> Sorted:
    """Validate every event first (EventFormatError changes nothing), then keep ours."""
    parsed = [task_state_change(event, i) for i, event in enumerate(events)]
    changes = [c for c in parsed if c is not None and watchers_of(c.cluster_arn)]
    return Sorted(changes, len(parsed) - len(changes))


def count(outcome: str, n: int = 1) -> None:
    """Count `n` events with `outcome` (the HTTP side counts its refusals, e.g. "unauthorized", here)."""
    EVENTS.labels(outcome).inc(n)


def receive_delivery(body: bytes | str, watchers_of: WatchersOf) -> Sorted:
    """The front half of ingestion, for HTTP and SQS alike: parse, validate, sort, count.

    Raises EventFormatError (counted "invalid") for a delivery that changes nothing; events
    that are not ours are counted "ignored" and left out.
    """
    try:
        delivery = sort_delivery(parse_delivery(body), watchers_of)
    except EventFormatError:
        count("invalid")
        raise
    if delivery.ignored:
        count("ignored", delivery.ignored)
    return delivery


class EventIngest:
    """The front half every delivery goes through, and the bounded queue the HTTP side fills.

    One per hub, built by the HubRuntime with `c.CalliopeEvents.queue_size` and a
    `watchers_of` that answers from the runtime's own watchers; `start()` runs the worker
    that drains the queue and `close()` cancels it.
    """

    def __init__(
        self,
        queue_size: int = 10_000,
        *,
        watchers_of: WatchersOf,
        wall_clock: Callable[[], float] = time.time,
    ):
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.watchers_of = watchers_of
        self._wall_clock = wall_clock
        self._queue: asyncio.Queue[TaskStateChange] = asyncio.Queue(queue_size)
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the worker that applies queued changes, in the running loop."""
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Cancel the worker and wait for it; changes still queued are dropped (they are hints)."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def receive(self, body: bytes | str) -> Sorted:
        """`receive_delivery` for this hub's watchers."""
        return receive_delivery(body, self.watchers_of)

    def submit(self, changes: list[TaskStateChange]) -> None:
        """Queue all of `changes` or none (QueueFull); never blocks."""
        if self._worker is None:
            raise RuntimeError("EventIngest.start() was not called, or close() was")
        if self._queue.maxsize - self._queue.qsize() < len(changes):
            count("overflow", len(changes))
            raise QueueFull(f"the event queue is full ({self._queue.maxsize}); retry later")
        for change in changes:
            self._queue.put_nowait(change)

    async def join(self) -> None:
        """Until everything queued so far is applied (tests, shutdown)."""
        await self._queue.join()

    def apply(self, change: TaskStateChange) -> str:
        """Hand one change to its cluster's watchers; the outcome is counted and returned."""
        outcomes = [w.apply_event(change.detail) for w in self.watchers_of(change.cluster_arn)]
        outcome = next((o for o in _OUTCOMES if o in outcomes), "ignored")
        count(outcome)
        if outcome in _TAKEN and change.changed_at is not None:
            lag = max(0.0, self._wall_clock() - change.changed_at)
            if lag <= MAX_LAG_SECONDS:  # a timestamp from 1970 (or a forger) must not skew the sum for good
                observe_finite(EVENT_LAG, lag)
        return outcome

    async def _run(self) -> None:
        while True:
            change = await self._queue.get()
            try:
                self.apply(change)
            except Exception:  # one bad change must not stop the rest
                log.exception("applying the event for %s failed", change.detail.get("taskArn"))
            finally:
                self._queue.task_done()
