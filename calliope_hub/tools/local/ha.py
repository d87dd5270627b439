"""The HA stack on this machine: local ECS, two configurable-http-proxy replicas, two hubs, HAProxy.

What `calliope-hub up --ha` runs and what the HA tests drive, assembled once:

    browser ──► HAProxy :public ──/hub/*──► the leader hub (health: GET /leader on each hub)
                        └──── else ─────► CHP a | CHP b  (both: every route, from CHPReplicas)
                                             └─ '/' ─► the leader hub (its check_routes points it there)

Both hubs load one shared config file (the pair's config fingerprint must match) through a
tiny per-instance file that adds only the instance's own address, name and health port. The
servers reach the hub through the balancer (`c.Spawner.hub_connect_url`), so they keep
reaching whichever hub leads. The cookie secret is one file both hubs read, so a failover
does not log anyone out. The database is PostgreSQL, a database of the stack's own that is
created when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.engine import make_url

from ...catalog import Catalog
from ...ecs.api import EcsApi, EcsTarget
from ...ecs.taskdefs import prepare_cluster
from ..hubapi import HubApi
from .hubconfig import HubSettings, render
from .hubproc import api_token_config, private_dir, proxy_command, write_private
from .localecs_proc import LocalEcsProcess, event_args, event_env
from .procs import LOOPBACK, OwnedProcess, StartError, child_env, free_port

DEFAULT_DB_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/calliope_ha"
REGION = "us-east-1"
INSTANCES = ("hub-a", "hub-b")


class HAProxyNotInstalled(RuntimeError):
    """Debian's haproxy is not on PATH."""


def ensure_database(db_url: str) -> bool:
    """Create the database `db_url` names when it does not exist; True if it was created."""
    url = make_url(db_url)
    with contextlib.closing(_maintenance_connection(db_url)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if cursor.fetchone():
            return False
        cursor.execute(f'CREATE DATABASE "{_identifier(url.database)}"')
    return True


def drop_database(db_url: str) -> None:
    """Drop the database `db_url` names, ending its sessions (a test's own database)."""
    url = make_url(db_url)
    with contextlib.closing(_maintenance_connection(db_url)) as conn, conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{_identifier(url.database)}" WITH (FORCE)')


def _identifier(name: str | None) -> str:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r}: use letters, digits and '_'")
    return name


def _maintenance_connection(db_url: str) -> Any:
    """A connection to the server's `postgres` database, for CREATE/DROP DATABASE."""
    import psycopg2

    url = make_url(db_url).set(database="postgres")
    args = {k: v for k, v in url.translate_connect_args(username="user", database="dbname").items() if v}
    conn = psycopg2.connect(connect_timeout=5, **args)
    conn.autocommit = True
    return conn


class ChpReplica(OwnedProcess):
    """One configurable-http-proxy replica: public port `public`, API on `port`."""

    what = "configurable-http-proxy"

    def __init__(self, *, public: int, api: int, token: str, error_target: str, log_path: Path, cwd: Path):
        proxy = proxy_command()
        env = child_env([Path(proxy[0]).parent], {"CONFIGPROXY_AUTH_TOKEN": token})
        super().__init__(port=api, log_path=log_path, cwd=cwd, env=env)
        self.public = public
        self._proxy = proxy
        self._token = token
        self._error_target = error_target

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [
            *self._proxy, "--ip", LOOPBACK, "--port", str(self.public),
            "--api-ip", LOOPBACK, "--api-port", str(self.port), "--error-target", self._error_target,
        ]  # fmt: skip

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        headers = {"Authorization": f"token {self._token}"}
        async with session.get(f"{self.api_url}/api/routes", headers=headers) as answer:
            return answer.status == 200

    async def routes(self) -> dict:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.api_url}/api/routes", headers={"Authorization": f"token {self._token}"}) as answer,
        ):
            answer.raise_for_status()
            return dict(await answer.json())


class HaHub(OwnedProcess):
    """One `python -m calliope_hub.hub.ha` process; it answers (200 or 503) on its health port once up."""

    what = "HA hub"
    start_timeout = 90.0

    def __init__(self, *, name: str, config_path: Path, health: int, hub_port: int, workdir: Path, env: dict):
        super().__init__(port=health, log_path=workdir / "jupyterhub.log", cwd=workdir, env=child_env([], env))
        self.name = name
        self.config_path = config_path
        self.hub_port = hub_port

    def command(self) -> list[str]:
        return [sys.executable, "-m", "calliope_hub.hub.ha", "-f", str(self.config_path)]

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"http://{LOOPBACK}:{self.port}/leader") as answer:
            return answer.status in (200, 503)

    async def is_leader(self, session: aiohttp.ClientSession) -> bool:
        """GET /leader said 200 (False when it says 503 or does not answer)."""
        try:
            async with session.get(f"http://{LOOPBACK}:{self.port}/leader") as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def exit_code(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def kill_process(self) -> None:
        """SIGKILL the hub alone, as `kill -9 <pid>` does: its fence keeper sees it exit and says so."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()


class PlainHub(OwnedProcess):
    """Our app without HA (`python -m calliope_hub.hub.app`) on an HA hub's config: a plain restart to compare."""

    what = "plain hub"
    start_timeout = 600.0

    def __init__(self, *, config_path: Path, hub_port: int, workdir: Path, env: dict):
        super().__init__(port=hub_port, log_path=workdir / "plain-hub.log", cwd=workdir, env=child_env([], env))
        self.config_path = config_path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "calliope_hub.hub.app", "-f", str(self.config_path)]

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{self.url}/hub/api/") as answer:
            return answer.status == 200


