"""The seam between local ECS's control plane and whatever runs a task's containers.

The control plane owns the lifecycle (PROVISIONING ... STOPPED), versions and timestamps.
A runner only makes containers exist: ``sim`` pretends, ``process`` starts real local
processes. A runner reports back through `TaskHooks`; it never edits task state itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ContainerSpec:
    """One container as the task will run it, overrides already merged."""

    name: str
    image: str
    #: entryPoint + command, after RunTask overrides; empty when neither was given.
    argv: list[str]
    environment: dict[str, str]
    port: int | None = None
    #: the task definition's healthCheck, as ECS takes it ({"command": [...], "interval": ...}).
    health_check: dict | None = None
    essential: bool = True


@dataclass(frozen=True)
class LaunchSpec:
    task_id: str
    #: the task's own address in 127.0.0.0/8, as awsvpc gives every task its own ENI.
    ip: str
    containers: list[ContainerSpec] = field(default_factory=list)
    #: seconds between SIGTERM and SIGKILL on stop, as ECS_CONTAINER_STOP_TIMEOUT.
    stop_timeout: float = 30.0


class TaskHooks(Protocol):
    """How a runner reports what happened to a task's containers."""

    def running(self) -> None:
        """Every essential container started (and passed its health check, if it has one)."""

    def exited(self, exit_codes: dict[str, int | None], reason: str, failed_to_start: bool) -> None:
        """The task's essential container is gone; `reason` becomes stoppedReason."""


class Runner(Protocol):
    async def start(self, spec: LaunchSpec, hooks: TaskHooks) -> None:
        """Launch the containers and return at once; readiness is reported through hooks."""

    async def stop(self, task_id: str, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout`; hooks.exited fires when the task is gone."""

    async def kill(self, task_id: str, exit_code: int) -> None:
        """A fault: the essential container dies now with `exit_code`."""

    async def close(self) -> None:
        """Stop everything at once; no process may outlive local ECS."""
