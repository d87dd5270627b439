"""Process mode: every container of a task is a real local process.

This is what lets a laptop or a CI machine run real JupyterLab servers behind a hub that
believes it talks to ECS. What a container would get from its image and its ENI, a
process gets from here:

- its command is the container's ``entryPoint + command`` (the image itself is not used);
- its environment is a few host variables (PATH, HOME, LANG, ...) plus the container's
  environment, its resolved `secrets` and ``LOCALECS_TASK_IP``; nothing else leaks in from
  local ECS's own process;
- every ``0.0.0.0`` in argv and environment values becomes the task's own address. In
  awsvpc, binding all interfaces inside a task binds only the task's ENI; on one machine
  it would bind every address, so two tasks on the same port would collide.
- an EFS mount point's ``containerPath`` cannot exist here, so every whole occurrence of it
  in argv, environment values and ``workingDirectory`` becomes the directory that holds the
  access point's files (``<data_dir>/efs/<fs id>/<root path>``), which outlives the task;
- each process leads its own session, so a stop signals the whole tree it started;
- stdout and stderr go to ``<log_dir>/<task_id>.log``, never to a pipe that could fill.

Exit codes follow Docker: a process killed by signal N exits with 128 + N (SIGTERM 143,
SIGKILL 137). Health checks run as ECS describes them, except that during ``startPeriod``
the probe runs every second instead of every ``interval``, so a local spawn is not held
up by production timings; failures inside ``startPeriod`` do not count, and ``retries``
consecutive failures after it stop the task.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .efsvolumes import prepare_directory
from .orphaning import die_with_parent
from .runner import ContainerSpec, LaunchSpec, StartFailure, TaskHooks

log = logging.getLogger(__name__)

ESSENTIAL_EXITED = "Essential container in task exited"
HEALTH_CHECK_FAILED = "Task failed container health checks"
STOPPED = "Task stopped"
SHUT_DOWN = "Local ECS shut down"

#: Host variables a process needs to find its programs and locale; everything else stays out.
HOST_ENVIRONMENT = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "VIRTUAL_ENV",
)
_ALL_INTERFACES = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")
#: ECS's healthCheck defaults (seconds).
_HEALTH_DEFAULTS = {"interval": 30.0, "timeout": 5.0, "retries": 3, "startPeriod": 0.0}
_START_PERIOD_PROBE_INTERVAL = 1.0

#: Process groups alive in this interpreter, for the last-resort cleanup at exit.
_LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_live_groups() -> None:
    for group in list(_LIVE_GROUPS):
        _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def docker_exit_code(returncode: int | None) -> int | None:
    """asyncio reports death by signal N as -N; ECS (through Docker) reports 128 + N."""
    if returncode is not None and returncode < 0:
        return 128 - returncode
    return returncode


def bind_task_address(value: str, ip: str) -> str:
    """Replace every 0.0.0.0 in `value` by the task's own address."""
    return _ALL_INTERFACES.sub(ip, value)


