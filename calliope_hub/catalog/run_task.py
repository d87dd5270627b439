"""RunTask requests built from a Choice: the only path from a user's pick to what ECS runs.

Everything idempotency and re-adoption need rides on the request (starts are idempotent and leave no trace lost): a
clientToken derived from hub, user, server and attempt, the calliope:* tags and startedBy.
What the tags and startedBy say, and how, is calliope_hub.ecs.identity's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..ecs.identity import TaskIdentity
from .catalog import Choice
from .models import CatalogError

#: ECS: "A total of 8192 characters are allowed for overrides", JSON included.
MAX_OVERRIDES_CHARS = 8192
LAUNCH_TYPES = ("FARGATE", "EC2", "EXTERNAL")


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
                raise CatalogError(f"capacity_provider_strategy item {item!r} needs a 'capacityProvider' name")

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
