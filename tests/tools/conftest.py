"""Real JupyterHubs for the tools' tests, each a HubProcess with its own proxy and ports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import require_proxy

TOKEN = "calliope-tools-test-token"

#: Spawner defined in the hub's config: every user's "server" is one tiny HTTP server
#: inside the hub process, so a real spawn (progress, proxy route, wait_up) costs a sleep
#: instead of a process. Users named slow-* take long enough to interrupt a run.
INSTANT_SPAWNER = """
import asyncio
from jupyterhub.spawner import Spawner
from tornado import httpserver, netutil, web


class _Ok(web.RequestHandler):
    def get(self, *args):
        self.write("ok")


class InstantSpawner(Spawner):
    started = False
    _port = None

    @classmethod
    def _shared_port(cls):
        if cls._port is None:
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            httpserver.HTTPServer(web.Application([(r"/.*", _Ok)])).add_sockets(sockets)
            cls._port = sockets[0].getsockname()[1]
        return cls._port

    async def start(self):
        await asyncio.sleep(60 if self.user.name.startswith("slow-") else 0.3)
        self.started = True
        return ("127.0.0.1", self._shared_port())

    async def stop(self, now=False):
        self.started = False

    async def poll(self):
        return None if self.started else 0

    def get_state(self):
        return {**super().get_state(), "started": self.started}

    def load_state(self, state):
        super().load_state(state)
        self.started = bool(state.get("started"))

    def clear_state(self):
        super().clear_state()
        self.started = False


c.JupyterHub.spawner_class = InstantSpawner
"""

BASE_CONFIG = "c.JupyterHub.authenticator_class = 'null'\n" + api_token_config(TOKEN)

#: Two spawns at a time, a 1 s Retry-After, and 202 at once (so progress streams are used).
THROTTLED_INSTANT_HUB = (
    BASE_CONFIG
    + INSTANT_SPAWNER
    + "c.JupyterHub.concurrent_spawn_limit = 2\n"
    # spawn_throttle_retry_range is not a configurable trait in 6.1.1; only the setting works.
    + "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0, 'spawn_throttle_retry_range': (1, 2)}\n"
)


def running_hub(config_text: str) -> Iterator[HubProcess]:
    """A started hub for a whole module; killed and removed afterwards, whatever happened."""
    require_proxy()
    hub = HubProcess(config_text)
    try:
        asyncio.run(hub.start())
        yield hub
        asyncio.run(hub.stop())
    finally:
        hub.cleanup()


@pytest.fixture(scope="session")
def api_token() -> str:
    """The admin-scoped service token every test hub accepts."""
    return TOKEN


@pytest.fixture(scope="session")
def base_hub_config() -> str:
    return BASE_CONFIG


@pytest.fixture(scope="module")
def instant_hub() -> Iterator[HubProcess]:
    yield from running_hub(THROTTLED_INSTANT_HUB)


@pytest.fixture(scope="module")
def stock_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """JupyterHub's own SimpleLocalProcessSpawner running the real jupyterhub-singleuser."""
    homes = tmp_path_factory.mktemp("homes")
    # The real single-user server, without the UI extensions it does not need to answer
    # the hub: they triple its start time on a busy 2-CPU machine.
    lean = "--ServerApp.jpserver_extensions=" + repr(
        {name: False for name in ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")}
    )
    config = (
        BASE_CONFIG
        + "c.JupyterHub.spawner_class = 'simple'\n"
        + f"c.SimpleLocalProcessSpawner.home_dir_template = '{homes}/{{username}}'\n"
        + f"c.Spawner.args = ['--allow-root', {lean!r}]\n"
    )
    yield from running_hub(config)


@pytest.fixture
def proxy_installed() -> None:
    """For tests that start their own HubProcess."""
    require_proxy()
