"""The objects local ECS keeps, and how they look on the wire.

A task's wire form (what DescribeTasks returns) is rendered once per state change and
cached, because a hub describes the same tasks far more often than they change: that is
what keeps DescribeTasks of 100 tasks well under a millisecond per task.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from calliope_hub.ecsfacts import LIFECYCLE, is_fargate_size
from calliope_hub.localecs import registration

ORDER = {status: index for index, status in enumerate(LIFECYCLE)}


@dataclass(frozen=True)
class RawJson:
    """An answer already encoded as JSON, sent as is (DescribeTasks assembles cached bytes)."""

    data: bytes


class EcsError(Exception):
    """An error ECS would answer, rendered as AWS JSON 1.1 (`__type`, `message`)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> EcsError:
    return EcsError("InvalidParameterException", message)


def client_error(message: str) -> EcsError:
    return EcsError("ClientException", message)


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short, so an answer never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cluster_not_found() -> EcsError:
    return EcsError("ClusterNotFoundException", "Cluster not found.")


# ---------------------------------------------------------------- Fargate sizes

#: a number of at most 9 digits (ECS's largest task is 192 vCPU and 24 TiB) and an optional unit.
_UNIT = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?)\s*([A-Za-z]*)\s*$")


def parse_size(value: Any, what: str) -> int:
    """Parse ECS's cpu ("1024", "1 vCPU") or memory ("2048", "2 GB") string into units/MiB."""
    if not isinstance(value, str):
        raise invalid(f'{what} must be a string, for example "1024", not {shown(value)}.')
    match = _UNIT.match(value)
    unit = match.group(2).lower() if match else None
    scale = {"": 1, "vcpu": 1024} if what == "cpu" else {"": 1, "gb": 1024, "mib": 1, "mb": 1}
    if not match or unit not in scale:
        raise invalid(f"Invalid {what} value {shown(value)}.")
    return int(float(match.group(1)) * scale[unit])


def fargate_pair_error(cpu: int, memory: int) -> str | None:
    """Why (cpu, memory) is not a Fargate task size, or None when it is one."""
    if is_fargate_size(cpu, memory):
        return None
    return (
        f"No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. "
        "See the Amazon ECS documentation for the valid combinations."
    )


# ---------------------------------------------------------------- tags


def validate_tags(tags: Any) -> dict[str, str]:
    """ECS tags as a dict; raises for what ECS refuses (over 50, bad sizes, aws: prefix)."""
    if tags is None:
        return {}
    if not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags):
        raise invalid("tags must be a list of {key, value} objects.")
    if len(tags) > 50:
        raise invalid(f"Too many tags: {len(tags)} given, at most 50 are allowed.")
    result: dict[str, str] = {}
    for tag in tags:
        key, value = tag.get("key"), tag.get("value", "")
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            raise invalid(f"Tag key {shown(key)} must be a string of 1-128 characters.")
        if not isinstance(value, str) or len(value) > 256:
            raise invalid(f"Tag value for {shown(key)} must be a string of at most 256 characters.")
        if key.lower().startswith("aws:"):
            raise invalid(f"Tag key {shown(key)} uses the reserved prefix 'aws:'.")
        result[key] = value
    return result


def wire_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


# ---------------------------------------------------------------- objects


@dataclass(eq=False)
class Cluster:
    name: str
    arn: str
    tags: dict[str, str] = field(default_factory=dict)
    settings: list[dict] = field(default_factory=list)
    capacity_providers: list[str] = field(default_factory=list)
    status: str = "ACTIVE"
    #: the cluster's tasks in creation order, for ListTasks paging by sequence number.
    order: list[Task] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    #: how many entries of `order` are purged, so the list is compacted now and then.
    purged: int = 0
    #: tasks not STOPPED, by lastStatus bucket, for DescribeClusters' counts.
    running: int = 0
    pending: int = 0

    def wire(self, include_tags: bool) -> dict:
        body = {
            "clusterArn": self.arn,
            "clusterName": self.name,
            "status": self.status,
            "registeredContainerInstancesCount": 0,
            "runningTasksCount": self.running,
            "pendingTasksCount": self.pending,
            "activeServicesCount": 0,
            "statistics": [],
            "settings": self.settings,
            "capacityProviders": self.capacity_providers,
            "defaultCapacityProviderStrategy": [],
        }
        if include_tags:
            body["tags"] = wire_tags(self.tags)
        return body


@dataclass(eq=False)
class TaskDefinition:
    family: str
    revision: int
    arn: str
    #: the registration request as given (containerDefinitions, cpu, memory, networkMode, ...).
    body: dict
    registered_at: float
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "ACTIVE"
    deregistered_at: float | None = None

    @property
    def containers(self) -> list[dict]:
        return self.body["containerDefinitions"]

    @property
    def compatibilities(self) -> list[str]:
        return registration.compatibilities(self.body)

    def supports(self, launch_type: str) -> bool:
        """Whether RunTask may use `launch_type`: what it requires when it says so, else what it fits."""
        return launch_type in (self.body.get("requiresCompatibilities") or self.compatibilities)

    def wire(self) -> dict:
        network_mode = self.body.get("networkMode") or "bridge"
        body: dict[str, Any] = {"volumes": [], "placementConstraints": []}
        body.update((k, v) for k, v in self.body.items() if k != "tags")
        body.update(
            taskDefinitionArn=self.arn,
            family=self.family,
            revision=self.revision,
            status=self.status,
            networkMode=network_mode,
            containerDefinitions=[registration.wire_container(c, network_mode) for c in self.containers],
            registeredAt=self.registered_at,
            registeredBy=registration.registered_by(self.arn),
            compatibilities=self.compatibilities,
            requiresAttributes=registration.requires_attributes(self.body),
        )
        if self.deregistered_at is not None:
            body["deregisteredAt"] = self.deregistered_at
        return body


