"""The whole stack one bench run measures: local ECS in sim mode and a real JupyterHub.

Each (mode, servers) run gets a fresh stack, so no run inherits another's tasks, database
or warmed caches. Local ECS runs with ECS's own quotas (`--throttle aws`), so the stock
pattern meets the same ThrottlingException it would meet on AWS.
"""

from __future__ import annotations

import random
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from calliope_hub.catalog import Catalog
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.bootstrap import prepare_cluster
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config, free_port
from calliope_hub.tools.local.localecs_proc import LocalEcsProcess

CLUSTER = "calliope"
SERVICE = "bench"
LAG_FILE = "loop-lag.log"
#: A loop tick later than this is written to the lag file (the log stays tiny).
LAG_THRESHOLD_S = 0.1

#: Measures the hub's event loop from inside: a task sleeping 50 ms that logs each overshoot
#: above LAG_THRESHOLD_S as "<wall time at resume> <seconds late>". The last line is written
#: when JupyterHub cancels its tasks at exit, so a block that lasts until then is seen too.
LOOP_LAG_MONITOR = '''
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

_calliope_loop_lag({path!r})
'''


@dataclass(frozen=True)
class StackOptions:
    """What every run of one bench invocation shares."""

    poll_interval: float
    sim_provisioning: float = 1.0
    sim_pending: float = 1.0
    concurrent_spawn_limit: int = 100
    #: keep each run's working dir (hub and local ECS logs) for a post-mortem
    keep_logs: bool = False


def task_cidr() -> str:
    """A /16 of task addresses of our own: another local ECS on this machine (a test, `make up`)
    uses the default 127.20.0.0/16, and two sim tasks on one address:port cannot both bind."""
    return f"127.{random.randrange(64, 250)}.0.0/16"


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


class BenchStack:
    """Local ECS plus one hub in `mode`; `hub` may be replaced to change cleanup_servers."""

    def __init__(self, mode: str, options: StackOptions, root: Path | None = None) -> None:
        self.mode = mode
        self.options = options
        self.token = secrets.token_hex(16)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-", dir=root))
        self.lag_path = self.workdir / LAG_FILE
        self.ecs = LocalEcsProcess(
            [
                "--mode", "sim", "--throttle", "aws",
                "--sim-provisioning", str(options.sim_provisioning),
                "--sim-pending", str(options.sim_pending),
                "--cidr", task_cidr(),
            ],
            log_path=self.workdir / "local-ecs.log",
        )  # fmt: skip
        self.port = free_port()
        self.hub: HubProcess | None = None

    def hub_config(self, cleanup_servers: bool) -> str:
        settings = HubSettings(
            ecs_endpoint=self.ecs.endpoint_url,
            cluster=CLUSTER,
            hub_id=f"bench-{self.mode}",
            status_mode=self.mode,
            poll_interval=self.options.poll_interval,
            cleanup_servers=cleanup_servers,
            extra=[
                # Fast 429 retries and every spawn timed through its progress stream.
                "c.JupyterHub.tornado_settings = "
                "{'spawn_throttle_retry_range': (1, 2), 'slow_spawn_timeout': 0}",
                f"c.JupyterHub.concurrent_spawn_limit = {self.options.concurrent_spawn_limit}",
                api_token_config(self.token, SERVICE),
                LOOP_LAG_MONITOR.format(threshold=LAG_THRESHOLD_S, path=str(self.lag_path)),
            ],
        )
        return render(settings)

    async def start(self) -> None:
        await self.ecs.start()
        api = await EcsApi.shared(EcsTarget("us-east-1", self.ecs.endpoint_url))
        try:
            await prepare_cluster(api, Catalog.load(), CLUSTER, local=True)
        finally:
            await EcsApi.close_all()
        await self.start_hub(cleanup_servers=False)

    async def start_hub(self, *, cleanup_servers: bool, timeout: float = 120) -> float:
        """(Re)start the hub on the same port and database; seconds until its API answered."""
        self.hub = HubProcess(self.hub_config(cleanup_servers), port=self.port, workdir=self.workdir)
        began = time.monotonic()
        await self.hub.start(timeout=timeout)
        return time.monotonic() - began

    async def close(self) -> None:
        """Nothing outlives the bench: the hub's group and proxy, then local ECS's tasks."""
        try:
            if self.hub is not None:
                self.hub.kill()
        finally:
            await self.ecs.stop()
            if not self.options.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
