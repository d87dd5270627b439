"""Local ECS as a child process we fully own: for `calliope-hub up` and the benches.

A separate process keeps local ECS's CPU and memory out of the hub's figures and off the
hub's event loop. It talks to its owner only through the ECS wire protocol and the
documented /_localecs/ endpoints, as the hub does.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ...events.wire import DEFAULT_HEADER, events_url
from ...localecs.cli import EVENTS_HEADER_ENV
from ...localecs.orphaning import die_with_parent
from .procs import LOOPBACK, OwnedProcess, StartError, child_env, free_port


def event_args(hub_url: str) -> list[str]:
    """`local-ecs` flags that post every task state change to the hub at `hub_url`,
    as an EventBridge API destination would (the secret goes by `event_env`)."""
    return ["--events-url", events_url(hub_url)]


def event_env(secret: str) -> dict[str, str]:
    """The events header with its shared secret, for local ECS's environment: on a command
    line it would be readable by every local user through `ps`."""
    return {EVENTS_HEADER_ENV: f"{DEFAULT_HEADER}: {secret}"}


class LocalEcsStartError(StartError):
    """Local ECS exited, never answered, or another process holds its port."""


class LocalEcsProcess(OwnedProcess):
    """`calliope-hub local-ecs ARGS` on a loopback port, in its own process group."""

    what = "local ECS"
    start_error = LocalEcsStartError
    start_timeout = 30.0
    #: local ECS stops every task it runs on SIGTERM: give it that long before SIGKILL
    stop_timeout = 15.0

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port=port or free_port(), log_path=log_path, cwd=cwd, env=child_env([], env))
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self._args = list(args)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "calliope_hub.cli", "local-ecs",
            "--host", LOOPBACK, "--port", str(self.port), *self._args,
        ]  # fmt: skip

    def _preexec(self) -> Callable[[], None]:
        # SIGTERM, so that local ECS still stops its own task processes when its owner dies.
        return functools.partial(die_with_parent, signal.SIGTERM)

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{self.endpoint_url}/_localecs/stats") as answer:
            return answer.status == 200

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, self.endpoint_url + path, json=body) as answer,
        ):
            answer.raise_for_status()
            return await answer.json()

    async def stats(self) -> dict:
        """GET /_localecs/stats: ECS calls by operation and outcome, tasks by lastStatus."""
        return await self._control("GET", "/_localecs/stats")

    async def kill_task(self, task_id: str, exit_code: int = 137) -> None:
        """The fault endpoint: the task's essential container dies now."""
        await self._control("POST", f"/_localecs/tasks/{task_id}/kill", {"exitCode": exit_code})
