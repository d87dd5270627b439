"""Child processes we fully own: each in a session of its own, probed until it answers, stopped as a group.

Local ECS and JupyterHub (with its proxy) are both run this way. A session of their own lets us
signal everything a child started at once, and keeps a terminal's Ctrl-C from reaching them
before we stop them in order. The shared parts live here once: the start-then-probe loop, the
check that the port which answers is really held by our child (not by another instance that
was there first), group signals, log tails, and free or busy ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiohttp
import psutil

LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A child exited, never answered, or its port is held by someone else; the message says which."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` now. SO_REUSEADDR, as the servers we start set it:
    a port whose last connections linger in TIME_WAIT is not busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str:
    """Who listens on `port`, as far as this user may see: 'pid 123 (name)'."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    return "a process this user cannot see"


@dataclass(frozen=True)
class BusyPort:
    """A port we need that something else holds."""

    role: str
    port: int
    holder: str

    def __str__(self) -> str:
        return f"port {self.port} ({self.role}) is in use by {self.holder}"


def busy_ports(wanted: Mapping[str, int]) -> list[BusyPort]:
    """The ports of `wanted` (role -> port) that are taken, each with who holds it."""
    return [BusyPort(role, port, port_holder(port)) for role, port in wanted.items() if not port_is_free(port)]


def listens_on(processes: Iterable[psutil.Process], port: int) -> bool:
    """Whether one of `processes` has a listening socket on `port`."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
    return False


def child_env(path_first: Sequence[Path], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus `extra`; PATH leads to `path_first`, then this Python's scripts
    (jupyterhub-singleuser, which JupyterHub and process-mode tasks run)."""
    env = {**os.environ, **(extra or {})}
    lead = [str(path) for path in path_first] + [str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*lead, env.get("PATH", "")])
    return env


def tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log, or a word on why there are none."""
    if path is None:
        return "(no log)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"


class OwnedProcess(ABC):
    """One child in a session of its own, serving on a loopback `port`.

    `start()` returns once the child answers on its port and holds that port itself;
    `stop()` asks the group to end (SIGTERM), then `kill()` ends what is left.
    """

    #: what it is, in messages
    what = "process"
    start_error: type[StartError] = StartError
    #: seconds from spawn to a first answer before giving up
    start_timeout = 60.0
    #: seconds from SIGTERM to SIGKILL in `stop()`
    stop_timeout = 20.0

    def __init__(self, *, port: int, log_path: Path | None, cwd: Path | None, env: Mapping[str, str]) -> None:
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (None once stopped or killed)."""
        return self._process.pid if self._process else None

    @abstractmethod
    def command(self) -> list[str]:
        """The argv to run."""

    @abstractmethod
    async def answers(self, session: aiohttp.ClientSession) -> bool:
        """One probe: does the child answer on its port yet?"""

    def _preexec(self) -> Callable[[], None] | None:
        """What runs in the child before exec (default: nothing, which keeps Popen's fast path)."""
        return None

    def _observe(self) -> None:
        """Called while the child runs and before it is signalled (default: nothing)."""
        return None

    def _release(self) -> None:
        """Gives back what the object made, after the child is gone (default: nothing)."""
        return None

    def _family(self) -> list[psutil.Process]:
        """The processes that may hold our port: the child itself by default."""
        with contextlib.suppress(psutil.Error):
            if self._process is not None:
                return [psutil.Process(self._process.pid)]
        return []

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    async def start(self, timeout: float | None = None) -> None:
        """Start the child and return once it answers on its own port."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"{self.what} already running (pid {self._process.pid})")
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(self.log_path, "ab")) if self.log_path else subprocess.DEVNULL
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=self._env,
                preexec_fn=self._preexec(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self._wait_until_answering(self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.kill()
            raise

    async def _wait_until_answering(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise self.start_error(f"{self.what} exited with code {process.returncode}; {self._log_note()}")
                self._observe()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if await self.answers(session):
                        self._check_port_is_ours()
                        return
                await asyncio.sleep(0.1)
        raise self.start_error(
            f"{self.what} did not answer on port {self.port} within {timeout:g}s; {self._log_note()}"
        )

    def _check_port_is_ours(self) -> None:
        """An answer from another instance that holds the port must not pass for ours."""
        if not listens_on(self._family(), self.port):
            raise self.start_error(
                f"port {self.port} answers, but {port_holder(self.port)} holds it, not this {self.what}; "
                f"{self._log_note()}"
            )

    def _log_note(self) -> str:
        return f"log {self.log_path}:\n{self.log_tail()}" if self.log_path else "(no log)"

    def signal_group(self, signum: signal.Signals) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signum)

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the group (a graceful shutdown), SIGKILL what is left after `timeout`."""
        process = self._process
        if process is None:
            return
        self._observe()
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the group and reap the child: a crash, not a shutdown."""
        if self._process is None:
            return
        self.signal_group(signal.SIGKILL)
        self._process.wait()
        self._process = None

    def cleanup(self) -> None:
        """Kill everything and give back what we made (a temporary working dir)."""
        self.kill()
        self._release()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self._release()  # the error already carries the log tail
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        self._release()
