"""A real JupyterHub (and its configurable-http-proxy) as a child process we fully own.

`calliope-hub up`, the bench and the end-to-end tests all need the same thing: start a
stock ``python -m jupyterhub`` with a given config on free loopback ports, know when it
answers, and make sure nothing it started outlives it. The last part is the hard one:
JupyterHub starts configurable-http-proxy in a session of its own (so signals to the hub
do not reach it), and on SIGKILL the proxy is orphaned. So we kill the hub's process
group, every descendant we saw, and the pid in the proxy's pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import aiohttp
import psutil

#: The checkout that holds the calliope_hub package (and, after `make up`, node_modules).
REPO_ROOT = Path(__file__).resolve().parents[3]
PROXY_NAME = "configurable-http-proxy"
#: Relative to the hub's working dir: JupyterHub's default ``ConfigurableHTTPProxy.pid_file``.
PROXY_PID_FILE = "jupyterhub-proxy.pid"
CONFIG_FILE = "jupyterhub_config.py"
LOG_FILE = "jupyterhub.log"


class ProxyNotInstalled(RuntimeError):
    """configurable-http-proxy is neither in the project's node_modules nor on PATH."""


class HubStartError(RuntimeError):
    """The hub exited or never answered; the message ends with its log tail."""


def proxy_command() -> list[str]:
    """The command that runs configurable-http-proxy: the project's own copy first."""
    local = REPO_ROOT / "node_modules" / ".bin" / PROXY_NAME
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    found = shutil.which(PROXY_NAME)
    if found:
        return [found]
    raise ProxyNotInstalled(
        f"{PROXY_NAME} is not in {local.parent} nor on PATH: run `make up` "
        f"(or `npm install` in {REPO_ROOT}) to install it into the project"
    )


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_token_config(token: str, service: str = "loadtest") -> str:
    """Config lines for a service whose API token may create users and start/stop servers.

    This is the token `calliope-hub loadtest` and the bench use against a hub they start.
    """
    return (
        f"c.JupyterHub.services = [{{'name': {service!r}, 'api_token': {token!r}}}]\n"
        "c.JupyterHub.load_roles = [{\n"
        f"    'name': {service + '-role'!r},\n"
        "    'scopes': ['admin:users', 'admin:servers', 'list:users', 'read:metrics', 'access:servers'],\n"
        f"    'services': [{service!r}],\n"
        "}]\n"
    )


def _ports_config(port: int, hub_port: int, proxy_api_port: int, proxy: list[str]) -> str:
    """Loopback ports of our own, so several hubs can run on one machine at once."""
    return (
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{port}'\n"
        f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'\n"
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{proxy_api_port}'\n"
        f"c.ConfigurableHTTPProxy.command = {proxy!r}\n"
    )


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class HubProcess:
    """One JupyterHub subprocess in its own working dir, process group and ports.

    The caller's config text is appended after our defaults (ports, proxy command), so
    it may override them. It can be started again after :meth:`stop` or :meth:`kill`
    with the same working dir, database and ports: that is a hub restart.
    """

    def __init__(
        self,
        config_text: str,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        proxy = proxy_command()
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="calliope-hub-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / CONFIG_FILE
        self.log_path = self.workdir / LOG_FILE
        header = _ports_config(self.port, free_port(), free_port(), proxy)
        self.config_path.write_text(header + "\n" + config_text + "\n")
        self._env = self._child_env(Path(proxy[0]).parent, env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._descendants: dict[int, psutil.Process] = {}

    @property
    def url(self) -> str:
        """The public URL (the proxy's), where /hub/api answers."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The hub's pid while it runs (None once stopped or killed)."""
        return self._process.pid if self._process else None

    @staticmethod
    def _child_env(proxy_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
        """PATH leads to our proxy and our Python's scripts (jupyterhub-singleuser)."""
        env = dict(os.environ)
        env.update(extra)
        python_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([str(proxy_dir), python_dir, env.get("PATH", "")])
        return env

    async def start(self, timeout: float = 60) -> None:
        """Start the hub and return once GET /hub/api answers through the proxy."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"hub already running (pid {self._process.pid})")
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.config_path)],
                cwd=self.workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self._wait_until_answering(timeout)
        except BaseException:
            self.kill()
            raise

    async def _wait_until_answering(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        probe = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=probe) as session:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise HubStartError(
                        f"hub exited with code {self._process.returncode}; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                self._remember_descendants()
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(f"{self.url}/hub/api") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise HubStartError(
            f"hub did not answer {self.url}/hub/api within {timeout:g}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _remember_descendants(self) -> None:
        """Note the hub's children now, since after the hub dies they are reparented."""
        if self._process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._process.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)

    def _proxy_from_pid_file(self) -> psutil.Process | None:
        """The proxy JupyterHub recorded, if that pid still runs configurable-http-proxy."""
        try:
            pid = int((self.workdir / PROXY_PID_FILE).read_text().strip())
            process = psutil.Process(pid)
            command = " ".join(process.cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        return process if PROXY_NAME in command else None

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    async def stop(self, timeout: float = 20) -> None:
        """SIGTERM the hub (a graceful JupyterHub shutdown), SIGKILL what is left."""
        if self._process is None:
            return
        self._remember_descendants()
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the hub's group, its proxy and every descendant, then reap the hub.

        This is a crash, not a shutdown: the bench uses it to time a hub restart.
        """
        if self._process is None:
            return
        self._remember_descendants()
        self._signal_group(signal.SIGKILL)
        leftovers = list(self._descendants.values())
        proxy = self._proxy_from_pid_file()
        if proxy is not None:
            leftovers.append(proxy)
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                if _is_alive(process):
                    process.kill()
        self._process.wait()
        psutil.wait_procs([p for p in leftovers if _is_alive(p)], timeout=5)
        (self.workdir / PROXY_PID_FILE).unlink(missing_ok=True)
        self._descendants.clear()
        self._process = None

    def log_tail(self, n: int = 40) -> str:
        """The last n lines of the hub's log (stdout and stderr)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def cleanup(self) -> None:
        """Kill everything and remove the working dir if we made it."""
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> HubProcess:
        try:
            await self.start()
        except BaseException:
            self.cleanup()  # the error already carries the log tail
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        self.cleanup()
