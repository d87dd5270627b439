"""The seam between local ECS's control plane and whatever runs a task's containers.

The control plane owns the lifecycle (PROVISIONING ... STOPPED), versions and timestamps.
A runner only makes containers exist: ``sim`` pretends, ``process`` starts real local
processes. A runner reports back through `TaskHooks`; it never edits task state itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Mount:
    """An EFS volume as a container sees it: `container_path` shows `root_path` of the file system."""

    container_path: str
    file_system_id: str
    #: the directory inside the file system: the access point's root directory, or the volume's rootDirectory.
    root_path: str
    #: the access point's CreationInfo (OwnerUid, OwnerGid, Permissions), when it has one: a missing
    #: root directory is created with it on first use; without it, a missing root fails the mount.
    creation_info: dict | None = None
    read_only: bool = False


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
    #: the container's `secrets`, resolved at start (env name -> value). They reach the process's
    #: environment and nothing else: no ECS answer or event is ever rendered from a LaunchSpec,
    #: and repr() leaves them out, so no log line shows them either.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: the container's mountPoints that name EFS volumes.
    mounts: tuple[Mount, ...] = ()
    #: the definition's workingDirectory, a path inside the container.
    working_directory: str | None = None


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


class StartFailure(Exception):
    """A task that cannot start; the message is the whole stoppedReason, as ECS words it.

    Raised while a task's LaunchSpec is assembled (a secret that cannot be read, an EFS access
    point that is gone); the task then stops with stopCode TaskFailedToStart.
    """