class HAProxy(OwnedProcess):
    """Debian's HAProxy in the foreground (-db), with the stack's generated config."""

    what = "HAProxy"

    def __init__(self, *, public: int, config_path: Path, log_path: Path, cwd: Path):
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            raise HAProxyNotInstalled("haproxy is not installed: run `make haproxy` (Debian's package)")
        super().__init__(port=public, log_path=log_path, cwd=cwd, env=child_env([]))
        self._command = [binary, "-db", "-f", str(config_path)]

    def command(self) -> list[str]:
        return self._command

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"http://{LOOPBACK}:{self.port}/_haproxy/alive") as answer:
            return answer.status == 200


def haproxy_config(public: int, hubs: list[HaHub], proxies: list[ChpReplica], check_ms: int = 500) -> str:
    """/hub/* to the hub whose /leader says 200; everything else to any live proxy replica.

    A hub is taken out after 3 failed checks, not 1: a leader busy with a burst of spawns may
    answer a check late, and a single late answer must not empty the backend (the fence, not
    the balancer, is what guarantees one leader).
    """
    hub_lines = [
        f"    server {hub.name} {LOOPBACK}:{hub.hub_port} check port {hub.port} inter {check_ms} fall 3 rise 1"
        for hub in hubs
    ]
    proxy_lines = [
        f"    server chp-{i} {LOOPBACK}:{proxy.public} check inter {check_ms} fall 1 rise 2"
        for i, proxy in enumerate(proxies)
    ]
    return "\n".join(
        [
            "global", "    maxconn 8000", "",
            "defaults", "    mode http", "    timeout connect 2s", "    timeout client 120s",
            "    timeout server 120s", "    timeout tunnel 1h", "    timeout check 2s",
            "    retries 2", "    option redispatch", "",
            "frontend calliope", f"    bind {LOOPBACK}:{public}", "    monitor-uri /_haproxy/alive",
            "    acl hub path_beg /hub/", "    use_backend hubs if hub", "    default_backend proxies", "",
            "backend hubs", "    option httpchk GET /leader", "    http-check expect status 200", *hub_lines, "",
            "backend proxies", *proxy_lines, "",
        ]
    )  # fmt: skip


@dataclass
class HaSpec:
    """What differs between one HA stack and the next."""

    db_url: str = DEFAULT_DB_URL
    #: local ECS flags (sim: stub servers that only answer HTTP)
    ecs_args: list[str] = field(default_factory=lambda: ["--mode", "sim", "--throttle", "off"])
    public_port: int | None = None
    ecs_port: int | None = None
    workdir: Path | None = None
    hub_id: str = "local-ha"
    fence_timeout: float = 3.0
    fence_check_interval: float = 0.5
    proxy_check_interval: float = 2.0
    #: extra hub config lines (both hubs)
    extra: list[str] = field(default_factory=list)
    user_password: str = ""
    #: local ECS posts every task state change to the hubs' events endpoint, through the balancer
    events: bool = False


