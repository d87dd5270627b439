"""The phases of one bench run, each measured from outside the hub.

Every figure comes from a source the hub cannot flatter: ECS calls from local ECS's own
counters, CPU and memory from the kernel (psutil), detection and restart from the hub's
public REST API. Every loop here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import random
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import psutil

from calliope_hub.tools.bench.stack import CLUSTER, BenchStack, loop_lag_entries
from calliope_hub.tools.hubapi import HubApi, HubApiGaveUp
from calliope_hub.tools.loadtest import LoadtestConfig, run_loadtest
from calliope_hub.tools.local.hubproc import PROXY_PID_FILE
from calliope_hub.tools.stats import Percentiles

USER_PREFIX = "bench-"
PAGE = 200
PAGINATION = {"Accept": "application/jupyterhub-pagination+json"}
#: The hub REST API probe: one GET /users/<name> this often during the steady window.
API_PROBE_S = 0.25
WATCH_S = 0.25


def hub_api(stack: BenchStack, retries: int = 5) -> HubApi:
    assert stack.hub is not None
    return HubApi(stack.hub.url, stack.token, max_connections=16, request_timeout=60, max_retries=retries)


async def spawn_phase(
    stack: BenchStack, servers: int, concurrency: int, service: str, size: str, rate: float | None = None
) -> dict[str, Any]:
    """loadtest's figures: throughput, time to ready, 429s and failures, every user spawning service/size
    (at most `rate` spawn requests a second: a class arriving, for the pool bench)."""
    assert stack.hub is not None
    config = LoadtestConfig(
        hub_url=stack.hub.url,
        token=stack.token,
        users=servers,
        prefix=USER_PREFIX,
        concurrency=concurrency,
        service=service,
        size=size,
        rate=rate,
        timeout=120 + servers * 1.2,  # first spawns register a task definition each: 1/s after a burst of 20
        ready_timeout=300,
    )
    report = await run_loadtest(config)
    full = report.to_json()
    return {
        "per_second": full["per_second"],
        "ready_s": full["ready_s"],
        "http_429": full["http_429"],
        "failed": full["failed"],
        "requested": full["requested"],
        "ready": full["ready"],
        "failed_by_reason": full["failed_by_reason"],
        "duration_s": full["duration_s"],
    }


async def ready_names(stack: BenchStack, limit_pages: int) -> set[str]:
    """Users whose default server the hub lists as ready, page by page."""
    assert stack.hub is not None
    headers = {"Authorization": f"token {stack.token}", **PAGINATION}
    names: set[str] = set()
    offset = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        for _ in range(limit_pages):
            url = f"{stack.hub.url}/hub/api/users?state=ready&offset={offset}&limit={PAGE}"
            async with session.get(url) as answer:
                answer.raise_for_status()
                page = await answer.json()
            names.update(user["name"] for user in page["items"])
            following = page["_pagination"].get("next")
            if not following:
                break
            offset = following["offset"]
    return names


async def wait_all_ready(stack: BenchStack, expected: set[str], timeout: float) -> set[str]:
    """Poll the ready list until it holds every expected user or `timeout` passes."""
    deadline = time.monotonic() + timeout
    pages = math.ceil(len(expected) / PAGE) + 2
    ready: set[str] = set()
    while time.monotonic() < deadline:
        try:
            ready = await ready_names(stack, pages)
        except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
            ready = set()
        if expected <= ready:
            break
        await asyncio.sleep(0.5)
    return ready


# -- steady state ----------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _proxy_pid(stack: BenchStack) -> int | None:
    if stack.proxy is not None:
        return stack.proxy.pid
    try:
        return int((stack.hub_workdir / PROXY_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


async def _hub_metrics(stack: BenchStack) -> str:
    """The hub's /hub/metrics, as Prometheus would scrape it."""
    assert stack.hub is not None
    headers = {"Authorization": f"token {stack.token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
        session.get(f"{stack.hub.url}/hub/metrics") as answer,
    ):
        return await answer.text()


async def events_received(stack: BenchStack) -> dict[str, int]:
    """calliope_ecs_events_total by outcome so far: what the events path did (empty with events off)."""
    prefix = 'calliope_ecs_events_total{outcome="'
    received: dict[str, int] = {}
    for line in (await _hub_metrics(stack)).splitlines():
        if line.startswith(prefix):
            outcome, _, value = line[len(prefix) :].partition('"} ')
            received[outcome] = int(float(value))
    return received