def path_mapper(directories: dict[str, Path]) -> Callable[[str], str]:
    """Rewrite each whole container path in `directories` (and paths below it) to its host directory.

    Only a whole path is rewritten: with /home/jovyan mounted, `--notebook-dir=/home/jovyan/work`
    and `PATH=/home/jovyan/bin:/usr/bin` change, `/home/jovyan2` and `/srv/home/jovyan` do not.
    The longest container path wins when mounts nest.
    """
    if not directories:
        return lambda value: value
    by_path = {path.rstrip("/"): str(directory) for path, directory in directories.items()}
    alternatives = "|".join(re.escape(path) for path in sorted(by_path, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?![\w.-])")
    return lambda value: pattern.sub(lambda match: by_path[match.group(1)], value)


@dataclass(frozen=True)
class ContainerView:
    """What one container's process gets: its argv, environment and working directory on this host."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    cwd: Path | None
    rewrite: Callable[[str], str]


def container_view(container: ContainerSpec, ip: str, data_dir: Path) -> ContainerView:
    """The container as a local process; StartFailure when an EFS mount cannot be set up.

    Secrets go into the environment as they are: a secret is opaque, never rewritten.
    """
    mapped = path_mapper({m.container_path: prepare_directory(data_dir, m) for m in container.mounts})

    def rewrite(value: str) -> str:
        return mapped(bind_task_address(value, ip))

    env = {name: os.environ[name] for name in HOST_ENVIRONMENT if name in os.environ}
    env.update({name: rewrite(value) for name, value in container.environment.items()})
    env.update(container.secrets)
    env["LOCALECS_TASK_IP"] = ip
    cwd = None
    if container.working_directory is not None and mapped(container.working_directory) != container.working_directory:
        cwd = Path(mapped(container.working_directory))
        cwd.mkdir(parents=True, exist_ok=True)  # as Docker creates a missing working directory
    return ContainerView([rewrite(arg) for arg in container.argv], env, cwd, rewrite)


def health_check_argv(check: dict) -> list[str]:
    """ECS's ["CMD-SHELL", "cmd"] or ["CMD", *argv] as an argv; ValueError for anything else."""
    command = check.get("command") or []
    if len(command) == 2 and command[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", command[1]]
    if len(command) >= 2 and command[0] == "CMD":
        return list(command[1:])
    raise ValueError(f"healthCheck command must be ['CMD-SHELL', cmd] or ['CMD', ...], got {command!r}")


@dataclass
class _LocalTask:
    spec: LaunchSpec
    hooks: TaskHooks
    log_path: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    views: dict[str, ContainerView] = field(default_factory=dict)
    #: essential containers whose health check has not passed yet; RUNNING waits for them.
    awaiting_health: set[str] = field(default_factory=set)
    watchers: list[asyncio.Task] = field(default_factory=list)
    ending: asyncio.Task | None = None
    forced_exit_code: int | None = None

    @property
    def groups(self) -> list[int]:
        return [process.pid for process in self.processes.values()]


class ProcessRunner:
    """Runs each task's containers as local process groups and reports through TaskHooks.

    Hooks are never called from inside `start`; they come from the runner's own asyncio
    tasks, and `exited` comes exactly once per started task (also on `close`).
    """

    def __init__(self, log_dir: Path | None = None, data_dir: Path | None = None) -> None:
        self._owns_log_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="localecs-")) if log_dir is None else log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        #: where EFS access points keep their files; a temporary one goes away with the runner.
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="localecs-data-")) if data_dir is None else data_dir
        self._tasks: dict[str, _LocalTask] = {}

    def log_path(self, task_id: str) -> Path:
        """Where a task's stdout and stderr go; it stays until `close`."""
        return self.log_dir / f"{task_id}.log"

    async def start(self, spec: LaunchSpec, hooks: TaskHooks) -> None:
        if spec.task_id in self._tasks:
            raise ValueError(f"task {spec.task_id} is already running")
        task = _LocalTask(spec, hooks, self.log_path(spec.task_id))
        try:
            for container in spec.containers:
                if not container.argv:
                    raise ValueError(f"no command for image {container.image}")
                if container.health_check is not None:
                    health_check_argv(container.health_check)
                task.views[container.name] = container_view(container, spec.ip, self.data_dir)
            for container in spec.containers:
                view = task.views[container.name]
                task.processes[container.name] = await _spawn_group(view.argv, view.env, task.log_path, view.cwd)
        except StartFailure as exc:
            await self._abandon(task, str(exc))
            return
        except (ValueError, OSError) as exc:
            await self._abandon(task, f"CannotStartContainerError: {exc}")
            return
        self._tasks[spec.task_id] = task
        for container in spec.containers:
            task.watchers.append(asyncio.create_task(self._watch_exit(task, container)))
            if container.health_check is not None:
                if container.essential:
                    task.awaiting_health.add(container.name)
                task.watchers.append(asyncio.create_task(self._watch_health(task, container)))
        if not task.awaiting_health:
            asyncio.get_running_loop().call_soon(self._report_running, task)

    async def stop(self, task_id: str, timeout: float) -> None:
        """SIGTERM every process group, SIGKILL after `timeout`; returns once exited() was reported.

        Stopping a task that is unknown or already gone does nothing.
        """
        task = self._tasks.get(task_id)
        if task is not None:
            await self._end(task, STOPPED, timeout)

    async def kill(self, task_id: str, exit_code: int) -> None:
        """SIGKILL now; essential containers report `exit_code`, as if they had died with it."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.forced_exit_code = exit_code
        for group in task.groups:
            _signal_group(group, signal.SIGKILL)
        await self._end(task, ESSENTIAL_EXITED, 0.0)

    async def close(self) -> None:
        """SIGKILL every task at once, reap them all, report each, and remove the logs."""
        tasks = list(self._tasks.values())
        for task in tasks:
            for group in task.groups:
                _signal_group(group, signal.SIGKILL)
        await asyncio.gather(*(self._end(task, SHUT_DOWN, 0.0) for task in tasks))
        if self._owns_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def _abandon(self, task: _LocalTask, reason: str) -> None:
        """A container could not start: kill what did start and report TaskFailedToStart."""
        await self._terminate(task, 0.0)
        codes: dict[str, int | None] = {container.name: None for container in task.spec.containers}
        asyncio.get_running_loop().call_soon(self._report_exited, task, codes, reason, True)

    async def _end(self, task: _LocalTask, reason: str, grace: float) -> None:
        await asyncio.shield(self._begin_end(task, reason, grace))

    def _begin_end(self, task: _LocalTask, reason: str, grace: float) -> asyncio.Task:
        """The one way a started task ends; the first caller's reason wins, later callers wait."""
        if task.ending is None:
            task.ending = asyncio.create_task(self._finish(task, reason, grace))
        return task.ending

    async def _finish(self, task: _LocalTask, reason: str, grace: float) -> None:
        for watcher in task.watchers:
            watcher.cancel()
        await asyncio.gather(*task.watchers, return_exceptions=True)
        await self._terminate(task, grace)
        codes = {name: docker_exit_code(process.returncode) for name, process in task.processes.items()}
        if task.forced_exit_code is not None:
            for container in task.spec.containers:
                if container.essential:
                    codes[container.name] = task.forced_exit_code
        self._tasks.pop(task.spec.task_id, None)
        self._report_exited(task, codes, reason, False)

    async def _terminate(self, task: _LocalTask, grace: float) -> None:
        """SIGTERM, SIGKILL after `grace`, reap; then sweep what the leaders left in their groups."""
        alive = [process for process in task.processes.values() if process.returncode is None]
        for process in alive:
            _signal_group(process.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        waiting = asyncio.gather(*(process.wait() for process in alive))
        try:
            await asyncio.wait_for(asyncio.shield(waiting), grace if grace > 0 else None)
        except TimeoutError:
            for process in alive:
                _signal_group(process.pid, signal.SIGKILL)
            await waiting
        for group in task.groups:
            _signal_group(group, signal.SIGKILL)
            _LIVE_GROUPS.discard(group)

    async def _watch_exit(self, task: _LocalTask, container: ContainerSpec) -> None:
        await task.processes[container.name].wait()
        if container.essential:
            self._begin_end(task, ESSENTIAL_EXITED, task.spec.stop_timeout)

    async def _watch_health(self, task: _LocalTask, container: ContainerSpec) -> None:
        check = {**_HEALTH_DEFAULTS, **(container.health_check or {})}
        view = task.views[container.name]
        argv = [view.rewrite(arg) for arg in health_check_argv(check)]
        loop = asyncio.get_running_loop()
        start_period_ends = loop.time() + float(check["startPeriod"])
        healthy, failures = False, 0
        while True:
            passed = await _probe(argv, view, float(check["timeout"]), task.log_path)
            in_start_period = loop.time() < start_period_ends
            if passed:
                failures = 0
                if not healthy:
                    healthy = True
                    self._container_healthy(task, container.name)
            elif healthy or not in_start_period:
                failures += 1
                if failures >= max(1, int(check["retries"])) and container.essential:
                    self._begin_end(task, HEALTH_CHECK_FAILED, task.spec.stop_timeout)
                    return
            fast = in_start_period and not healthy
            await asyncio.sleep(_START_PERIOD_PROBE_INTERVAL if fast else float(check["interval"]))

    def _container_healthy(self, task: _LocalTask, name: str) -> None:
        if name in task.awaiting_health:
            task.awaiting_health.discard(name)
            if not task.awaiting_health:
                self._report_running(task)

    def _report_running(self, task: _LocalTask) -> None:
        if task.ending is None and task.spec.task_id in self._tasks:
            _call_hook(task.hooks.running)

    def _report_exited(self, task: _LocalTask, codes: dict, reason: str, failed_to_start: bool) -> None:
        _call_hook(task.hooks.exited, codes, reason, failed_to_start)


def _call_hook(hook, *args) -> None:
    """A failing hook is the control plane's bug; it must not leave processes unreaped here."""
    try:
        hook(*args)
    except Exception:
        log.exception("local ECS task hook %s failed", getattr(hook, "__name__", hook))


async def _probe(argv: list[str], view: ContainerView, timeout: float, log_path: Path) -> bool:
    """One health check run: exit 0 within `timeout` passes; the probe never outlives its call."""
    try:
        process = await _spawn_group(argv, view.env, log_path, view.cwd)
    except OSError as exc:
        log.warning("health check %s could not start: %s", argv, exc)
        return False
    try:
        return await asyncio.wait_for(process.wait(), timeout) == 0
    except TimeoutError:
        return False
    finally:
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()
        _LIVE_GROUPS.discard(process.pid)


async def _spawn_group(
    argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """A process leading its own session (so its whole tree can be signalled), output to the log."""
    with open(log_path, "ab") as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    _LIVE_GROUPS.add(process.pid)
    return process