class HaStack:
    """Local ECS, 2 CHP replicas, 2 HA hubs and HAProxy, started in order; `close()` leaves nothing."""

    def __init__(self, spec: HaSpec):
        self.spec = spec
        self._own_workdir = spec.workdir is None
        self.workdir = (spec.workdir or Path(tempfile.mkdtemp(prefix="calliope-ha-"))).resolve()
        self.public = spec.public_port or free_port()
        self.ecs_url = f"http://{LOOPBACK}:{spec.ecs_port or free_port()}"
        self.token = secrets.token_hex(16)
        self.proxy_token = secrets.token_hex(16)
        self.events_secret = secrets.token_urlsafe(24) if spec.events else ""
        self.ecs: LocalEcsProcess | None = None
        self.proxies: list[ChpReplica] = []
        self.hubs: list[HaHub] = []
        self.haproxy: HAProxy | None = None
        self.api: HubApi | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.public}"

    async def start(self) -> None:
        try:
            private_dir(self.workdir)
            ensure_database(self.spec.db_url)
            await self._start_ecs()
            for i in range(2):
                await self._start_proxy(i)
            shared = self._write_shared_config()
            for name in INSTANCES:
                await self._start_hub(name, shared)
            await self._start_haproxy()
            self.api = HubApi(self.url, self.token, max_retries=3)
        except BaseException:
            await self.close()
            raise

    async def _start_ecs(self) -> None:
        port = int(self.ecs_url.rsplit(":", 1)[1])
        tasks = private_dir(self.workdir / "tasks")
        events = self.events_secret
        self.ecs = LocalEcsProcess(
            self.spec.ecs_args + (event_args(self.url) if events else []),
            port=port,
            log_path=self.workdir / "local-ecs.log",
            cwd=tasks,
            env=event_env(events) if events else None,
        )
        await self.ecs.start()
        api = await EcsApi.create(EcsTarget(REGION, self.ecs_url))
        try:
            await prepare_cluster(api, Catalog.load(), "calliope", local=True)
        finally:
            await api.close()

    async def _start_proxy(self, i: int) -> None:
        proxy = ChpReplica(
            public=free_port(),
            api=free_port(),
            token=self.proxy_token,
            error_target=f"{self.url}/hub/error",
            log_path=self.workdir / f"chp-{i}.log",
            cwd=self.workdir,
        )
        await proxy.start()
        self.proxies.append(proxy)

    def _write_shared_config(self) -> Path:
        cookie = self.workdir / "cookie_secret"
        if not cookie.exists():
            write_private(cookie, secrets.token_hex(32) + "\n")
        s = self.spec
        settings = HubSettings(
            ecs_endpoint=self.ecs_url,
            hub_id=s.hub_id,
            db_url=s.db_url,
            cleanup_servers=False,
            user_password=s.user_password,
            events_secret=self.events_secret,
            extra=[
                "c.JupyterHub.proxy_class = 'calliope-chp-replicas'",
                f"c.CHPReplicas.api_urls = {[p.api_url for p in self.proxies]!r}",
                f"c.CHPReplicas.check_interval = {s.proxy_check_interval!r}",
                "c.CHPReplicas.replica_timeout = 2.0",
                f"c.JupyterHub.bind_url = {self.url!r}",
                f"c.Spawner.hub_connect_url = {self.url!r}",
                f"c.JupyterHub.cookie_secret_file = {str(cookie)!r}",
                f"c.CalliopeHA.fence_timeout = {s.fence_timeout!r}",
                f"c.CalliopeHA.fence_check_interval = {s.fence_check_interval!r}",
                "c.CalliopeHA.standby_poll_interval = 0.2",
                *s.extra,
            ],
        )
        path = self.workdir / "jupyterhub_config.py"
        write_private(path, render(settings) + api_token_config(self.token, "calliope-admin"))
        return path

    def instance_config(self, name: str, shared: Path, *, hub_port: int, health: int) -> str:
        return (
            f"load_subconfig({str(shared)!r})\n"
            f"c.JupyterHub.hub_bind_url = 'http://{LOOPBACK}:{hub_port}'\n"
            f"c.CalliopeHA.instance = {name!r}\n"
            f"c.CalliopeHA.health_ip = {LOOPBACK!r}\n"
            f"c.CalliopeHA.health_port = {health}\n"
        )

    async def _start_hub(self, name: str, shared: Path) -> None:
        workdir = private_dir(self.workdir / name)
        hub_port, health = free_port(), free_port()
        config = workdir / "instance_config.py"
        write_private(config, self.instance_config(name, shared, hub_port=hub_port, health=health))
        env = {"CONFIGPROXY_AUTH_TOKEN": self.proxy_token}
        hub = HaHub(name=name, config_path=config, health=health, hub_port=hub_port, workdir=workdir, env=env)
        await hub.start()
        self.hubs.append(hub)

    def plain_hub(self, hub: HaHub) -> PlainHub:
        """A plain (not HA) hub on `hub`'s config and address, to start once every HA hub is down."""
        return PlainHub(
            config_path=hub.config_path,
            hub_port=hub.hub_port,
            workdir=self.workdir,
            env={"CONFIGPROXY_AUTH_TOKEN": self.proxy_token},
        )

    async def _start_haproxy(self) -> None:
        config = self.workdir / "haproxy.cfg"
        write_private(config, haproxy_config(self.public, self.hubs, self.proxies))
        self.haproxy = HAProxy(
            public=self.public, config_path=config, log_path=self.workdir / "haproxy.log", cwd=self.workdir
        )
        await self.haproxy.start()

    async def leaders(self) -> list[HaHub]:
        """The hubs whose /leader says 200 now."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            answers = await asyncio.gather(*(hub.is_leader(session) for hub in self.hubs))
        return [hub for hub, leads in zip(self.hubs, answers, strict=True) if leads]

    async def wait_for_leader(self, timeout: float = 90.0, *, not_: HaHub | None = None) -> HaHub:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [hub for hub in await self.leaders() if hub is not not_]
            if leaders:
                return leaders[0]
            await asyncio.sleep(0.1)
        tails = "\n".join(f"--- {hub.name}:\n{hub.log_tail(20)}" for hub in self.hubs)
        raise StartError(f"no hub became the leader within {timeout:g}s\n{tails}")

    async def close(self) -> None:
        """Everything down, in reverse; tasks stop with local ECS."""
        if self.api is not None:
            await self.api.close()
            self.api = None
        for process in [self.haproxy, *self.hubs, *self.proxies]:
            if process is not None:
                await process.stop(5)
        if self.ecs is not None:
            await self.ecs.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