async def _sweep_totals(stack: BenchStack) -> tuple[float, float]:
    """(sum, count) of calliope_sweep_duration_seconds from the hub's /hub/metrics."""
    text = await _hub_metrics(stack)
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        if line.startswith("calliope_sweep_duration_seconds") and f'cluster="{CLUSTER}"' in line:
            for suffix in totals:
                if line.startswith(f"calliope_sweep_duration_seconds{suffix}{{"):
                    totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


async def _post_activity(api: HubApi, names: list[str], per_second: float, until: float) -> int:
    """Each user's server reports activity once per activity interval, spread evenly."""
    posted, turn, began = 0, 0, time.monotonic()
    while time.monotonic() < until:
        due = int((time.monotonic() - began) * per_second) + 1
        batch: list[str] = []
        while posted + len(batch) < due:
            batch.append(names[turn % len(names)])
            turn += 1
        stamp = _now_iso()
        body = {"last_activity": stamp, "servers": {"": {"last_activity": stamp}}}
        await asyncio.gather(
            *(api.request("POST", f"/users/{name}/activity", body) for name in batch),
            return_exceptions=True,
        )
        posted += len(batch)
        await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
    return posted


async def _probe_api(api: HubApi, names: list[str], until: float) -> list[float]:
    latencies: list[float] = []
    while time.monotonic() < until:
        with contextlib.suppress(HubApiGaveUp):
            await api.request("GET", f"/users/{random.choice(names)}", latencies=latencies)
        await asyncio.sleep(API_PROBE_S)
    return latencies


def _per_minute(before: dict, after: dict, window: float) -> tuple[dict[str, float], float, dict]:
    calls: dict[str, float] = {}
    throttled = 0
    by_outcome: dict[str, dict[str, int]] = {}
    for operation, counts in after.get("calls", {}).items():
        old = before.get("calls", {}).get(operation, {})
        delta = {outcome: n - old.get(outcome, 0) for outcome, n in counts.items()}
        if sum(delta.values()):
            calls[operation] = round(sum(delta.values()) * 60 / window, 2)
            by_outcome[operation] = delta
        throttled += delta.get("throttled", 0)
    return calls, round(throttled * 60 / window, 2), by_outcome


async def idle_cpu_pct(stack: BenchStack, seconds: float) -> float:
    """The hub's CPU with no client load at all: status tracking and JupyterHub's own timers."""
    assert stack.hub is not None
    before = _cpu_seconds(stack.hub.pid)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    return round((_cpu_seconds(stack.hub.pid) - before) * 100 / (time.monotonic() - began), 2)


