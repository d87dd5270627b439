"""The whole stack one bench run measures: local ECS (in sim mode, but for a pool bench) and a real JupyterHub.

Each (mode, servers) run gets a fresh stack, so no run inherits another's tasks, database
or warmed caches. Local ECS runs with ECS's own quotas (`--throttle aws`), so the stock
pattern meets the same ThrottlingException it would meet on AWS.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from calliope_hub.localecs.config import HIGHER_THROUGHPUT_THROTTLE
from calliope_hub.tools.local.hubconfig import HubSettings
from calliope_hub.tools.local.procs import LOOPBACK, OwnedProcess, child_env, free_port
from calliope_hub.tools.local.stack import LocalEcsSpec, LocalStack, StackSpec

CLUSTER = "calliope"
#: The stock pattern the bench measures against: a subclass kept out of the product.
NAIVE_SPAWNER = "calliope_hub.tools.baseline.NaiveECSSpawner"
#: JupyterHub's own floor: the same hub with a spawner that costs nothing.
FLOOR_SPAWNER = "calliope_hub.tools.baseline.FloorSpawner"
#: --db postgres: each run's own database on the developer machine's PostgreSQL (trust auth)
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
SERVICE = "bench"
LAG_FILE = "loop-lag.log"
#: A loop tick later than this is written to the lag file (the log stays tiny).
LAG_THRESHOLD_S = 0.1

#: Measures the hub's event loop from inside: a task sleeping 50 ms that logs each overshoot
#: above LAG_THRESHOLD_S as "<wall time at resume> <seconds late>". The last line is written
#: when JupyterHub cancels its tasks at exit, so a block that lasts until then is seen too.
LOOP_LAG_MONITOR = """
import asyncio as _lag_asyncio, time as _lag_time

def _calliope_loop_lag(path, period=0.05, threshold={threshold}):
    async def monitor():
        loop = _lag_asyncio.get_running_loop()
        last = loop.time()
        def note(lag):
            with open(path, "a") as out:
                out.write(f"{{_lag_time.time():.3f}} {{lag:.4f}}\\n")
        try:
            while True:
                await _lag_asyncio.sleep(period)
                now = loop.time()
                lag, last = now - last - period, now
                if lag > threshold:
                    note(lag)
        except _lag_asyncio.CancelledError:
            note(max(0.0, loop.time() - last - period))
            raise
    try:
        loop = _lag_asyncio.get_running_loop()
    except RuntimeError:
        return  # a jupyterhub subcommand without a loop: nothing to measure
    _calliope_loop_lag.task = loop.create_task(monitor())

_calliope_loop_lag({path!r})  # relative: the hub's working dir
"""


@dataclass(frozen=True)
class StackOptions:
    """What every run of one bench invocation shares."""

    poll_interval: float
    sim_timing: str = "fast"
    sim_provisioning: float | None = None
    sim_pending: float | None = None
    concurrent_spawn_limit: int = 100
    #: 'sqlite' (a file in the hub's dir) or 'postgres' (a database made for the run, dropped after)
    db: str = "sqlite"
    #: configurable-http-proxy run by the stack, so a kill -9 restart is the hub's alone
    external_proxy: bool = False
    #: keep each run's working dir (hub and local ECS logs) for a post-mortem
    keep_logs: bool = False
    #: c.ECSSpawner.ssm_higher_throughput (the floor writes no token)
    ssm_higher_throughput: bool = False
    #: local ECS posts every task state change to the hub's events endpoint, as EventBridge would
    events: bool = False
    #: local ECS's task mode: 'sim' (stub servers), or 'process' (a real process per task: a pool's launchers)
    ecs_mode: str = "sim"
    #: more hub config lines, after the bench's own (a pool bench's c.CalliopePool.pools)
    hub_extra: tuple[str, ...] = ()


def loop_lag_entries(path: Path, since_wall: float) -> list[float]:
    """Loop blocks (seconds) that ended after `since_wall` (time.time())."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    blocks = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and float(parts[0]) >= since_wall:
            blocks.append(float(parts[1]))
    return blocks


