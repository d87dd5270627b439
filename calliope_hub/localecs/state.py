"""The control plane: every cluster, task definition and task, and the task lifecycle.

It alone changes a task. Runners report through `TaskHooks`, requests arrive already
validated from `operations`, and every change bumps `version` and is announced to the
listeners (the event sinks). Lookups are dict reads by id, so DescribeTasks never scans.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from calliope_hub.localecs.efs import DEFAULT_ACCESS_POINT_LIMIT, FileSystems
from calliope_hub.localecs.model import (
    ORDER,
    Cluster,
    EcsError,
    Task,
    TaskDefinition,
    client_error,
    cluster_not_found,
    new_task_id,
    shown,
)
from calliope_hub.localecs.runner import ContainerSpec, LaunchSpec, Runner, StartFailure
from calliope_hub.localecs.ssm import ParameterStore

log = logging.getLogger(__name__)

_PENDING_LIKE = ("PROVISIONING", "PENDING", "ACTIVATING")
_STEPPING_DOWN = ("DEACTIVATING", "STOPPING", "DEPROVISIONING")


class AddressPool:
    """Loopback addresses for tasks, as awsvpc gives each task its own ENI.

    Addresses are handed out fresh first; a freed one goes to the back of the queue, so it
    is reused as late as possible, and never before its task is STOPPED.
    """

    def __init__(self, cidr: str):
        self._fresh: Iterator[ipaddress.IPv4Address] = ipaddress.IPv4Network(cidr, strict=False).hosts()
        self._freed: deque[str] = deque()

    def take(self) -> str | None:
        for address in self._fresh:
            if str(address) != "127.0.0.1":
                return str(address)
        return self._freed.popleft() if self._freed else None

    def give_back(self, address: str) -> None:
        self._freed.append(address)


class _Hooks:
    """The `TaskHooks` a runner gets for one task."""

    __slots__ = ("plane", "task")

    def __init__(self, plane: ControlPlane, task: Task):
        self.plane, self.task = plane, task

    def running(self) -> None:
        self.plane.on_running(self.task)

    def exited(self, exit_codes: dict[str, int | None], reason: str, failed_to_start: bool) -> None:
        self.plane.on_exited(self.task, exit_codes, reason, failed_to_start)


class ControlPlane:
    def __init__(
        self,
        runner: Runner,
        *,
        region: str,
        account: str,
        cidr: str,
        retention_s: float,
        stop_timeout_s: float,
        dwell: Callable[[str], float] = lambda status: 0.0,
        clock: Callable[[], float] = time.time,
        access_point_limit: int = DEFAULT_ACCESS_POINT_LIMIT,
        efs_journal: Path | None = None,
    ):
        self.runner = runner
        self.access_point_limit, self.efs_journal = access_point_limit, efs_journal
        self.region, self.account = region, account
        self.retention_s, self.stop_timeout_s = retention_s, stop_timeout_s
        #: seconds a task stays in PROVISIONING, ACTIVATING, DEACTIVATING or DEPROVISIONING (sim timings).
        self.dwell = dwell
        self.clock = clock
        self.cidr = cidr
        #: called with each task after every change, in order of its versions.
        self.listeners: list[Callable[[Task], None]] = []
        self._background: set[asyncio.Task] = set()
        self._clear()

    def _clear(self) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.definitions: dict[str, list[TaskDefinition]] = {}
        self.tasks: dict[str, Task] = {}
        #: (cluster ARN, clientToken) -> (request fingerprint, the tasks it started)
        self.tokens: dict[tuple[str, str], tuple[str, list[Task]]] = {}
        self.by_status: Counter[str] = Counter()
        self.addresses = AddressPool(self.cidr)
        self._stopped: deque[tuple[float, Task]] = deque()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._starting: set[str] = set()
        self._seq = 0
        #: the SSM Parameter Store and EFS subsets (ssm.py, efs.py) live and reset with the plane.
        self.parameters = ParameterStore(self.region, self.account, self.clock)
        self.file_systems = FileSystems(
            self.region, self.account, self.clock, self.access_point_limit, journal=self.efs_journal
        )
        self.create_cluster("default", {}, [], [])

    # ------------------------------------------------------------ names

    def arn(self, resource: str) -> str:
        return f"arn:aws:ecs:{self.region}:{self.account}:{resource}"

    def cluster(self, ref: str | None) -> Cluster:
        name = (ref or "default").rsplit("cluster/", 1)[-1] if (ref or "").startswith("arn:") else (ref or "default")
        cluster = self.clusters.get(name)
        if cluster is None or cluster.status != "ACTIVE":
            raise cluster_not_found()
        return cluster

    def find_task(self, cluster: Cluster, ref: str) -> Task | None:
        """A task by ID or ARN (new or old ARN format), or None when unknown or expired."""
        task = self.tasks.get(ref.rsplit("/", 1)[-1])
        if task is None or task.cluster is not cluster:
            return None
        if ref == task.id or ref == task.arn or ref == self.arn(f"task/{task.id}"):
            return task
        return None

    def definition(self, ref: str) -> TaskDefinition:
        """`family`, `family:revision` or an ARN; a bare family means its latest ACTIVE revision."""
        key = ref.split("task-definition/", 1)[-1] if ref.startswith("arn:") else ref
        family, _, revision = key.partition(":")
        revisions = self.definitions.get(family, [])
        if revision:
            if revision.isascii() and revision.isdigit() and 1 <= int(revision[:10]) <= len(revisions):
                return revisions[int(revision) - 1]
        else:
            active = [d for d in revisions if d.status == "ACTIVE"]
            if active:
                return active[-1]
        raise client_error(f"Unable to find task definition {shown(ref)}.")

    # ------------------------------------------------------------ registry

    def create_cluster(self, name: str, tags: dict, settings: list, providers: list) -> Cluster:
        existing = self.clusters.get(name)
        if existing is not None and existing.status == "ACTIVE":
            return existing
        cluster = Cluster(name, self.arn(f"cluster/{name}"), tags, settings, providers)
        self.clusters[name] = cluster
        return cluster

    def delete_cluster(self, cluster: Cluster) -> Cluster:
        if cluster.running or cluster.pending or self.by_status_in(cluster, _STEPPING_DOWN):
            raise EcsError(
                "ClusterContainsTasksException",
                "The Cluster cannot be deleted while Tasks are active.",
            )
        cluster.status = "INACTIVE"
        return cluster

    def by_status_in(self, cluster: Cluster, statuses: tuple[str, ...]) -> bool:
        return any(t.last_status in statuses for t in cluster.order if not t.purged)

    def register(self, family: str, body: dict, tags: dict) -> TaskDefinition:
        revisions = self.definitions.setdefault(family, [])
        revision = len(revisions) + 1
        definition = TaskDefinition(
            family, revision, self.arn(f"task-definition/{family}:{revision}"), body, self.clock(), tags
        )
        revisions.append(definition)
        return definition

    # ------------------------------------------------------------ tasks

    def add_task(self, cluster: Cluster, definition: TaskDefinition, ip: str, **fields: Any) -> Task:
        """Record a new PROVISIONING task and schedule its launch."""
        task_id = new_task_id()
        self._seq += 1
        task = Task(
            id=task_id,
            arn=self.arn(f"task/{cluster.name}/{task_id}"),
            seq=self._seq,
            cluster=cluster,
            definition=definition,
            ip=ip,
            created_at=self.clock(),
            **fields,
        )
        self.tasks[task_id] = task
        cluster.order.append(task)
        cluster.seqs.append(task.seq)
        self.by_status["PROVISIONING"] += 1
        cluster.pending += 1
        self._announce(task)
        loop = asyncio.get_running_loop()
        self._timers[task_id] = loop.call_later(self.dwell("PROVISIONING"), self._due, task, self._provisioned)
        return task

    def page(
        self, cluster: Cluster, match: Callable[[Task], bool], after: int, limit: int
    ) -> tuple[list[Task], int | None]:
        """Up to `limit` matching tasks with seq > `after`, and the seq to continue after."""
        found: list[Task] = []
        start = bisect.bisect_right(cluster.seqs, after)
        for task in cluster.order[start:]:
            if task.purged or not match(task):
                continue
            if len(found) == limit:
                return found, found[-1].seq
            found.append(task)
        return found, None

    def _advance(self, task: Task, status: str) -> None:
        old = task.last_status
        self.by_status[old] -= 1
        self.by_status[status] += 1
        cluster = task.cluster
        cluster.pending += (status in _PENDING_LIKE) - (old in _PENDING_LIKE)
        cluster.running += (status == "RUNNING") - (old == "RUNNING")
        task.last_status = status
        task.version += 1
        self._announce(task)

    def _announce(self, task: Task) -> None:
        task.touch()
        for listener in self.listeners:
            try:
                listener(task)
            except Exception:  # a broken sink must never break the lifecycle
                log.exception("task listener failed for %s", task.id)

    def _owns(self, task: Task) -> bool:
        return self.tasks.get(task.id) is task

    def _after_dwell(self, task: Task, status: str, then: Callable[[Task], None]) -> None:
        """`then(task)` once the task has dwelt in `status` for its time: at once when that is none."""
        seconds = self.dwell(status)
        if seconds <= 0:
            then(task)
        else:
            self._timers[task.id] = asyncio.get_running_loop().call_later(seconds, self._due, task, then)

    def _due(self, task: Task, then: Callable[[Task], None]) -> None:
        self._timers.pop(task.id, None)
        if self._owns(task):
            then(task)

    def _cancel_dwell(self, task: Task) -> None:
        timer = self._timers.pop(task.id, None)
        if timer is not None:
            timer.cancel()

    def _provisioned(self, task: Task) -> None:
        self._advance(task, "PENDING")
        self._after_dwell(task, "PENDING", self._launch)  # 0 unless the runner leaves PENDING's time to us

    def _launch(self, task: Task) -> None:
        task.launched = True
        self._starting.add(task.id)
        self._spawn(self._start_runner(task))

    async def _start_runner(self, task: Task) -> None:
        try:
            await self.runner.start(self.launch_spec(task), _Hooks(self, task))
        except StartFailure as failure:  # secrets or EFS volumes: ECS's own words in stoppedReason
            self.on_exited(task, {}, str(failure), True)
        except Exception as error:
            log.warning("task %s failed to start: %s", task.id, error)
            self.on_exited(task, {}, f"CannotStartContainerError: {error}", True)
        finally:
            self._starting.discard(task.id)
        if task.desired_status == "STOPPED" and task.last_status == "STOPPING":  # asked to stop while starting
            self._spawn(self._stop_runner(task))

    def launch_spec(self, task: Task) -> LaunchSpec:
        """What the runner runs: argv = entryPoint + command (the override's command wins)."""
        overrides = {o.get("name"): o for o in task.overrides.get("containerOverrides", [])}
        containers = []
        for definition in task.definition.containers:
            override = overrides.get(definition["name"], {})
            command = override.get("command", definition.get("command")) or []
            environment = {e["name"]: e.get("value", "") for e in definition.get("environment", [])}
            environment.update({e["name"]: e.get("value", "") for e in override.get("environment", [])})
            ports = definition.get("portMappings") or [{}]
            containers.append(
                ContainerSpec(
                    name=definition["name"],
                    image=definition["image"],
                    argv=list(definition.get("entryPoint") or []) + list(command),
                    environment=environment,
                    port=ports[0].get("containerPort"),
                    health_check=definition.get("healthCheck"),
                    essential=definition.get("essential", True),
                    secrets=self.parameters.resolve(definition.get("secrets") or []),
                    mounts=self.file_systems.mounts(task.definition.body, definition),
                    working_directory=definition.get("workingDirectory"),
                )
            )
        return LaunchSpec(task.id, task.ip, containers, self.stop_timeout_s)

    def on_running(self, task: Task) -> None:
        if not self._owns(task) or task.last_status != "PENDING" or task.desired_status == "STOPPED":
            return
        self._advance(task, "ACTIVATING")
        self._after_dwell(task, "ACTIVATING", self._activated)

    def _activated(self, task: Task) -> None:
        if task.last_status != "ACTIVATING" or task.desired_status == "STOPPED":
            return
        task.started_at = self.clock()
        for container in task.containers:
            container.last_status = "RUNNING"
        self._advance(task, "RUNNING")

    def stop(self, task: Task, reason: str, stop_code: str = "UserInitiated") -> None:
        """Ask a task to stop: DEACTIVATING (if it got that far), then STOPPING, and STOPPED once its runner
        reports the exit."""
        if task.desired_status == "STOPPED":
            return
        task.desired_status = "STOPPED"
        task.stopped_reason, task.stop_code, task.stopping_at = reason, stop_code, self.clock()
        self._cancel_dwell(task)  # in PROVISIONING, PENDING before launch, or ACTIVATING
        if not task.launched:
            self._finish(task)
        elif task.last_status in ("ACTIVATING", "RUNNING"):
            self._advance(task, "DEACTIVATING")
            self._after_dwell(task, "DEACTIVATING", self._stopping)
        else:
            self._stopping(task)

    def _stopping(self, task: Task) -> None:
        """STOPPING: the runner is told to stop (once it has finished starting) unless the task exited already."""
        if ORDER[task.last_status] >= ORDER["STOPPING"]:
            return
        self._advance(task, "STOPPING")
        if task.id not in self._starting:
            self._spawn(self._stop_runner(task))

    async def _stop_runner(self, task: Task) -> None:
        await self.runner.stop(task.id, self.stop_timeout_s)
        if self._owns(task) and task.last_status != "STOPPED":
            # the runner's contract is to report the exit; never leave a task stuck if it did not
            asyncio.get_running_loop().call_later(1.0, self.on_exited, task, {}, task.stopped_reason or "", False)

    def on_exited(self, task: Task, exit_codes: dict[str, int | None], reason: str, failed_to_start: bool) -> None:
        if not self._owns(task) or ORDER[task.last_status] >= ORDER["DEPROVISIONING"]:
            return
        now = self.clock()
        for container in task.containers:
            container.last_status = "STOPPED"
            container.exit_code = exit_codes.get(container.name)
            if failed_to_start:
                container.reason = reason
        if task.desired_status != "STOPPED":
            task.desired_status = "STOPPED"
            task.stop_code = "TaskFailedToStart" if failed_to_start else "EssentialContainerExited"
            task.stopped_reason = reason or "Essential container in task exited"
            task.stopping_at = now
        task.execution_stopped_at = now
        self._cancel_dwell(task)  # its containers are gone: no more ACTIVATING or DEACTIVATING to wait out
        if task.last_status in ("ACTIVATING", "RUNNING"):
            self._advance(task, "DEACTIVATING")
        if ORDER[task.last_status] < ORDER["STOPPING"]:
            self._advance(task, "STOPPING")
        self._finish(task)

    def _finish(self, task: Task) -> None:
        self._advance(task, "DEPROVISIONING")
        self._after_dwell(task, "DEPROVISIONING", self._stopped_now)

    def _stopped_now(self, task: Task) -> None:
        task.stopped_at = self.clock()
        self._advance(task, "STOPPED")
        self.addresses.give_back(task.ip)
        self._stopped.append((time.monotonic(), task))

    def purge_expired(self) -> None:
        """Forget STOPPED tasks older than the retention period: from then on they are MISSING."""
        horizon = time.monotonic() - self.retention_s
        while self._stopped and self._stopped[0][0] <= horizon:
            self._forget(self._stopped.popleft()[1])

    def _forget(self, task: Task) -> None:
        del self.tasks[task.id]
        task.purged = True
        self.by_status["STOPPED"] -= 1
        if task.client_token is not None:
            self.tokens.pop((task.cluster.arn, task.client_token), None)
        cluster = task.cluster
        cluster.purged += 1
        if cluster.purged > 100 and cluster.purged * 2 > len(cluster.order):
            cluster.order = [t for t in cluster.order if not t.purged]
            cluster.seqs = [t.seq for t in cluster.order]
            cluster.purged = 0

    # ------------------------------------------------------------ whole-plane control

    def _spawn(self, coroutine: Coroutine) -> None:
        background = asyncio.ensure_future(coroutine)
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    async def reset(self) -> None:
        """Stop every task's containers and forget everything, as a fresh start."""
        live = [t for t in self.tasks.values() if t.launched and t.last_status != "STOPPED"]
        for timer in self._timers.values():
            timer.cancel()
        self._clear()
        for start in range(0, len(live), 200):
            await asyncio.gather(*(self.runner.stop(t.id, 0) for t in live[start : start + 200]))

    async def close(self) -> None:
        """Nothing outlives local ECS: stop timers, background work and the runner."""
        for timer in self._timers.values():
            timer.cancel()
        for background in list(self._background):
            background.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.runner.close()