async def steady_phase(stack: BenchStack, names: list[str], window: float, activity_interval: float) -> dict[str, Any]:
    """ECS calls, hub CPU/RSS, sweep time and API latency while servers post activity."""
    assert stack.hub is not None and stack.hub.pid is not None
    hub_pid, proxy_pid, ecs_pid = stack.hub.pid, _proxy_pid(stack), stack.ecs.pid
    async with hub_api(stack, retries=2) as api:
        stats_before = await stack.ecs.stats()
        sweeps_before = await _sweep_totals(stack)
        cpu_before = [_cpu_seconds(pid) for pid in (hub_pid, proxy_pid, ecs_pid)]
        lag_since = time.time()
        began = time.monotonic()
        until = began + window
        posted, latencies = await asyncio.gather(
            _post_activity(api, names, len(names) / activity_interval, until),
            _probe_api(api, names, until),
        )
        elapsed = time.monotonic() - began
        cpu_after = [_cpu_seconds(pid) for pid in (hub_pid, proxy_pid, ecs_pid)]
        stats_after = await stack.ecs.stats()
        sweeps_after = await _sweep_totals(stack)
    calls, throttled, by_outcome = _per_minute(stats_before, stats_after, elapsed)
    hub_pct, proxy_pct, ecs_pct = (
        round((after - before) * 100 / elapsed, 2) for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    sweep_n = sweeps_after[1] - sweeps_before[1]
    api_ms = Percentiles.of(s * 1000 for s in latencies).to_json(2)
    blocks = loop_lag_entries(stack.lag_path, lag_since)
    return {
        "window_s": round(elapsed, 2),
        "ecs_calls_per_min": calls,
        "throttled_per_min": throttled,
        "hub_cpu_pct": hub_pct,
        "hub_rss_mib": round(psutil.Process(hub_pid).memory_info().rss / 2**20, 1),
        "api_ms": api_ms,
        "ecs_calls_by_outcome": by_outcome,
        "sweeps": int(sweep_n),
        "sweep_s_mean": round((sweeps_after[0] - sweeps_before[0]) / sweep_n, 4) if sweep_n else None,
        "proxy_cpu_pct": proxy_pct,
        "local_ecs_cpu_pct": ecs_pct,
        "activity_posts": posted,
        "activity_interval_s": activity_interval,
        "loop_block_max_s": round(max(blocks, default=0.0), 3),
        "tasks": stats_after.get("tasks", {}),
    }


# -- detection, restart, shutdown -------------------------------------------------------


async def _task_id(api: HubApi, name: str) -> str:
    model = (await api.request("GET", f"/users/{name}")).json()
    arn = model["servers"][""]["state"]["task_arn"]
    return str(arn).rsplit("/", 1)[-1]


async def _until_not_ready(api: HubApi, name: str, killed_at: float, timeout: float) -> float | None:
    deadline = killed_at + timeout
    while time.monotonic() < deadline:
        try:
            model = (await api.request("GET", f"/users/{name}")).json()
        except HubApiGaveUp:
            model = {"servers": {"": {"ready": True}}}
        server = model.get("servers", {}).get("")
        if not server or not server.get("ready"):
            return time.monotonic() - killed_at
        await asyncio.sleep(WATCH_S)
    return None


async def detect_phase(stack: BenchStack, names: Iterable[str], kills: int, timeout: float) -> dict[str, Any]:
    """Local ECS kills K random tasks; how long until the hub says each server stopped."""
    victims = random.sample(sorted(names), kills)
    async with hub_api(stack) as api:
        task_ids = await asyncio.gather(*(_task_id(api, name) for name in victims))
        killed_at = time.monotonic()
        await asyncio.gather(*(stack.ecs.kill_task(task_id) for task_id in task_ids))
        seen = await asyncio.gather(*(_until_not_ready(api, n, killed_at, timeout) for n in victims))
    noticed = [s for s in seen if s is not None]
    summary = Percentiles.of(noticed).to_json(3)
    return {
        "p50": summary["p50"],
        "max": summary["max"] if len(noticed) == len(victims) else None,
        "killed": len(victims),
        "noticed": len(noticed),
        "timeout_s": timeout,
        "users": victims,
    }


def _running_tasks(stats: dict) -> int:
    return int(stats.get("tasks", {}).get("RUNNING", 0))


async def restart_phase(stack: BenchStack, expected: set[str], timeout: float) -> dict[str, Any]:
    """kill -9 the hub with its servers running, start it again, verify every server."""
    assert stack.hub is not None
    running_before = _running_tasks(await stack.ecs.stats())
    stack.hub.kill()
    began = time.monotonic()
    api_s = await stack.start_hub(cleanup_servers=False, timeout=timeout)
    ready = await wait_all_ready(stack, expected, timeout)
    seconds = time.monotonic() - began
    running_after = _running_tasks(await stack.ecs.stats())
    lost = len(expected - ready)
    return {
        "seconds": round(seconds, 3) if not lost else None,
        "lost": lost,
        "api_s": round(api_s, 3),
        "expected": len(expected),
        "ecs_running_before": running_before,
        "ecs_running_after": running_after,
    }


async def _timed_stop(stack: BenchStack, timeout: float) -> dict[str, Any]:
    assert stack.hub is not None
    since = time.time()
    began = time.monotonic()
    await stack.hub.stop(timeout=timeout)
    seconds = time.monotonic() - began
    blocks = loop_lag_entries(stack.lag_path, since)
    return {
        "block_s": round(max(blocks, default=0.0), 3),
        "seconds": round(seconds, 3),
        "forced_kill": seconds >= timeout,
        "ecs_running_after": _running_tasks(await stack.ecs.stats()),
    }


async def shutdown_phase(stack: BenchStack, expected: set[str], timeout: float) -> dict[str, Any]:
    """Stop the hub with every server up, first leaving tasks running, then cleaning up."""
    kept = await _timed_stop(stack, timeout)
    await stack.start_hub(cleanup_servers=True, timeout=timeout)
    ready = await wait_all_ready(stack, expected, timeout)
    cleaned = await _timed_stop(stack, timeout)
    cleaned["servers_at_stop"] = len(ready & expected)
    return {"cleanup_off": kept, "cleanup_on": cleaned}