class StubServer(OwnedProcess):
    """What every floor server's route points at: one HTTP server answering any path (404 is an answer)."""

    what = "floor stub server"

    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "stub"
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(port=free_port(), log_path=workdir / "stub.log", cwd=self.root, env=child_env([]))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", LOOPBACK, "--directory", str(self.root), str(self.port)]

    async def answers(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(self.url) as answer:
            return answer.status == 200


def _spawner_lines(mode: str, stub: StubServer | None, options: StackOptions) -> tuple[str, list[str]]:
    """The spawner class of `mode` and the config lines it needs."""
    if mode == "floor":
        assert stub is not None
        return FLOOR_SPAWNER, [f"c.FloorSpawner.stub_url = {stub.url!r}"]
    return (NAIVE_SPAWNER if mode == "naive" else "ecs"), [
        f"c.ECSSpawner.ssm_higher_throughput = {options.ssm_higher_throughput!r}"
    ]


class BenchStack(LocalStack):
    """A LocalStack as the bench runs it: sim tasks under ECS's quotas, one hub in `mode`,
    its event loop watched from inside. Floor mode runs the same stack (local ECS idles)
    with FloorSpawner and its stub server."""

    def __init__(self, mode: str, options: StackOptions) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="calliope-bench-")).resolve()
        self.stub = StubServer(workdir) if mode == "floor" else None
        spawner_class, spawner_lines = _spawner_lines(mode, self.stub, options)
        postgres = options.db == "postgres"
        #: the PostgreSQL database this run makes and drops (None: SQLite in the hub's dir)
        self.database = f"calliope_bench_{secrets.token_hex(4)}" if postgres else None
        hub = HubSettings(
            cluster=CLUSTER,
            hub_id=f"bench-{mode}",
            spawner_class=spawner_class,
            poll_interval=options.poll_interval,
            cleanup_servers=False,  # a kill -9 restart must find every task still running
            db_url=POSTGRES_URL.format(name=self.database) if self.database else "",
            extra=[
                *spawner_lines,
                # Fast 429 retries and every spawn timed through its progress stream.
                "c.JupyterHub.tornado_settings = {'spawn_throttle_retry_range': (1, 2), 'slow_spawn_timeout': 0}",
                f"c.JupyterHub.concurrent_spawn_limit = {options.concurrent_spawn_limit}",
                LOOP_LAG_MONITOR.format(threshold=LAG_THRESHOLD_S, path=LAG_FILE),
                *options.hub_extra,
            ],
        )
        ecs = LocalEcsSpec(
            mode=options.ecs_mode,
            # AWS's quotas; with higher throughput on, the account's PutParameter quota is that one too
            throttle=HIGHER_THROUGHPUT_THROTTLE if options.ssm_higher_throughput else "aws",
            sim_timing=options.sim_timing,
            sim_provisioning=options.sim_provisioning,
            sim_pending=options.sim_pending,
        )  # task addresses: local ECS's own random /16, so a `make up` beside the bench never collides
        spec = StackSpec(
            hub=hub,
            ecs=ecs,
            workdir=workdir,
            keep_workdir=options.keep_logs,
            api_service=SERVICE,
            external_proxy=options.external_proxy,
            own_database=postgres,
            events=options.events,
        )
        super().__init__(spec)
        self.mode = mode
        self._keep_logs = options.keep_logs

    async def start(self) -> None:
        if self.stub is not None:
            await self.stub.start()
        await super().start()

    async def close(self, *, graceful: bool = True) -> None:
        try:
            await super().close(graceful=graceful)
        finally:
            if self.stub is not None:
                await self.stub.stop()
            if not self._keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def lag_path(self) -> Path:
        return self.hub_workdir / LAG_FILE
