"""TaskSnapshot reads both of ECS's task shapes: DescribeTasks answers and EventBridge events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from calliope_hub.ecs.snapshot import MISSING_REASON, TaskSnapshot, task_ip

ARN = "arn:aws:ecs:us-east-1:123456789012:task/calliope/0123456789abcdef"
SERVICE_CONNECT = {"type": "ServiceConnect", "details": [{"name": "privateIPv4Address", "value": "192.0.2.1"}]}
EBS = {"type": "AmazonElasticBlockStorage", "details": [{"name": "volumeId", "value": "vol-1"}]}
ENI = {
    "type": "ElasticNetworkInterface",
    "details": [{"name": "subnetId", "value": "subnet-1"}, {"name": "privateIPv4Address", "value": "10.0.1.25"}],
}


def test_ip_comes_from_the_eni_attachment_wherever_it_is() -> None:
    assert task_ip({"attachments": [SERVICE_CONNECT, EBS, ENI]}) == "10.0.1.25"


def test_ip_falls_back_to_the_containers() -> None:
    task = {
        "attachments": [EBS],
        "containers": [{"networkInterfaces": []}, {"networkInterfaces": [{"privateIpv4Address": "10.0.1.26"}]}],
    }
    assert task_ip(task) == "10.0.1.26"
    assert task_ip({"attachments": [{"type": "ElasticNetworkInterface", "details": []}]}) is None


def described(**extra: Any) -> dict[str, Any]:
    """A task as aiobotocore parses DescribeTasks (timestamps become datetimes)."""
    task = {
        "taskArn": ARN,
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "version": 7,
        "attachments": [ENI],
        "startedBy": "calliope-hub/h1",
        "stoppedReason": "Essential container in task exited",
        "stopCode": "EssentialContainerExited",
        "tags": [{"key": "calliope:user", "value": "ada"}, {"key": "calliope:service", "value": "lab"}],
        "containers": [{"name": "sidecar", "exitCode": 0}, {"name": "lab", "exitCode": 137, "essential": True}],
        "startedAt": datetime(2025, 5, 1, 12, 0, 30, tzinfo=UTC),
        "stoppedAt": datetime(2025, 5, 1, 13, 0, 0, tzinfo=UTC),
    }
    task.update(extra)
    return task


def test_describe_tasks_and_event_detail_read_the_same() -> None:
    from_describe = TaskSnapshot.from_ecs(described(), observed_at=5.0)
    event_detail = described(startedAt="2025-05-01T12:00:30.000Z", stoppedAt="2025-05-01T13:00:00Z")
    from_event = TaskSnapshot.from_ecs(event_detail, observed_at=5.0)
    assert from_event == from_describe
    assert from_describe.started_at == datetime(2025, 5, 1, 12, 0, 30, tzinfo=UTC).timestamp()
    assert from_describe.ip == "10.0.1.25" and from_describe.version == 7
    assert from_describe.exit_code == 137  # the essential container's, not the first one's
    assert from_describe.tags == {"calliope:user": "ada", "calliope:service": "lab"}
    assert from_describe.stop_code == "EssentialContainerExited" and from_describe.observed_at == 5.0


@pytest.mark.parametrize(
    ("last", "desired", "ip", "expected"),
    [
        ("PROVISIONING", "RUNNING", None, "starting"),
        ("PENDING", "RUNNING", None, "starting"),
        ("RUNNING", "RUNNING", None, "starting"),  # no address yet: not reachable
        ("RUNNING", "RUNNING", "10.0.1.25", "running"),
        ("RUNNING", "STOPPED", "10.0.1.25", "stopping"),
        ("DEPROVISIONING", "STOPPED", None, "stopping"),
        ("STOPPED", "STOPPED", None, "stopped"),
    ],
)
def test_lifecycle_properties(last: str, desired: str, ip: str | None, expected: str) -> None:
    attachments = [{**ENI, "details": [{"name": "privateIPv4Address", "value": ip}]}] if ip else []
    snapshot = TaskSnapshot.from_ecs(
        {"taskArn": ARN, "lastStatus": last, "desiredStatus": desired, "attachments": attachments}, 0
    )
    flags = {name: getattr(snapshot, name) for name in ("starting", "running", "stopping", "stopped")}
    assert flags == {name: name == expected for name in flags}


def test_a_confirmed_missing_task_is_stopped_one_version_later() -> None:
    previous = TaskSnapshot.from_ecs(described(lastStatus="RUNNING", desiredStatus="RUNNING"), 1.0)
    gone = TaskSnapshot.missing(ARN, 9.0, previous)
    assert gone.stopped and gone.stopped_reason == MISSING_REASON and gone.stop_code is None
    assert gone.version == previous.version + 1 and gone.tags == previous.tags and gone.observed_at == 9.0
    assert TaskSnapshot.missing(ARN, 9.0, None).version == 0


def test_a_task_without_an_arn_is_refused() -> None:
    with pytest.raises(ValueError, match="taskArn"):
        TaskSnapshot.from_ecs({"lastStatus": "RUNNING"}, 0)


def test_versioned_observations_order_by_version_only() -> None:
    def snap(status: str, version: int, desired: str = "RUNNING") -> TaskSnapshot:
        task = {"taskArn": "arn:t", "lastStatus": status, "desiredStatus": desired, "version": version}
        return TaskSnapshot.from_ecs(task, observed_at=0.0)

    assert snap("PENDING", 3).supersedes(snap("RUNNING", 2))
    assert not snap("STOPPED", 2).supersedes(snap("RUNNING", 2)), "an equal version is a duplicate"
    # moto answers no version: only forward moves in the lifecycle count as newer.
    assert snap("RUNNING", 0).supersedes(snap("PENDING", 0))
    assert snap("RUNNING", 0, desired="STOPPED").supersedes(snap("RUNNING", 0))
    assert not snap("PENDING", 0).supersedes(snap("RUNNING", 0))
