"""A real JupyterHub (and its configurable-http-proxy) as a child process we fully own.

`calliope-hub up`, the bench and the end-to-end tests all need the same thing: start
the hub as operators run it, ``python -m calliope_hub.hub.app`` (`calliope-jupyterhub`:
JupyterHub that checks our config at start; calliope_hub.hub.app), with a given config on
loopback ports, know when it answers, and make sure nothing it started outlives it. The last part is the hard one:
JupyterHub starts configurable-http-proxy in a session of its own (so signals to the hub
do not reach it), and on SIGKILL the proxy is orphaned. So we kill the hub's process
group, every descendant we saw, and the pid in the proxy's pid file.

The config it writes holds secrets (tokens, the login password): the file is 0600 in a
0700 working dir, and nothing secret is ever on a command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import psutil

from .procs import LOOPBACK, OwnedProcess, StartError, child_env, free_port

#: The checkout that holds the calliope_hub package (and, after `make up`, node_modules).
REPO_ROOT = Path(__file__).resolve().parents[3]
PROXY_NAME = "configurable-http-proxy"
#: Relative to the hub's working dir: JupyterHub's default ``ConfigurableHTTPProxy.pid_file``.
PROXY_PID_FILE = "jupyterhub-proxy.pid"
CONFIG_FILE = "jupyterhub_config.py"
LOG_FILE = "jupyterhub.log"


class ProxyNotInstalled(RuntimeError):
    """configurable-http-proxy is neither in the project's node_modules nor on PATH."""


class HubStartError(StartError):
    """The hub exited, never answered, or another process holds its port; the message ends with its log tail."""


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


def _ports_config(port: int, hub_port: int, proxy_api_port: int, proxy: list[str], external_proxy: bool) -> str:
    """Loopback ports of our own, so several hubs can run on one machine at once. An external proxy
    (its token in CONFIGPROXY_AUTH_TOKEN) outlives the hub, as z2jh and ECS deployments run it."""
    return (
        f"c.JupyterHub.bind_url = 'http://{LOOPBACK}:{port}'\n"
        f"c.JupyterHub.hub_bind_url = 'http://{LOOPBACK}:{hub_port}'\n"
        f"c.ConfigurableHTTPProxy.api_url = 'http://{LOOPBACK}:{proxy_api_port}'\n"
        f"c.ConfigurableHTTPProxy.command = {proxy!r}\n"
        f"c.ConfigurableHTTPProxy.should_start = {not external_proxy!r}\n"
    )


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by its owner only (0600), whatever the file's mode was."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def private_dir(path: Path) -> Path:
    """`path` made (with parents) and set to 0700."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class HubProcess(OwnedProcess):
    """One JupyterHub subprocess in its own working dir, process group and ports.

    The caller's config text is appended after our defaults (ports, proxy command), so
    it may override them. It can be started again after :meth:`stop` or :meth:`kill`
    with the same working dir, database and ports: that is a hub restart. With
    `external_proxy` someone else runs configurable-http-proxy on the public port (pass its
    token as CONFIGPROXY_AUTH_TOKEN in `env`), so the hub's own port is the one it must hold.
    """

    what = "hub"
    start_error = HubStartError

    def __init__(
        self,
        config_text: str,
        *,
        port: int | None = None,
        hub_port: int | None = None,
        proxy_api_port: int | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        external_proxy: bool = False,
    ) -> None:
        proxy = proxy_command()
        self._own_workdir = workdir is None
        self.workdir = private_dir(Path(workdir or tempfile.mkdtemp(prefix="calliope-hub-")).resolve())
        self.public_port = port or free_port()
        self.hub_port = hub_port or free_port()
        self.external_proxy = external_proxy
        super().__init__(
            port=self.hub_port if external_proxy else self.public_port,
            log_path=self.workdir / LOG_FILE,
            cwd=self.workdir,
            env=child_env([Path(proxy[0]).parent], env),
        )
        self.config_path = self.workdir / CONFIG_FILE
        header = _ports_config(self.public_port, self.hub_port, proxy_api_port or free_port(), proxy, external_proxy)
        write_private(self.config_path, header + "\n" + config_text + "\n")
        self._descendants: dict[int, psutil.Process] = {}

    @property
    def url(self) -> str:
        """The public URL (the proxy's), where /hub/api answers."""
        return f"http://{LOOPBACK}:{self.public_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "calliope_hub.hub.app", "-f", str(self.config_path)]

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        """Through the proxy it started, or on its own port when the proxy is someone else's."""
        base = f"http://{LOOPBACK}:{self.hub_port}" if self.external_proxy else self.url
        async with session.get(f"{base}/hub/api") as response:
            return response.status == 200

    def _observe(self) -> None:
        """Note the hub's children now, since after the hub dies they are reparented."""
        if self._process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._process.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)

    def _family(self) -> list[psutil.Process]:
        """The proxy holds the public port; it is one of the hub's descendants."""
        self._observe()
        return [*super()._family(), *self._descendants.values()]

    def _proxy_from_pid_file(self) -> psutil.Process | None:
        """The proxy JupyterHub recorded, if that pid still runs configurable-http-proxy."""
        try:
            pid = int((self.workdir / PROXY_PID_FILE).read_text().strip())
            process = psutil.Process(pid)
            command = " ".join(process.cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        return process if PROXY_NAME in command else None

    def kill(self) -> None:
        """SIGKILL the hub's group, its proxy and every descendant, then reap the hub.

        This is a crash, not a shutdown: the bench uses it to time a hub restart.
        """
        if self._process is None:
            return
        self._observe()
        leftovers = list(self._descendants.values())
        proxy = self._proxy_from_pid_file()
        if proxy is not None:
            leftovers.append(proxy)
        super().kill()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                if _is_alive(process):
                    process.kill()
        psutil.wait_procs([p for p in leftovers if _is_alive(p)], timeout=5)
        (self.workdir / PROXY_PID_FILE).unlink(missing_ok=True)
        self._descendants.clear()

    def _release(self) -> None:
        """Remove the working dir if we made it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