@dataclass(eq=False)
class Container:
    name: str
    image: str
    arn: str
    cpu: str
    memory: str | None
    last_status: str = "PENDING"
    exit_code: int | None = None
    reason: str | None = None


@dataclass(eq=False)
class Task:
    """One task; only `ControlPlane` changes it, through `touch()` so the cache stays true."""

    id: str
    arn: str
    seq: int
    cluster: Cluster
    definition: TaskDefinition
    ip: str
    containers: list[Container]
    overrides: dict
    cpu: str
    memory: str
    launch_type: str | None
    capacity_provider: str | None
    started_by: str | None
    group: str
    tags: dict[str, str]
    subnet: str | None
    created_at: float
    client_token: str | None = None
    last_status: str = "PROVISIONING"
    desired_status: str = "RUNNING"
    version: int = 1
    started_at: float | None = None
    stopping_at: float | None = None
    stopped_at: float | None = None
    execution_stopped_at: float | None = None
    stopped_reason: str | None = None
    stop_code: str | None = None
    #: the runner was asked to start it (so it must be asked to stop it).
    launched: bool = False
    purged: bool = False
    _wire: dict | None = field(default=None, repr=False)
    #: the JSON encoding of the wire form, without and with tags.
    _json: dict[bool, bytes] = field(default_factory=dict, repr=False)

    def touch(self) -> None:
        """Forget the cached wire forms: call after any change, tags included."""
        self._wire = None
        self._json.clear()

    def wire_json(self, include_tags: bool = False) -> bytes:
        encoded = self._json.get(include_tags)
        if encoded is None:
            encoded = self._json[include_tags] = json.dumps(self.wire(include_tags)).encode()
        return encoded

    def wire(self, include_tags: bool = False) -> dict:
        if self._wire is None:
            self._wire = self._render()
        if include_tags:
            return {**self._wire, "tags": wire_tags(self.tags)}
        return self._wire

    def _eni(self) -> tuple[dict, list[dict]]:
        """The ENI attachment and the container's view of it; the address shows from PENDING."""
        attachment_id = str(uuid.UUID(self.id))
        has_address = self.last_status != "PROVISIONING"
        details = [{"name": "subnetId", "value": self.subnet or "subnet-local"}]
        if has_address:
            details += [
                {"name": "networkInterfaceId", "value": f"eni-{self.id[:17]}"},
                {"name": "macAddress", "value": "02:00:" + ":".join(f"{int(o):02x}" for o in self.ip.split("."))},
                {"name": "privateDnsName", "value": f"ip-{self.ip.replace('.', '-')}.ec2.internal"},
                {"name": "privateIPv4Address", "value": self.ip},
            ]
        status = _ATTACHMENT_STATUS[self.last_status]
        attachment = {"id": attachment_id, "type": "ElasticNetworkInterface", "status": status, "details": details}
        interfaces = [{"attachmentId": attachment_id, "privateIpv4Address": self.ip}] if has_address else []
        return attachment, interfaces

    def _render(self) -> dict:
        attachment, interfaces = self._eni()
        body: dict[str, Any] = {
            "taskArn": self.arn,
            "clusterArn": self.cluster.arn,
            "taskDefinitionArn": self.definition.arn,
            "overrides": self.overrides,
            "lastStatus": self.last_status,
            "desiredStatus": self.desired_status,
            "cpu": self.cpu,
            "memory": self.memory,
            "containers": [_render_container(c, self, interfaces) for c in self.containers],
            "version": self.version,
            "connectivity": "CONNECTED",
            "createdAt": self.created_at,
            "group": self.group,
            "attachments": [attachment],
            "availabilityZone": "us-east-1a",
            "healthStatus": "UNKNOWN",
        }
        optional = {
            "launchType": self.launch_type,
            "capacityProviderName": self.capacity_provider,
            "platformVersion": "1.4.0" if self.launch_type == "FARGATE" else None,
            "startedBy": self.started_by,
            "startedAt": self.started_at,
            "stoppingAt": self.stopping_at,
            "stoppedAt": self.stopped_at,
            "executionStoppedAt": self.execution_stopped_at,
            "stoppedReason": self.stopped_reason,
            "stopCode": self.stop_code,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        return body


_ATTACHMENT_STATUS = {
    "PROVISIONING": "PRECREATED",
    "PENDING": "ATTACHED",
    "ACTIVATING": "ATTACHED",
    "RUNNING": "ATTACHED",
    "DEACTIVATING": "ATTACHED",
    "STOPPING": "ATTACHED",
    "DEPROVISIONING": "DETACHING",
    "STOPPED": "DELETED",
}


def _render_container(container: Container, task: Task, interfaces: list[dict]) -> dict:
    body: dict[str, Any] = {
        "containerArn": container.arn,
        "taskArn": task.arn,
        "name": container.name,
        "image": container.image,
        "lastStatus": container.last_status,
        "networkInterfaces": interfaces,
        "healthStatus": "UNKNOWN",
        "cpu": container.cpu,
    }
    if container.memory is not None:
        body["memory"] = container.memory
    if container.exit_code is not None:
        body["exitCode"] = container.exit_code
    if container.reason:
        body["reason"] = container.reason
    return body


def new_task_id() -> str:
    return uuid.uuid4().hex
