"""RunTask requests built from a Choice: the only path from a user's pick to what ECS runs.

Everything idempotency and re-adoption need rides on the request (DESIGN.md invariant 4): a
clientToken derived from hub, user, server and attempt, the calliope:* tags and startedBy.
Tag values are escaped reversibly, so a restarted hub can read the user and server back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import Choice
from .models import CatalogError

TAG_PREFIX = "calliope:"
TAG_FIELDS = ("hub", "user", "server", "service", "size")
#: ECS: a tag value has at most 256 characters; startedBy at most 128 of [A-Za-z0-9-_/].
MAX_TAG_VALUE = 256
MAX_STARTED_BY = 128
#: ECS: "A total of 8192 characters are allowed for overrides", JSON included.
MAX_OVERRIDES_CHARS = 8192
LAUNCH_TYPES = ("FARGATE", "EC2", "EXTERNAL")

_TAG_SAFE_SYMBOLS = frozenset(" +-.:/@_")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def encode_tag_value(value: str) -> str:
    """`value` in ECS's tag alphabet; other characters (and "=") become =XX per UTF-8 byte.

    A value whose escaped form exceeds 256 characters is cut and ends in "/" plus a hash of
    the whole, so distinct long values keep distinct tags (reading one back gives the prefix).
    """
    units = [
        ch if (ch.isalnum() or ch in _TAG_SAFE_SYMBOLS) else "".join(f"={b:02X}" for b in ch.encode())
        for ch in value
    ]
    encoded = "".join(units)
    if len(encoded) <= MAX_TAG_VALUE:
        return encoded
    suffix = "/" + hashlib.sha256(value.encode()).hexdigest()[:16]
    kept, length = [], 0
    for unit in units:
        if length + len(unit) > MAX_TAG_VALUE - len(suffix):
            break
        kept.append(unit)
        length += len(unit)
    return "".join(kept) + suffix


def decode_tag_value(value: str) -> str:
    """The inverse of encode_tag_value for values that were not cut short."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(value):
        raw += value[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += value[position:].encode()
    return raw.decode("utf-8", "replace")


def read_tags(tags: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The calliope:* tags of a described task, decoded: {"hub": ..., "user": ..., ...}."""
    found = {}
    for tag in tags:
        key = tag.get("key", "")
        if key.startswith(TAG_PREFIX) and key[len(TAG_PREFIX) :] in TAG_FIELDS:
            found[key[len(TAG_PREFIX) :]] = decode_tag_value(tag.get("value", ""))
    return found


@dataclass(frozen=True)
class TaskIdentity:
    """Who a task belongs to, and which start attempt it is: the source of tags and tokens."""

    hub_id: str
    user: str
    server_name: str
    service: str
    size: str
    attempt: int

    def __post_init__(self) -> None:
        if not self.hub_id:
            raise ValueError("hub_id must not be empty: it scopes startedBy and the clientToken")
        if not isinstance(self.attempt, int) or self.attempt < 0:
            raise ValueError(f"attempt must be a whole number >= 0, not {self.attempt!r}")

    def tags(self) -> list[dict[str, str]]:
        """The calliope:* tags that let a restarted hub re-adopt or clean up this task."""
        values = (self.hub_id, self.user, self.server_name, self.service, self.size)
        return [
            {"key": TAG_PREFIX + field, "value": encode_tag_value(value)}
            for field, value in zip(TAG_FIELDS, values)
        ]

    @property
    def started_by(self) -> str:
        """startedBy: calliope-hub/<hub_id> in ECS's [A-Za-z0-9-_/] alphabet, for ListTasks."""
        return re.sub(r"[^A-Za-z0-9_/-]", "-", f"calliope-hub/{self.hub_id}")[:MAX_STARTED_BY]

    @property
    def client_token(self) -> str:
        """The same for a retried RunTask of one attempt, so ECS starts one task, not two."""
        parts = (self.hub_id, self.user, self.server_name, str(self.attempt))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()  # 64 hex characters


@dataclass(frozen=True)
class Placement:
    """Where tasks run: the cluster, the awsvpc network, and a launch type or capacity strategy."""

    cluster: str
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    assign_public_ip: bool = False
    launch_type: str | None = "FARGATE"
    capacity_provider_strategy: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        for name in ("subnets", "security_groups", "capacity_provider_strategy"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.cluster:
            raise CatalogError("placement needs a cluster name or ARN")
        if self.launch_type is not None and self.capacity_provider_strategy:
            raise CatalogError(
                "set either launch_type or capacity_provider_strategy, not both: "
                "ECS RunTask refuses a request with both"
            )
        if self.launch_type is not None and self.launch_type not in LAUNCH_TYPES:
            raise CatalogError(f"launch_type {self.launch_type!r} is not one of {', '.join(LAUNCH_TYPES)}")
        for item in self.capacity_provider_strategy:
            if not isinstance(item, Mapping) or not isinstance(item.get("capacityProvider"), str):
                raise CatalogError(
                    f"capacity_provider_strategy item {item!r} needs a 'capacityProvider' name"
                )

    def as_run_task(self) -> dict[str, Any]:
        """The placement part of a RunTask request."""
        request: dict[str, Any] = {"cluster": self.cluster}
        if self.launch_type is not None:
            request["launchType"] = self.launch_type
        elif self.capacity_provider_strategy:
            request["capacityProviderStrategy"] = [dict(item) for item in self.capacity_provider_strategy]
        if self.subnets or self.security_groups:
            request["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(self.subnets),
                    "securityGroups": list(self.security_groups),
                    "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED",
                }
            }
        return request


def run_task_request(
    choice: Choice,
    identity: TaskIdentity,
    placement: Placement,
    environment: Mapping[str, str],
    args: Sequence[str] = (),
    *,
    local: bool = False,
) -> dict[str, Any]:
    """The complete RunTask kwargs for one user server.

    Image, role and the task-level cpu/memory come only from the catalog; the caller adds the
    environment (to which CALLIOPE_SERVICE and CALLIOPE_SIZE are added) and, for services with
    their own command, that command's extra args. With `local`, the base command is the
    service's local command, as in its local task definition.
    """
    service = choice.service
    if (identity.service, identity.size) != (service.name, choice.size_name):
        raise ValueError(
            f"identity says {identity.service}/{identity.size} but the choice is "
            f"{service.name}/{choice.size_name}; the tags would lie"
        )
    if isinstance(args, str):
        raise TypeError("args must be a sequence of strings, not one string")
    # The server learns what it was started as, so a page can say which service and size it is.
    environment = {**environment, "CALLIOPE_SERVICE": service.name, "CALLIOPE_SIZE": choice.size_name}
    container: dict[str, Any] = {
        "name": service.container_name,
        "environment": [{"name": name, "value": _env_value(name, value)} for name, value in environment.items()],
    }
    if service.command:
        base_command = service.local.command if local else service.command
        container["command"] = [*base_command, *args]
    overrides = {
        "cpu": str(choice.size.cpu),
        "memory": str(choice.size.memory),
        "containerOverrides": [container],
    }
    size = len(json.dumps(overrides, separators=(",", ":")))
    if size > MAX_OVERRIDES_CHARS:
        raise CatalogError(
            f"the task overrides are {size} characters (environment and command); "
            f"ECS allows at most {MAX_OVERRIDES_CHARS}"
        )
    return {
        **placement.as_run_task(),
        "taskDefinition": service.family,
        "count": 1,
        "overrides": overrides,
        "tags": identity.tags(),
        "startedBy": identity.started_by,
        "clientToken": identity.client_token,
        "enableECSManagedTags": False,
        "propagateTags": "NONE",
    }


def _env_value(name: str, value: str) -> str:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"environment {name!r} must map a string to a string, not {type(value).__name__}")
    return value
