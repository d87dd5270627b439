"""`sim` mode: tasks that run nothing, but look alive on the network.

No process starts. Timers decide when a task is running, fails to start or stops on its
own, and how long it dwells in each state on the way (`dwell`, for the control plane; PENDING
and STOPPING here), so a `fargate` timing shows ACTIVATING, DEACTIVATING and the rest as ECS
does. ONE aiohttp application serves every RUNNING task: it gets a listening socket on the
task's own (address, containerPort), so a hub that checks its server sees a live one.
That is one file descriptor per live task and nothing else, which is how 10,000 fit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
from dataclasses import dataclass, field

from aiohttp import web

from calliope_hub.localecs.dwell import Dwell
from calliope_hub.localecs.runner import LaunchSpec, TaskHooks

log = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: every live sim task holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass(eq=False)
class _SimTask:
    spec: LaunchSpec
    hooks: TaskHooks
    timer: asyncio.TimerHandle | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    gone: bool = False


class SimRunner:
    """A `Runner` whose containers are timers and whose ports are one shared stub app."""

    def __init__(
        self,
        *,
        provisioning_s: float = 0.5,
        pending_s: float = 1.0,
        activating_s: float = 0.0,
        deactivating_s: float = 0.0,
        stopping_s: float = 0.0,
        deprovisioning_s: float = 0.0,
        jitter: float = 0.2,
        fail_fraction: float = 0.0,
        stop_rate_per_hour: float = 0.0,
        rng: random.Random | None = None,
    ):
        self.pending_s, self.stopping_s = pending_s, stopping_s
        self.fail_fraction, self.stop_rate_per_hour = fail_fraction, stop_rate_per_hour
        self.rng = rng or random.Random()
        #: seconds in the states the control plane moves a task through on its own (PENDING and STOPPING are ours).
        self.timing = Dwell(
            {
                "PROVISIONING": provisioning_s,
                "ACTIVATING": activating_s,
                "DEACTIVATING": deactivating_s,
                "DEPROVISIONING": deprovisioning_s,
            },
            jitter,
            self.rng,
        )
        self._tasks: dict[str, _SimTask] = {}
        self._by_address: dict[tuple[str, int], str] = {}
        self._stub: web.AppRunner | None = None
        raise_open_file_limit()

    def dwell(self, status: str) -> float:
        """Seconds a task spends in `status` before the control plane moves it on (it owns those states)."""
        return self.timing(status)

    async def start(self, spec: LaunchSpec, hooks: TaskHooks) -> None:
        entry = _SimTask(spec, hooks)
        self._tasks[spec.task_id] = entry
        entry.timer = asyncio.get_running_loop().call_later(
            self.timing.jittered(self.pending_s), lambda: asyncio.ensure_future(self._come_up(entry))
        )

    async def _come_up(self, entry: _SimTask) -> None:
        entry.timer = None
        if entry.gone:
            return
        if self.rng.random() < self.fail_fraction:
            self._exit(entry, None, "CannotPullContainerError: simulated failure to start", True)
            return
        try:
            await self._listen(entry)
        except OSError as error:
            self._exit(entry, None, f"CannotStartContainerError: {error}", True)
            return
        if entry.gone:  # stopped while its sockets were opening
            self._close_servers(entry)
            return
        entry.hooks.running()
        if self.stop_rate_per_hour > 0:
            after = self.rng.expovariate(self.stop_rate_per_hour / 3600)
            entry.timer = asyncio.get_running_loop().call_later(
                after, self._exit, entry, 1, "Essential container in task exited", False
            )

    async def _listen(self, entry: _SimTask) -> None:
        if self._stub is None:
            app = web.Application()
            app.router.add_route("*", "/{path:.*}", self._answer)
            self._stub = web.AppRunner(app, access_log=None)
            await self._stub.setup()
        loop = asyncio.get_running_loop()
        protocol = self._stub.server
        assert protocol is not None  # set up above
        for container in entry.spec.containers:
            if container.port is None:
                continue
            address = (entry.spec.ip, container.port)
            server = await loop.create_server(protocol, *address, reuse_address=True, backlog=64)
            entry.servers.append(server)
            self._by_address[address] = entry.spec.task_id

    async def _answer(self, request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        task_id = self._by_address.get(tuple(sockname[:2])) if sockname else None
        return web.json_response({"localecs": "sim", "task": task_id, "path": request.path})

    def _close_servers(self, entry: _SimTask) -> None:
        for server in entry.servers:
            server.close()
            sockname = server.sockets[0].getsockname() if server.sockets else None
            if sockname:
                self._by_address.pop(tuple(sockname[:2]), None)
        entry.servers.clear()

    def _exit(self, entry: _SimTask, exit_code: int | None, reason: str, failed_to_start: bool) -> None:
        if entry.gone:
            return
        entry.gone = True
        self._tasks.pop(entry.spec.task_id, None)
        if entry.timer is not None:
            entry.timer.cancel()
        self._close_servers(entry)
        codes = {c.name: exit_code for c in entry.spec.containers}
        entry.hooks.exited(codes, reason, failed_to_start)

    async def stop(self, task_id: str, timeout: float) -> None:
        """The container takes `stopping_s` to exit after SIGTERM; past `timeout` it is SIGKILLed (137)."""
        entry = self._tasks.get(task_id)
        if entry is None:
            return
        seconds = self.timing.jittered(self.stopping_s)
        if min(seconds, timeout) > 0:
            await asyncio.sleep(min(seconds, timeout))
        self._exit(entry, 0 if seconds <= timeout else 137, "Task stopped", False)

    async def kill(self, task_id: str, exit_code: int) -> None:
        entry = self._tasks.get(task_id)
        if entry is None:
            raise KeyError(task_id)
        self._exit(entry, exit_code, "Essential container in task exited", False)

    async def close(self) -> None:
        for entry in list(self._tasks.values()):
            entry.gone = True
            if entry.timer is not None:
                entry.timer.cancel()
            self._close_servers(entry)
        self._tasks.clear()
        if self._stub is not None:
            await self._stub.cleanup()
            self._stub = None
