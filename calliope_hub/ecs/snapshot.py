"""What the hub needs to know about one ECS task, read from either of ECS's two task shapes.

DescribeTasks answers and EventBridge "ECS Task State Change" events both carry the task,
but with different timestamp encodings (datetimes/epoch numbers vs ISO strings). The
TaskWatcher compares observations from both, so they are normalised here into one immutable
`TaskSnapshot` that is cheap to keep for 10,000 tasks and safe to share between coroutines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from calliope_hub.ecsfacts import LIFECYCLE

#: The synthesized reason for a task ECS no longer knows (confirmed MISSING).
MISSING_REASON = "Task is MISSING from ECS"


def task_ip(task: Mapping[str, Any]) -> str | None:
    """The task's private IPv4 address, from its ENI attachment or its containers.

    Never `attachments[0]`: Service Connect and EBS volume attachments sit beside the ENI.
    """
    for attachment in task.get("attachments") or ():
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        for detail in attachment.get("details") or ():
            if detail.get("name") == "privateIPv4Address" and detail.get("value"):
                return str(detail["value"])
    for container in task.get("containers") or ():
        for interface in container.get("networkInterfaces") or ():
            if interface.get("privateIpv4Address"):
                return str(interface["privateIpv4Address"])
    return None


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from a botocore datetime, an epoch number or an ISO string."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _tags(raw: Any) -> dict[str, str]:
    """ECS lists tags as [{key, value}]; a mapping is accepted too."""
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(t["key"]): str(t.get("value", "")) for t in raw or () if "key" in t}


def _exit_code(containers: Iterable[Mapping[str, Any]]) -> int | None:
    """The exit code of the essential container.

    Task descriptions do not say which container is essential (the task definition does),
    so a container flagged `essential` wins when the flag is present, else the first
    container that has exited.
    """
    containers = list(containers or ())
    flagged = [c for c in containers if c.get("essential")]
    for container in flagged or containers:
        if container.get("exitCode") is not None:
            return int(container["exitCode"])
    return None


_STAGE = {status: rank for rank, status in enumerate(LIFECYCLE)}


@dataclass(frozen=True)
class TaskSnapshot:
    """One observation of one task, as the TaskWatcher stores it."""

    arn: str
    last_status: str
    desired_status: str
    version: int
    ip: str | None
    stopped_reason: str | None
    stop_code: str | None
    exit_code: int | None
    tags: dict[str, str]
    started_by: str | None
    observed_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    pull_started_at: float | None = None
    pull_stopped_at: float | None = None

    @classmethod
    def from_ecs(cls, task: Mapping[str, Any], observed_at: float) -> TaskSnapshot:
        """Read a DescribeTasks task or an event's `detail` (same keys, other timestamps)."""
        if not task.get("taskArn"):
            raise ValueError("an ECS task needs a taskArn")
        return cls(
            arn=str(task["taskArn"]),
            last_status=str(task.get("lastStatus") or "PROVISIONING"),
            desired_status=str(task.get("desiredStatus") or "RUNNING"),
            version=int(task.get("version") or 0),
            ip=task_ip(task),
            stopped_reason=task.get("stoppedReason") or None,
            stop_code=task.get("stopCode") or None,
            exit_code=_exit_code(task.get("containers") or ()),
            tags=_tags(task.get("tags")),
            started_by=task.get("startedBy") or None,
            observed_at=observed_at,
            started_at=_epoch(task.get("startedAt")),
            stopped_at=_epoch(task.get("stoppedAt") or task.get("executionStoppedAt")),
            pull_started_at=_epoch(task.get("pullStartedAt")),
            pull_stopped_at=_epoch(task.get("pullStoppedAt")),
        )

    @classmethod
    def missing(cls, arn: str, observed_at: float, previous: TaskSnapshot | None) -> TaskSnapshot:
        """A STOPPED snapshot for a task ECS confirmed it no longer knows.

        Its version is one above the last seen, so the watcher's ordering accepts it.
        """
        return cls(
            arn=arn,
            last_status="STOPPED",
            desired_status="STOPPED",
            version=previous.version + 1 if previous else 0,
            ip=previous.ip if previous else None,
            stopped_reason=MISSING_REASON,
            stop_code=None,
            exit_code=None,
            tags=previous.tags if previous else {},
            started_by=previous.started_by if previous else None,
            observed_at=observed_at,
            started_at=previous.started_at if previous else None,
        )

    def supersedes(self, other: TaskSnapshot) -> bool:
        """Whether this observation is newer than `other`.

        ECS raises `version` on every change, so a higher version wins and an equal one is a
        duplicate. An implementation that answers no version at all (moto) still only
        moves forward: between two unversioned observations, a later lifecycle stage or a
        new stop request wins.
        """
        if self.version or other.version:
            return self.version > other.version
        mine = (_STAGE.get(self.last_status, -1), self.desired_status == "STOPPED")
        theirs = (_STAGE.get(other.last_status, -1), other.desired_status == "STOPPED")
        return mine > theirs

    @property
    def stopped(self) -> bool:
        return self.last_status == "STOPPED"

    @property
    def running(self) -> bool:
        """Running, reachable and meant to stay so: JupyterHub needs an address, not a status."""
        return self.last_status == "RUNNING" and self.ip is not None and not self.stopping

    @property
    def stopping(self) -> bool:
        return not self.stopped and self.desired_status == "STOPPED"

    @property
    def starting(self) -> bool:
        return not self.stopped and not self.stopping and not self.running
