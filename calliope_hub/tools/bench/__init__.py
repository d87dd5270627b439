"""`calliope-hub bench`: the whole stack at N servers, batched against the stock pattern and the floor.

For each (mode, servers, repeat) it starts a fresh LocalStack (local ECS in sim mode with
ECS's quotas on, a real JupyterHub) whose spawner is ECSSpawner (batched), its stock-pattern
subclass NaiveECSSpawner (naive) or FloorSpawner (floor: JupyterHub with a spawner that costs
nothing), then measures spawning, the steady state, detection of killed tasks, a kill -9
restart and shutdown. Every mode runs with the same hub, proxy, database, client, catalog and
poll interval; batched figures are also given as ratios to the floor of the same N.
With `--pool SERVICE/SIZE=N` it measures a class start instead, with those warm pools and without
(modes pool and no-pool, in local ECS's process mode: bench/pool.py).
Ctrl-C stops the stack and still prints and writes what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from calliope_hub.catalog import CatalogError, load_catalog
from calliope_hub.localecs.config import SIM_TIMINGS
from calliope_hub.tools.bench import phases, pool, report
from calliope_hub.tools.bench.profile import HubProfiler, py_spy
from calliope_hub.tools.bench.stack import BenchStack, StackOptions
from calliope_hub.tools.interrupt import exit_status, run_interruptible
from calliope_hub.tools.machine import machine
from calliope_hub.tools.up import pool_config

MODES = ("batched", "floor", "naive")
DATABASES = ("sqlite", "postgres")


@dataclass(frozen=True)
class BenchConfig:
    servers: tuple[int, ...]
    modes: tuple[str, ...]
    window: float = 120.0
    poll_interval: float = 30.0
    repeats: int = 1
    detect: int = 10
    activity_interval: float = 300.0
    idle_window: float = 60.0
    concurrency: int = 50
    sim_timing: str = "fast"
    sim_provisioning: float | None = None
    sim_pending: float | None = None
    concurrent_spawn_limit: int = 100
    db: str = "sqlite"
    external_proxy: bool = False
    keep_logs: bool = False
    #: what every user spawns, "service/size" from the built-in catalog. Lab has a per-user EFS
    #: home (an access point and a task-definition revision per new user); chat has no storage.
    service: str = "lab/small"
    #: the account has Parameter Store's higher throughput: tokens written at 8/s, not 2.4/s
    ssm_higher_throughput: bool = False
    #: local ECS posts task state changes to the hub (EventBridge's path), as well as polls
    events: bool = False
    #: write py-spy profiles of the hub's spawn, idle, steady and restart windows here
    profile: Path | None = None
    #: SERVICE/SIZE -> warm tasks: a class start with these pools and without (modes pool, no-pool)
    pools: dict[str, int] = field(default_factory=dict)
    #: with pools: the --servers users arrive evenly within this many seconds
    arrival_window: float = 60.0

    def __post_init__(self) -> None:
        checks = {
            "--servers needs positive counts": bool(self.servers) and min(self.servers) >= 1,
            "--servers is at most 20000 (one socket per task in local ECS)": max(self.servers, default=0) <= 20_000,
            f"--mode must be among {', '.join(self.allowed_modes)}{' with --pool' if self.pools else ''}": (
                bool(self.modes) and set(self.modes) <= set(self.allowed_modes)
            ),
            "--window must be positive": self.window > 0,
            "--poll-interval must be positive": self.poll_interval > 0,
            "--repeats must be at least 1": self.repeats >= 1,
            "--detect must be between 1 and the smallest --servers": 1 <= self.detect <= min(self.servers, default=0),
            "--activity-interval must be positive": self.activity_interval > 0,
            "--idle-window must be 0 or more": self.idle_window >= 0,
            "--concurrency must be at least 1": self.concurrency >= 1,
            f"--sim-timing must be among {', '.join(sorted(SIM_TIMINGS))}": self.sim_timing in SIM_TIMINGS,
            "--concurrent-spawn-limit must be 0 (no limit) or more": self.concurrent_spawn_limit >= 0,
            f"--db must be among {', '.join(DATABASES)}": self.db in DATABASES,
        }
        problems = [message for message, ok in checks.items() if not ok] + self._pool_problems()
        if self.profile is not None:
            try:
                py_spy()
            except RuntimeError as error:
                problems.append(str(error))
            if self.profile.exists() and not self.profile.is_dir():
                problems.append(f"--profile {self.profile}: not a directory")
        try:
            self.choice()
        except CatalogError as error:
            problems.append(f"--service {self.service!r}: {error}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def allowed_modes(self) -> tuple[str, ...]:
        return pool.MODES if self.pools else MODES

    def _pool_problems(self) -> list[str]:
        """What a class-start bench (--pool) cannot run with."""
        if not self.pools:
            return []
        checks = {
            f"--servers with --pool is at most {pool.MAX_SERVERS} (each server is a process on this machine)": (
                max(self.servers, default=0) <= pool.MAX_SERVERS
            ),
            f"--service {self.service} must be one of the pools ({', '.join(self.pools)})": self._pooled(),
            "--arrival-window must be positive": self.arrival_window > 0,
            "--profile does not apply with --pool (only the spawn is measured)": self.profile is None,
        }
        return [message for message, ok in checks.items() if not ok]

    def _pooled(self) -> bool:
        try:
            return "/".join(self.choice()[:2]) in self.pools
        except CatalogError:
            return False  # said once, below

    def choice(self) -> tuple[str, str, bool]:
        """(service, size, has per-user storage) of --service, checked against the built-in catalog."""
        service, _, size = self.service.partition("/")
        chosen = load_catalog().choose({"service": service, **({"size": size} if size else {})})
        return chosen.service.name, chosen.size_name, chosen.service.storage is not None


class Bench:
    """Runs every (mode, servers, repeat); `runs` holds what was measured so far."""

    def __init__(self, config: BenchConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.runs: list[dict[str, Any]] = []

    async def execute(self) -> None:
        for servers in self.config.servers:
            for repeat in range(self.config.repeats):
                for mode in self.config.modes:
                    await self._run(mode, servers, repeat)

    async def _run(self, mode: str, servers: int, repeat: int) -> None:
        record: dict[str, Any] = {
            "mode": mode,
            "servers": servers,
            "poll_interval_s": self.config.poll_interval,
            "service": self.config.service,
            "storage": self.config.choice()[2],
            "repeat": repeat,
            "error": None,
        }
        self.runs.append(record)
        config = self.config
        options = StackOptions(
            poll_interval=config.poll_interval,
            sim_timing=config.sim_timing,
            sim_provisioning=config.sim_provisioning,
            sim_pending=config.sim_pending,
            concurrent_spawn_limit=config.concurrent_spawn_limit,
            db=config.db,
            external_proxy=config.external_proxy,
            keep_logs=config.keep_logs,
            ssm_higher_throughput=config.ssm_higher_throughput,
            events=config.events,
        )
        if mode in pool.MODES:
            record["pools"] = config.pools
            options = pool.stack_options(options, mode, config.pools)
        stack = BenchStack(mode, options)
        record["database"] = stack.database
        began = time.monotonic()
        try:
            self._say(f"{mode} N={servers} #{repeat}: starting local ECS and the hub in {stack.workdir}")
            await stack.start()
            await self._phases(stack, record)
        except Exception as error:  # a run that falls over is reported, and the next one runs
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
            self._say(f"[red]{mode} N={servers}: {record['error']}")
        finally:
            record["duration_s"] = round(time.monotonic() - began, 1)
            await stack.close(graceful=False)

    async def _phases(self, stack: BenchStack, record: dict[str, Any]) -> None:
        config, servers = self.config, record["servers"]
        if stack.mode in pool.MODES:
            self._say(
                f"{servers} users within {config.arrival_window:g}s"
                + (", once the pools are idle" if stack.mode == pool.POOL else "")
            )
            await pool.class_start(stack, record, config.pools, config.arrival_window, *config.choice()[:2])
            return
        profiled = self._profiler(stack, record)
        self._say(f"spawning {servers} servers")
        service, size, _ = config.choice()
        async with profiled("spawn"):
            record["spawn"] = await phases.spawn_phase(stack, servers, config.concurrency, service, size)
        if config.events and stack.mode != "floor":
            record["spawn"]["events"] = await phases.events_received(stack)
        names = sorted(await phases.ready_names(stack, math.ceil(servers / phases.PAGE) + 2))
        if not names:
            raise RuntimeError("no server became ready; see the spawn figures")
        # Let the spawn's busy sweeps end, as a hub at rest would have.
        await asyncio.sleep(min(config.poll_interval, 60))
        idle = None
        if config.idle_window:
            async with profiled("idle"):
                idle = await phases.idle_cpu_pct(stack, config.idle_window)
        self._say(f"steady state for {config.window:g}s")
        async with profiled("steady"):
            steady = await phases.steady_phase(stack, names, config.window, config.activity_interval)
        steady["hub_cpu_idle_pct"] = idle
        describes = steady["ecs_calls_per_min"].get("DescribeTasks", 0.0)
        steady["describe_per_poll"] = round(describes * config.poll_interval / 60, 2)
        steady["describe_per_poll_bound"] = math.ceil(servers / 100)
        # With events the hub sweeps at the reconcile cadence, not every poll: count per sweep too.
        sweeps = steady["sweeps"]
        steady["describe_per_sweep"] = round(describes * steady["window_s"] / 60 / sweeps, 2) if sweeps else None
        record["steady"] = steady
        if stack.mode == "floor":
            record["detect_s"] = None  # no task to kill: the floor's servers never stop by themselves
            expected = set(names)
        else:
            self._say(f"killing {config.detect} tasks")
            timeout = 3 * config.poll_interval + 60
            record["detect_s"] = await phases.detect_phase(stack, names, config.detect, timeout)
            expected = set(names) - set(record["detect_s"]["users"])
        patience = 120 + servers * 0.05
        self._say("kill -9 of the hub only" if config.external_proxy else "kill -9 of the hub and its proxy")
        async with profiled("restart", follow=True):
            record["restart"] = await phases.restart_phase(stack, expected, patience)
        record["restart"]["hub_only"] = config.external_proxy
        self._say("shutdown, cleanup off then on")
        shutdown = await phases.shutdown_phase(stack, expected, patience)
        record["shutdown"] = shutdown
        record["shutdown_block_s"] = max(part["block_s"] for part in shutdown.values())

    def _profiler(self, stack: BenchStack, record: dict[str, Any]) -> Callable[..., AbstractAsyncContextManager[None]]:
        """`profiled(phase, follow=False)`: a py-spy profile of the hub around a phase when
        --profile is on (listed in the run's `profiles`), else nothing."""
        if self.config.profile is None:
            return lambda *_, **__: contextlib.nullcontext()
        self.config.profile.mkdir(parents=True, exist_ok=True)
        stem = f"{record['servers']}-{record['mode']}-{record['repeat']}"
        profiler = HubProfiler(self.config.profile, stem)
        record["profiles"] = profiler.written

        def hub_pid() -> int | None:
            return stack.hub.pid if stack.hub is not None else None

        return lambda name, follow=False: profiler.phase(name, hub_pid, follow=follow)

    def _say(self, message: str) -> None:
        self.console.log(message)


# --- the command -------------------------------------------------------------------


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--servers", type=_counts, default="1000,2000,5000,10000", help="comma-separated N")
    add("--mode", type=_words,
        help="comma-separated modes: batched, floor, naive (default: all three); "
        "with --pool: pool, no-pool (default: both)")  # fmt: skip
    add("--window", type=float, default=120.0, help="steady-state window in seconds")
    add("--poll-interval", type=float, default=30.0, help="status poll interval, both modes")
    add("--repeats", type=int, default=1, help="runs per (mode, servers), for min/median/max")
    add("--detect", type=int, default=10, help="tasks killed to time detection (K)")
    add("--activity-interval", type=float, default=300.0,
        help="seconds between one server's activity posts (JUPYTERHUB_ACTIVITY_INTERVAL)")  # fmt: skip
    add("--idle-window", type=float, default=60.0,
        help="seconds of hub CPU with no client load before the steady window (0 = skip)")  # fmt: skip
    add("--concurrency", type=int, default=50, help="spawn requests in flight")
    add("--sim-timing", default="fast", help=f"local ECS's sim lifecycle ({', '.join(sorted(SIM_TIMINGS))})")
    add("--sim-provisioning", type=float, help="seconds a sim task is PROVISIONING (default: from --sim-timing)")
    add("--sim-pending", type=float, help="seconds a sim task is PENDING (default: from --sim-timing)")
    add("--concurrent-spawn-limit", type=int, default=100, help="JupyterHub's concurrent_spawn_limit (0: none)")
    add("--db", default="sqlite",
        help="hub database: sqlite, or postgres (a database on 127.0.0.1:5432 per run, then dropped)")  # fmt: skip
    add("--external-proxy", action="store_true",
        help="run configurable-http-proxy beside the hub, not from it: restart then kills the hub only")  # fmt: skip
    add("--service", default="lab/small",
        help="what every user spawns, SERVICE/SIZE from the built-in catalog; lab has per-user EFS storage, "
        "chat and waiide have none")  # fmt: skip
    add("--ssm-higher-throughput", action="store_true",
        help="c.ECSSpawner.ssm_higher_throughput: every spawn writes its token to Parameter Store, "
        "whose PutParameter allows 3/s by default and 10/s with higher throughput")  # fmt: skip
    add("--events", action="store_true",
        help="local ECS posts every task state change to the hub's events endpoint, as EventBridge would")  # fmt: skip
    add("--json", type=Path, help="write the runs here")
    add("--plot", type=Path, help="write a PNG of every figure against N")
    add("--keep-logs", action="store_true", help="keep each run's hub and local ECS logs")
    add("--profile", type=Path, metavar="DIR",
        help="write py-spy profiles (speedscope) of the hub's spawn, idle, steady and restart windows")  # fmt: skip
    add("--pool", action="append", default=[], metavar="SERVICE/SIZE=N",
        help="a class start instead: --servers users spawning --service within --arrival-window seconds, with N "
        "warm servers of SERVICE/SIZE (mode pool) and without (no-pool), in local ECS's process mode; "
        "repeatable, checked as `up --pool` is (docs/pool.md)")  # fmt: skip
    add("--arrival-window", type=float, default=60.0,
        help="with --pool: seconds within which the --servers users arrive, evenly")  # fmt: skip


def _config(args: argparse.Namespace) -> BenchConfig:
    pools = {name: entry["max"] for name, entry in pool_config(args.pool, "process").items()}  # ValueError: exit 2
    return BenchConfig(
        servers=args.servers,
        modes=args.mode or (pool.MODES if pools else MODES),
        window=args.window,
        poll_interval=args.poll_interval,
        repeats=args.repeats,
        detect=args.detect,
        activity_interval=args.activity_interval,
        idle_window=args.idle_window,
        concurrency=args.concurrency,
        sim_timing=args.sim_timing,
        sim_provisioning=args.sim_provisioning,
        sim_pending=args.sim_pending,
        concurrent_spawn_limit=args.concurrent_spawn_limit,
        db=args.db,
        external_proxy=args.external_proxy,
        keep_logs=args.keep_logs,
        service=args.service,
        ssm_higher_throughput=args.ssm_higher_throughput,
        events=args.events,
        profile=args.profile,
        pools=pools,
        arrival_window=args.arrival_window,
    )


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        config = _config(args)
    except ValueError as error:
        console.print(f"[red]calliope-hub bench: {error}", soft_wrap=True)  # paths stay whole
        return 2
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(config).items()}
    document: dict[str, Any] = {"machine": machine(), "config": settings, "runs": []}
    bench = Bench(config, console)
    stopped_by = 0  # the exit status a signal asks for (tools/interrupt.py): 130 Ctrl-C, 143 SIGTERM
    try:
        run_interruptible(bench.execute())
    except KeyboardInterrupt as stop:
        stopped_by = exit_status(stop)
    interrupted = bool(stopped_by)
    document["runs"] = bench.runs
    document["interrupted"] = interrupted
    Console().print(report.render_table(bench.runs, interrupted))
    if args.json:
        report.save_json(args.json, document)
    if args.plot:
        report.save_plot(args.plot, bench.runs)
    if interrupted:
        return stopped_by
    return 1 if any(run["error"] for run in bench.runs) else 0
