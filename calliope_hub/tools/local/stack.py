"""One local stack: local ECS, its cluster, a real JupyterHub with its proxy, and an API client.

`calliope-hub up`, `bench`, `bench-detect` and the end-to-end tests all run the product this
way, so what the tests prove is what a newcomer runs and what the bench measures. What differs
between them is data (a `StackSpec`); the order and the teardown live once, here:

1. every port the stack will listen on is checked before anything starts (`PortsBusy` names
   the port and who holds it);
2. local ECS starts (or an ECS someone else runs is used) and its cluster gets the catalog's
   task definitions;
3. the hub starts, rendered by `hubconfig`, with an admin service token the stack's `api` uses;
4. `close()` undoes it in reverse and leaves no process behind.

The production shape is data too: a PostgreSQL database the stack creates and drops
(`StackSpec.own_database` with `HubSettings.db_url`), and configurable-http-proxy run by the
stack rather than the hub (`StackSpec.external_proxy`), so a hub crash leaves the routes up.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...catalog import Catalog
from ...ecs.api import EcsApi, EcsTarget
from ...ecs.taskdefs import prepare_cluster
from ..hubapi import HubApi
from .ha import ChpReplica, drop_database, ensure_database
from .hubconfig import HubSettings, render
from .hubproc import HubProcess, api_token_config, private_dir
from .localecs_proc import LocalEcsProcess, event_args, event_env
from .procs import LOOPBACK, BusyPort, busy_ports, free_port

REGION = "us-east-1"
HUB_DIR = "hub"
TASKS_DIR = "tasks"
LOCAL_ECS_LOG = "local-ecs.log"
PROXY_LOG = "proxy.log"
#: where an external proxy's API token reaches the hub (JupyterHub reads it from here)
PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"


@dataclass(frozen=True)
class LocalEcsSpec:
    """Local ECS run by the stack: the flags of `calliope-hub local-ecs` that callers vary."""

    #: sim: stub servers that only answer HTTP; process: a real jupyterhub-singleuser per task
    mode: str = "sim"
    #: 'aws' applies ECS's own quotas (the bench), 'off' none
    throttle: str = "off"
    sim_provisioning: float | None = None
    sim_pending: float | None = None
    #: a named sim timing of local ECS ('fast', 'fargate'; '' = local ECS's default)
    sim_timing: str = ""
    #: task addresses ('' = local ECS picks a random /16 of its own)
    cidr: str = ""

    def args(self) -> list[str]:
        args = ["--mode", self.mode, "--throttle", self.throttle]
        if self.sim_timing:
            args += ["--sim-timing", self.sim_timing]
        if self.sim_provisioning is not None:
            args += ["--sim-provisioning", str(self.sim_provisioning)]
        if self.sim_pending is not None:
            args += ["--sim-pending", str(self.sim_pending)]
        if self.cidr:
            args += ["--cidr", self.cidr]
        return args


@dataclass(frozen=True)
class RunningEcs:
    """An ECS someone else runs and stops (a test's in-thread local ECS): the stack only prepares its cluster."""

    endpoint_url: str


@dataclass(frozen=True)
class StackPorts:
    """Every loopback port the stack listens on: picked up front, so all are checked before anything starts."""

    public: int
    hub: int
    proxy_api: int
    #: None when the stack does not run ECS itself
    ecs: int | None

    @classmethod
    def pick(cls, public: int | None = None, ecs: int | None = None, *, own_ecs: bool = True) -> StackPorts:
        """The given ports, and free ones for the rest."""
        return cls(public or free_port(), free_port(), free_port(), (ecs or free_port()) if own_ecs else None)

    def roles(self) -> dict[str, int]:
        roles = {"the hub's public port": self.public, "the hub's internal API": self.hub,
                 "the proxy's API": self.proxy_api}  # fmt: skip
        if self.ecs is not None:
            roles["local ECS"] = self.ecs
        return roles

    def busy(self) -> list[BusyPort]:
        """The ports something else already holds, each with its holder."""
        return busy_ports(self.roles())


class PortsBusy(RuntimeError):
    """Some of the stack's ports are taken; nothing was started."""

    def __init__(self, busy: list[BusyPort]) -> None:
        super().__init__("; ".join(str(port) for port in busy))
        self.busy = busy


@dataclass(frozen=True)
class StackSpec:
    """Everything that differs between one local stack and the next."""

    #: the hub's settings; the stack fills in `ecs_endpoint` and `events_secret`
    hub: HubSettings = field(default_factory=HubSettings)
    ecs: LocalEcsSpec | RunningEcs = field(default_factory=LocalEcsSpec)
    #: None: free ports
    ports: StackPorts | None = None
    #: the hub's database and logs, local ECS's log and tasks (None: a temporary dir)
    workdir: Path | None = None
    #: keep a temporary workdir at close, for a post-mortem
    keep_workdir: bool = False
    #: local ECS posts every task state change to the hub's events endpoint
    events: bool = False
    #: the admin service's API token ('' = a fresh one)
    api_token: str = ""
    api_service: str = "calliope-admin"
    hub_start_timeout: float = 120.0
    #: configurable-http-proxy started by the stack, not by the hub (`should_start = False`)
    external_proxy: bool = False
    #: create the PostgreSQL database `hub.db_url` names at start and drop it at close
    own_database: bool = False


class LocalStack:
    """Local ECS + cluster + hub + API client, started and closed in order; an async context manager."""

    def __init__(self, spec: StackSpec) -> None:
        self.spec = spec
        if spec.events and isinstance(spec.ecs, RunningEcs):
            raise ValueError("events need a local ECS the stack runs itself")
        self._own_workdir = spec.workdir is None
        self.workdir = (spec.workdir or Path(tempfile.mkdtemp(prefix="calliope-stack-"))).resolve()
        self.ports = spec.ports or StackPorts.pick(own_ecs=isinstance(spec.ecs, LocalEcsSpec))
        self.token = spec.api_token or secrets.token_hex(16)
        self.events_secret = secrets.token_urlsafe(24) if spec.events else ""
        ecs_url = spec.ecs.endpoint_url if isinstance(spec.ecs, RunningEcs) else f"http://{LOOPBACK}:{self.ports.ecs}"
        self.settings = dataclasses.replace(spec.hub, ecs_endpoint=ecs_url, events_secret=self.events_secret)
        self._ecs: LocalEcsProcess | None = None
        self.hub: HubProcess | None = None
        self.proxy: ChpReplica | None = None
        self.proxy_token = secrets.token_hex(16) if spec.external_proxy else ""
        self._database_made = False
        self._api: HubApi | None = None

    @property
    def url(self) -> str:
        """The hub's public URL (the proxy's)."""
        return f"http://{LOOPBACK}:{self.ports.public}"

    @property
    def ecs_url(self) -> str:
        return self.settings.ecs_endpoint

    @property
    def ecs(self) -> LocalEcsProcess:
        """The local ECS this stack runs (its /_localecs/ stats and fault endpoints)."""
        if self._ecs is None:
            raise RuntimeError("this stack runs no local ECS of its own (not started, or RunningEcs)")
        return self._ecs

    @property
    def api(self) -> HubApi:
        """An admin client of the hub's REST API (after `start`)."""
        if self._api is None:
            raise RuntimeError("the stack has not started")
        return self._api

    @property
    def hub_workdir(self) -> Path:
        return self.workdir / HUB_DIR

    async def start(self) -> None:
        """Check every port, start local ECS, prepare the cluster, start the hub; on any failure
        whatever did start is stopped again."""
        try:
            busy = self.ports.busy()
            if busy:
                raise PortsBusy(busy)
            private_dir(self.workdir)
            if self.spec.own_database:
                self._database_made = ensure_database(self.settings.db_url)
            await self._start_ecs()
            if self.spec.external_proxy:
                await self._start_proxy()
            await self.start_hub()
        except BaseException:
            await self.close(graceful=False)
            raise

    async def _start_ecs(self) -> None:
        if isinstance(self.spec.ecs, LocalEcsSpec):
            tasks = self.workdir / TASKS_DIR
            tasks.mkdir(exist_ok=True)
            events = bool(self.events_secret)
            self._ecs = LocalEcsProcess(
                self.spec.ecs.args() + (event_args(self.url) if events else []),
                port=self.ports.ecs,
                log_path=self.workdir / LOCAL_ECS_LOG,
                cwd=tasks,
                env=event_env(self.events_secret) if events else None,
            )
            await self._ecs.start()
        api = await EcsApi.create(EcsTarget(REGION, self.ecs_url))
        try:
            await prepare_cluster(api, Catalog.load(), self.settings.cluster, local=True)
        finally:
            await api.close()

    async def _start_proxy(self) -> None:
        """configurable-http-proxy on the public port; the hub adds its own route when it starts."""
        self.proxy = ChpReplica(
            public=self.ports.public,
            api=self.ports.proxy_api,
            token=self.proxy_token,
            error_target=f"http://{LOOPBACK}:{self.ports.hub}/hub/error",
            log_path=self.workdir / PROXY_LOG,
            cwd=self.workdir,
        )
        await self.proxy.start()

    def hub_config(self, **changes: Any) -> str:
        """The hub's config: the settings (with `changes`) and the admin service's token."""
        return render(dataclasses.replace(self.settings, **changes)) + api_token_config(
            self.token, self.spec.api_service
        )

    async def start_hub(self, *, timeout: float | None = None, **changes: Any) -> float:
        """(Re)start the hub on the same ports, database and working dir; `changes` override
        hub settings for this start (the bench restarts with cleanup_servers on). Returns the
        seconds until its API answered."""
        if self.hub is not None and self.hub.pid is not None:
            raise RuntimeError("the hub is running: stop or kill it before starting another")
        self.hub = HubProcess(
            self.hub_config(**changes),
            port=self.ports.public,
            hub_port=self.ports.hub,
            proxy_api_port=self.ports.proxy_api,
            workdir=self.hub_workdir,
            env={PROXY_TOKEN_ENV: self.proxy_token} if self.proxy_token else None,
            external_proxy=self.spec.external_proxy,
        )
        began = time.monotonic()
        await self.hub.start(self.spec.hub_start_timeout if timeout is None else timeout)
        elapsed = time.monotonic() - began
        if self._api is None:
            self._api = HubApi(self.url, self.token, max_retries=3)
        return elapsed

    async def close(self, *, graceful: bool = True) -> None:
        """Nothing outlives the stack: the API client, the hub's group and proxy (SIGTERM first
        when `graceful`, so JupyterHub shuts down as it would), then local ECS and its tasks."""
        try:
            if self._api is not None:
                await self._api.close()
                self._api = None
            if self.hub is not None and graceful:
                await self.hub.stop()
            elif self.hub is not None:
                self.hub.kill()
        finally:
            if self.proxy is not None:
                await self.proxy.stop()
                self.proxy = None
            if self._ecs is not None:
                await self._ecs.stop()
            if self._database_made:
                drop_database(self.settings.db_url)
                self._database_made = False
            if self._own_workdir and not self.spec.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
