"""The whole stack one bench run measures: local ECS in sim mode and a real JupyterHub.

Each (mode, servers) run gets a fresh stack, so no run inherits another's tasks, database
or warmed caches. Local ECS runs with ECS's own quotas (`--throttle aws`), so the stock
pattern meets the same ThrottlingException it would meet on AWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calliope_hub.tools.local.hubconfig import HubSettings
from calliope_hub.tools.local.stack import LocalEcsSpec, LocalStack, StackSpec

CLUSTER = "calliope"
#: The stock pattern the bench measures against: a subclass kept out of the product.
NAIVE_SPAWNER = "calliope_hub.tools.baseline.NaiveECSSpawner"
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
    sim_provisioning: float = 1.0
    sim_pending: float = 1.0
    concurrent_spawn_limit: int = 100
    #: keep each run's working dir (hub and local ECS logs) for a post-mortem
    keep_logs: bool = False


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


class BenchStack(LocalStack):
    """A LocalStack as the bench runs it: sim tasks under ECS's quotas, one hub in `mode`,
    its event loop watched from inside."""

    def __init__(self, mode: str, options: StackOptions) -> None:
        hub = HubSettings(
            cluster=CLUSTER,
            hub_id=f"bench-{mode}",
            spawner_class=NAIVE_SPAWNER if mode == "naive" else "ecs",
            poll_interval=options.poll_interval,
            cleanup_servers=False,  # a kill -9 restart must find every task still running
            extra=[
                # Fast 429 retries and every spawn timed through its progress stream.
                "c.JupyterHub.tornado_settings = {'spawn_throttle_retry_range': (1, 2), 'slow_spawn_timeout': 0}",
                f"c.JupyterHub.concurrent_spawn_limit = {options.concurrent_spawn_limit}",
                LOOP_LAG_MONITOR.format(threshold=LAG_THRESHOLD_S, path=LAG_FILE),
            ],
        )
        ecs = LocalEcsSpec(
            mode="sim",
            throttle="aws",
            sim_provisioning=options.sim_provisioning,
            sim_pending=options.sim_pending,
        )  # task addresses: local ECS's own random /16, so a `make up` beside the bench never collides
        super().__init__(StackSpec(hub=hub, ecs=ecs, keep_workdir=options.keep_logs, api_service=SERVICE))
        self.mode = mode

    @property
    def lag_path(self) -> Path:
        return self.hub_workdir / LAG_FILE
