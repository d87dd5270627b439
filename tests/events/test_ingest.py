"""Event ingestion: validation, sorting, the one front half's counting, and the bounded queue.

What a watcher makes of an event is the watcher's business (tests/ecs/test_watcher_events.py);
here the watchers are recording targets, so each test sees exactly what ingestion handed on.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

import pytest

from calliope_hub.events.ingest import (
    EventFormatError,
    EventIngest,
    QueueFull,
    parse_delivery,
    receive_delivery,
    sort_delivery,
    task_state_change,
)
from calliope_hub.observability.metrics import EVENTS
from tests.ecs.scripted import CLUSTER_ARN, arn, ecs_task, event_for
from tests.events.conftest import Recorder


def counted(outcome: str) -> float:
    return EVENTS.labels(outcome)._value.get()


@pytest.fixture
def watcher() -> Recorder:
    return Recorder()


# ---- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"[]", "empty list"),
        (b"[1]", "not a JSON object"),
        (b'{"source": 5, "detail-type": "x"}', "must be strings"),
        (b'{"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": []}', "'detail' must be an object"),
        (b'{"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": {"taskArn": "a"}}', "clusterArn"),
    ],
)
def test_malformed_deliveries_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        sort_delivery(parse_delivery(body), lambda arn: [])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lastStatus": "SLEEPING"}, "not an ECS status"),
        ({"version": "7"}, "version must be a non-empty int"),
        ({"version": True}, "version must be a non-empty int"),
        ({"version": -1}, ">= 0"),
        ({"taskArn": ""}, "taskArn"),
    ],
)
def test_an_ecs_event_missing_what_the_watcher_needs_is_malformed(change: dict, message: str) -> None:
    event = event_for(ecs_task(arn(1)))
    event["detail"].update(change)
    with pytest.raises(EventFormatError, match=message):
        task_state_change(event)


def test_other_sources_detail_types_and_clusters_are_ignored_not_refused() -> None:
    ours = event_for(ecs_task(arn(1)))
    other_cluster = event_for(ecs_task(arn(2)), cluster_arn="arn:aws:ecs:us-east-1:1:cluster/other")
    other_source = {**ours, "source": "aws.ec2"}
    other_type = {**ours, "detail-type": "ECS Container Instance State Change"}
    sorted_ = sort_delivery(
        [ours, other_cluster, other_source, other_type], lambda c: [object()] if c == CLUSTER_ARN else []
    )  # type: ignore[list-item]
    assert [c.detail["taskArn"] for c in sorted_.changes] == [arn(1)] and sorted_.ignored == 3


def test_one_malformed_event_refuses_the_whole_batch() -> None:
    good, bad = event_for(ecs_task(arn(1))), event_for(ecs_task(arn(2)))
    del bad["detail"]["version"]
    with pytest.raises(EventFormatError, match="event 1"):
        sort_delivery(parse_delivery(json.dumps([good, bad])), lambda c: [object()])  # type: ignore[list-item]


async def test_a_full_queue_takes_nothing_of_a_delivery(watcher: Recorder) -> None:
    ingest = EventIngest(queue_size=3, watchers_of=lambda c: [watcher])
    await ingest.start()
    changes = [task_state_change(event_for(ecs_task(arn(i)))) for i in range(4)]
    overflow = counted("overflow")
    with pytest.raises(QueueFull):
        ingest.submit(changes)  # type: ignore[arg-type]
    assert counted("overflow") == overflow + 4
    ingest.submit(changes[:3])  # type: ignore[arg-type]
    await asyncio.wait_for(ingest.join(), 5)
    await ingest.close()
    assert watcher.seen == [arn(i) for i in range(3)]


def test_the_front_half_counts_what_it_refuses_and_what_is_not_ours() -> None:
    ours, theirs = (
        event_for(ecs_task(arn(1))),
        event_for(ecs_task(arn(2)), cluster_arn="arn:aws:ecs:us-east-1:1:cluster/x"),
    )
    invalid, ignored = counted("invalid"), counted("ignored")
    with pytest.raises(EventFormatError):
        receive_delivery(b"{not json", lambda c: [])
    delivery = receive_delivery(json.dumps([ours, theirs]), lambda c: [object()] if c == CLUSTER_ARN else [])  # type: ignore[list-item]
    assert [c.detail["taskArn"] for c in delivery.changes] == [arn(1)]
    assert (counted("invalid"), counted("ignored")) == (invalid + 1, ignored + 1)


async def test_the_queue_takes_changes_only_between_start_and_close(watcher: Recorder) -> None:
    ingest = EventIngest(queue_size=10, watchers_of=lambda c: [watcher])
    (change,) = ingest.receive(json.dumps(event_for(ecs_task(arn(1))))).changes
    with pytest.raises(RuntimeError, match="start"):
        ingest.submit([change])
    await ingest.start()
    worker = ingest._worker
    ingest.submit([change])
    await asyncio.wait_for(ingest.join(), 5)
    await ingest.close()
    assert worker is not None and worker.done() and watcher.seen == [arn(1)]
    with pytest.raises(RuntimeError, match="start"):
        ingest.submit([change])


@pytest.mark.parametrize(
    "outcomes, counted_as",
    [
        (["stale", "hint"], "hint"),
        (["stale", "confirming", "hint"], "confirming"),
        (["stale"], "stale"),
        ([], "ignored"),
    ],
)
def test_apply_counts_the_most_telling_outcome_of_the_clusters_watchers(outcomes: list[str], counted_as: str) -> None:
    watchers = [Recorder(o) for o in outcomes]
    ingest = EventIngest(watchers_of=lambda c: watchers)
    change = task_state_change(event_for(ecs_task(arn(1))))
    before = counted(counted_as)
    assert ingest.apply(change) == counted_as  # type: ignore[arg-type]
    assert counted(counted_as) == before + 1 and all(w.seen == [arn(1)] for w in watchers)


async def test_one_failing_change_does_not_stop_the_worker() -> None:
    class Broken(Recorder):
        def apply_event(self, detail: Mapping[str, Any]) -> str:
            if detail["taskArn"] == arn(1):
                raise RuntimeError("a bug in one watcher")
            return super().apply_event(detail)

    broken = Broken()
    ingest = EventIngest(watchers_of=lambda c: [broken])
    await ingest.start()
    ingest.submit([task_state_change(event_for(ecs_task(arn(i)))) for i in (1, 2)])  # type: ignore[misc]
    await asyncio.wait_for(ingest.join(), 5)
    await ingest.close()
    assert broken.seen == [arn(2)]


# ---- hostile bodies: each refused with its reason, none ever raises anything but EventFormatError ----


def _hostile(detail_change: dict[str, Any] | None = None, raw: bytes | None = None) -> bytes:
    if raw is not None:
        return raw
    event = event_for(ecs_task(arn(1)))
    event["detail"].update(detail_change or {})
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper than 32"),
        (_hostile(raw=b'{"detail": {"updatedAt": ' + b"9" * 400 + b"}}"), "more than 19 digits"),
        (_hostile(raw=b'{"detail": {"updatedAt": -Infinity}}'), "-Infinity is not a JSON number"),
        (_hostile(raw=b'{"detail": {"updatedAt": NaN}}'), "NaN is not a JSON number"),
        (_hostile(raw=b'{"detail": {"updatedAt": 1e400}}'), "out of range"),
        (b" " * (2 * 1024 * 1024) + b"{}", "larger than"),
        (_hostile({"containers": "not a list"}), "detail is not an ECS task"),
        (_hostile({"attachments": [5]}), "detail is not an ECS task"),
        (_hostile({"containers": [{"exitCode": "x"}]}), "detail is not an ECS task"),
        (_hostile({"tags": 7}), "detail is not an ECS task"),
    ],
)
def test_hostile_bodies_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        receive_delivery(body, lambda arn: [Recorder()])


@pytest.mark.parametrize("updated_at", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", 0, -1e300, 1e300, "soon"])
def test_the_lag_histogram_stays_finite_whatever_the_event_claims(updated_at: Any) -> None:
    from calliope_hub.observability.metrics import EVENT_LAG

    event = event_for(ecs_task(arn(1)))
    event["detail"]["updatedAt"] = updated_at
    ingest = EventIngest(watchers_of=lambda c: [Recorder("hint")], wall_clock=lambda: 2_000_000_000.0)
    (change,) = receive_delivery(json.dumps(event), ingest.watchers_of).changes
    before = _lag_sum(EVENT_LAG)
    assert ingest.apply(change) == "hint"
    after = _lag_sum(EVENT_LAG)
    assert math.isfinite(after) and 0 <= after - before <= 24 * 3600


def _lag_sum(histogram: Any) -> float:
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_sum"))
