"""`calliope-hub bench --pool SERVICE/SIZE=N`: a class start with a warm pool and without one, in one run.

Issue 15's figure: N users arriving evenly within `--arrival-window` seconds (a class clicking Start),
each timed by loadtest from its spawn request to ready, once with the pools given and once with none,
on fresh stacks of the same invocation. A warm task is claimed through the launcher it runs, and local
ECS's sim tasks run none (local ECS does not imitate the claim protocol: a claim there would prove
nothing), so both runs use process mode: real launchers, each exec'ing the catalog's own server
command after its claim, and real servers for the cold starts. For Chat and WAIIDE that command is
the stand-in (`python -m calliope_hub.standins`, aiohttp, ~38 MB), the lightest server the catalog runs
locally; Lab's is a real JupyterLab. Everything else is the bench's stack: ECS's quotas, the same hub
settings, `--sim-timing` for the length of a cold start (process tasks dwell in PROVISIONING and PENDING
as sim tasks do).

The pool run first waits for its hub to count every pool's tasks idle (the fill is timed, not part of
the figure). Then both runs are measured the same way: time to ready from loadtest; warm claims and
cold fallbacks from the hub's /hub/metrics; the machine's load averages when the arrivals start and
when the last server is ready, and its peak memory in use, since every server is a process on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from calliope_hub.tools.bench import phases
from calliope_hub.tools.bench.stack import BenchStack, StackOptions

#: the run with the pools, and the run without
POOL, NO_POOL = "pool", "no-pool"
MODES = (POOL, NO_POOL)
#: each server is a real process here: a pool bench is for a class, not for the bench's 10,000
MAX_SERVERS = 1000
#: seconds a pool may take to be idle: RunTask at the keeper's 2/s, then a cold start each
FILL_TIMEOUT_S = 900.0
SAMPLE_S = 1.0


def stack_options(options: StackOptions, mode: str, pools: Mapping[str, int]) -> StackOptions:
    """The bench's stack in process mode, with the pools (each N idle, N at most) in the pool run only."""
    config = {name: {"min_idle": n, "max": n} for name, n in pools.items()}
    lines = (f"c.CalliopePool.pools = {config!r}",) if mode == POOL else ()
    return dataclasses.replace(options, ecs_mode="process", hub_extra=lines)


async def class_start(
    stack: BenchStack, record: dict[str, Any], pools: Mapping[str, int], window: float, service: str, size: str
) -> None:
    """Fill (pool run only), then `record["servers"]` users within `window` seconds, measured."""
    servers = record["servers"]
    if stack.mode == POOL:
        record["fill_s"] = await _filled(stack, pools)
    before = await pool_counts(stack)
    record["load_average"] = {"start": _load()}
    async with _machine_peaks() as peaks:
        record["spawn"] = await phases.spawn_phase(stack, servers, servers, service, size, rate=servers / window)
    record["load_average"]["end"] = _load()
    record["machine"] = peaks
    after = await pool_counts(stack)
    if stack.mode == POOL:
        keys = {"claimed", "fallback-empty", "fallback-failed", *after} - {"idle"}  # 0 is not exported
        record["pool"] = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in sorted(keys)}
    record["arrival_window_s"] = window


async def pool_counts(stack: BenchStack) -> dict[str, float]:
    """From the hub's own /hub/metrics, summed over pools: claims by outcome ("claimed", "unreachable", ...),
    cold fallbacks ("fallback-empty", "fallback-failed") and idle warm tasks ("idle")."""
    answer = await stack.api.request("GET", "/../metrics")
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "calliope_pool_claims_total":
                key = sample.labels["outcome"]
            elif sample.name == "calliope_pool_fallbacks_total":
                key = f"fallback-{sample.labels['reason']}"
            elif sample.name == "calliope_pool_tasks" and sample.labels["state"] == "idle":
                key = "idle"
            else:
                continue
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


async def _filled(stack: BenchStack, pools: Mapping[str, int]) -> float:
    """Seconds from now (the hub answering) until it counts every pool's tasks idle."""
    began = time.monotonic()
    wanted = sum(pools.values())
    while (await pool_counts(stack)).get("idle", 0) < wanted:
        if time.monotonic() - began > FILL_TIMEOUT_S:
            raise RuntimeError(f"the pools were not idle within {FILL_TIMEOUT_S:g}s")
        await asyncio.sleep(2)
    return round(time.monotonic() - began, 1)


def _load() -> dict[str, float]:
    """The machine's load averages now (what `uptime` prints)."""
    return {span: round(value, 2) for span, value in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True)}


@contextlib.asynccontextmanager
async def _machine_peaks() -> AsyncIterator[dict[str, float]]:
    """The machine's peak memory in use (GiB) and mean CPU busy (%) while the block runs."""
    peaks = {"memory_used_gib_max": 0.0, "cpu_busy_pct_mean": 0.0}
    samples: list[float] = []

    async def sample() -> None:
        psutil.cpu_percent()  # starts the interval
        while True:
            await asyncio.sleep(SAMPLE_S)
            samples.append(psutil.cpu_percent())
            used = psutil.virtual_memory().used / 2**30
            peaks["memory_used_gib_max"] = max(peaks["memory_used_gib_max"], round(used, 2))

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        yield peaks
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        peaks["cpu_busy_pct_mean"] = round(sum(samples) / len(samples), 1) if samples else 0.0
