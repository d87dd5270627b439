"""Local ECS as a child process we fully own: for `calliope-hub up` and the benches.

A separate process keeps local ECS's CPU and memory out of the hub's figures and off the
hub's event loop. It talks to its owner only through the ECS wire protocol and the
documented /_localecs/ endpoints, as the hub does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from ...hub.events_handler import DEFAULT_HEADER, events_url
from ...localecs.orphaning import die_with_parent
from .hubproc import free_port


def _task_env() -> dict[str, str]:
    """Process-mode tasks find this Python's scripts (jupyterhub-singleuser) first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def event_args(hub_url: str, secret: str) -> list[str]:
    """`local-ecs` flags that post every task state change to the hub at `hub_url`, with
    the shared secret, as an EventBridge API destination would ([] when `secret` is '')."""
    if not secret:
        return []
    return ["--events-url", events_url(hub_url), "--events-header", f"{DEFAULT_HEADER}: {secret}"]


class LocalEcsStartError(RuntimeError):
    """Local ECS exited or never answered; the message ends with its log tail."""


class LocalEcsProcess:
    """`calliope-hub local-ecs ARGS` on a loopback port, in its own process group."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._command = [
            sys.executable, "-m", "calliope_hub.cli", "local-ecs",
            "--host", "127.0.0.1", "--port", str(self.port), *args,
        ]  # fmt: skip
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, timeout: float = 30) -> None:
        """Start it and return once /_localecs/stats answers."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                self._command,
                cwd=self.cwd,
                env=_task_env(),
                # SIGTERM, so that local ECS still stops its own task processes.
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        try:
            await self._wait_until_answering(timeout)
        except BaseException:
            await self.stop(timeout=0)
            raise

    async def _wait_until_answering(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalEcsStartError(
                    f"local ECS exited with code {self._process.returncode}: {self._tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                await self.stats()
                return
            await asyncio.sleep(0.1)
        raise LocalEcsStartError(f"local ECS did not answer within {timeout:g}s: {self._tail()}")

    def _tail(self, n: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, self.endpoint_url + path, json=body) as answer:
                answer.raise_for_status()
                return await answer.json()

    async def stats(self) -> dict:
        """GET /_localecs/stats: ECS calls by operation and outcome, tasks by lastStatus."""
        return await self._control("GET", "/_localecs/stats")

    async def kill_task(self, task_id: str, exit_code: int = 137) -> None:
        """The fault endpoint: the task's essential container dies now."""
        await self._control("POST", f"/_localecs/tasks/{task_id}/kill", {"exitCode": exit_code})

    async def stop(self, timeout: float = 15) -> None:
        """SIGTERM (local ECS stops every task it runs), SIGKILL the group after `timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    async def __aenter__(self) -> LocalEcsProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
