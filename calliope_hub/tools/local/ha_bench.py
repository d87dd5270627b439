"""Failover at N servers: from a kill -9 of the leader to the API answering and every server verified.

    python -m calliope_hub.tools.local.ha_bench --servers 1000 --repeats 3 --json failover-1000.json

One HA stack (calliope_hub.tools.local.ha: local ECS in sim mode with ECS's quotas, two CHP
replicas, two hubs, HAProxy, a PostgreSQL database of the run's own, dropped after) gets N
Chat servers, then:

- **failover** (`--repeats` times): SIGKILL the leader; time until `GET /hub/api` answers 200
  through the balancer, and until the hub lists all N servers as ready (the new leader's
  `init_spawners` has checked every one). `--kill process` kills the hub's process, as
  `kill -9 <pid>` does: its fence keeper sees it exit and says so, and the standby serves
  without waiting `fence_timeout`; `--kill group` kills the hub and its keeper at once, as a
  lost container or AZ does, and the standby waits. The killed hub is started again as the
  standby and given time to prime its status cache before the next kill, as a supervisor would.
- **cold restart** (once): SIGKILL both hubs and start them again, the same times: the pair
  with nothing warm (process start, imports, a cold status sweep, the fence wait).
- **plain restart** (once, last): both hubs down, and our app without HA (`calliope_hub.hub.app`)
  started on one's config, timed at its own address (no balancer): the restart HA must beat.

Times are wall clock on this machine from the outside, as the bench's restart figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from calliope_hub.hub.config import CalliopeHA
from calliope_hub.hub.runtime import STANDBY_PRIME_INTERVAL
from calliope_hub.localecs.config import HIGHER_THROUGHPUT_THROTTLE
from calliope_hub.tools.interrupt import exit_status, run_interruptible
from calliope_hub.tools.loadtest import Loadtest, LoadtestConfig
from calliope_hub.tools.local.ha import DEFAULT_DB_URL, HaHub, HaSpec, HaStack, drop_database

PAGINATION = {"Accept": "application/jupyterhub-pagination+json"}
PAGE = 200
#: c.CalliopeHA.fence_timeout's default: the local stack's 3 s fenced a leader busy with a spawn burst on 2 shared cores
FENCE_TIMEOUT: float = CalliopeHA.fence_timeout.default_value
#: the service every user spawns: one without per-user storage (see run())
SERVICE = "chat"
#: what a standby logs each time its primed count changes (calliope_hub.hub.ha)
PRIMED = "standby primed"
#: what a new leader logs when the old leader's keeper said its hub had exited (calliope_hub.hub.ha)
HANDED_OVER_LOG = "took the lock from a leader whose hub has exited"
#: how long a takeover may take before the run calls it failed
TAKEOVER_TIMEOUT = 600.0


async def api_answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/hub/api/") as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def ready_count(session: aiohttp.ClientSession, url: str) -> int:
    """How many users the hub lists with a ready server, page by page (0 while it does not answer)."""
    count, offset = 0, 0
    try:
        while True:
            async with session.get(f"{url}/hub/api/users?state=ready&offset={offset}&limit={PAGE}") as answer:
                if answer.status != 200:
                    return 0
                page = await answer.json()
            count += len(page["items"])
            following = page["_pagination"].get("next")
            if not following:
                return count
            offset = following["offset"]
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return 0


async def time_takeover(stack: HaStack, servers: int, killed_at: float, url: str | None = None) -> dict[str, Any]:
    """Seconds from `killed_at` to the API answering at `url` (the balancer), then to all `servers` listed ready."""
    url = url or stack.url
    headers = {"Authorization": f"token {stack.token}", **PAGINATION}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not await api_answers(session, url):
            if time.monotonic() - killed_at > TAKEOVER_TIMEOUT:
                return {"api_s": None, "verified_s": None, "ready": 0}
            await asyncio.sleep(0.1)
        api_s = time.monotonic() - killed_at
        ready = 0
        while (ready := await ready_count(session, url)) < servers:
            if time.monotonic() - killed_at > TAKEOVER_TIMEOUT:
                return {"api_s": round(api_s, 2), "verified_s": None, "ready": ready}
            await asyncio.sleep(0.25)
    return {"api_s": round(api_s, 2), "verified_s": round(time.monotonic() - killed_at, 2), "ready": ready}


async def failover(stack: HaStack, servers: int, kill: str) -> dict[str, Any]:
    """Kill the leader; time the standby's takeover; start the killed hub again as the standby, warm."""
    for hub in stack.hubs:
        if hub.exit_code() is not None:  # fenced (or died) since: back as the standby first, as a supervisor would
            print(f"{hub.name} had exited ({hub.exit_code()}); starting it again as the standby", flush=True)
            await restart_standby(hub)
    (leader,) = await stack.leaders()
    if kill == "process":
        leader.kill_process()
    else:
        leader.kill()
    killed_at = time.monotonic()
    result = await time_takeover(stack, servers, killed_at)
    result["new_leader"] = (await stack.wait_for_leader(not_=leader)).name
    await restart_standby(leader)
    return result


async def restart_standby(hub: HaHub) -> None:
    """Start `hub` again and wait until its standby has primed its status cache (its log says so)."""
    primes = _primes_logged(hub)
    await hub.start()
    await next_prime(hub, primes)


def _log(hub: HaHub) -> str:
    log = hub.log_path
    return log.read_text(errors="replace") if log is not None and log.exists() else ""


def _primes_logged(hub: HaHub) -> int:
    return _log(hub).count(PRIMED)


async def next_prime(hub: HaHub, primes: int) -> None:
    """Until the hub's log has more than `primes` primes (a standby logs each change of its count)."""
    deadline = time.monotonic() + STANDBY_PRIME_INTERVAL * 3
    while _primes_logged(hub) <= primes and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


async def cold_restart(stack: HaStack, servers: int) -> dict[str, Any]:
    """Both hubs killed and started again: a restart of one hub with nothing warm, in the same stack."""
    for hub in stack.hubs:
        hub.kill()
    killed_at = time.monotonic()
    await asyncio.gather(*(hub.start() for hub in stack.hubs))
    return await time_takeover(stack, servers, killed_at)


async def plain_restart(stack: HaStack, servers: int) -> dict[str, Any]:
    """Both HA hubs killed and a plain hub (our app, no HA) started on one's config: the restart HA must beat."""
    for hub in stack.hubs:
        hub.kill()
    plain = stack.plain_hub(stack.hubs[0])
    killed_at = time.monotonic()
    starting = asyncio.ensure_future(plain.start())
    try:
        return await time_takeover(stack, servers, killed_at, url=plain.url)
    finally:
        await asyncio.gather(starting, return_exceptions=True)
        await plain.stop(10)


def summary(values: list[float | None]) -> dict[str, float | None]:
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return {"min": None, "median": None, "max": None}
    return {"min": min(known), "median": statistics.median(known), "max": max(known)}


async def run(
    servers: int, repeats: int, concurrency: int, kill: str = "process", keep_logs: Path | None = None
) -> dict[str, Any]:
    db_url = DEFAULT_DB_URL.rsplit("/", 1)[0] + f"/calliope_ha_bench_{uuid.uuid4().hex[:8]}"
    # Chat has no per-user storage, so its spawns use slot task definitions (no RegisterTaskDefinition,
    # 1/s); with Parameter Store's higher throughput the tokens' PutParameter allows 8 spawns/s.
    spec = HaSpec(
        db_url=db_url,
        fence_timeout=FENCE_TIMEOUT,
        ecs_args=["--mode", "sim", "--throttle", HIGHER_THROUGHPUT_THROTTLE],
        extra=["c.ECSSpawner.ssm_higher_throughput = True"],
        workdir=keep_logs,
    )
    stack = HaStack(spec)
    try:
        await stack.start()
        await stack.wait_for_leader()
        began = time.monotonic()
        config = LoadtestConfig(
            hub_url=stack.url,
            token=stack.token,
            users=servers,
            concurrency=concurrency,
            service=SERVICE,
            timeout=120 + 2.0 * servers,
            ready_timeout=600,
        )
        spawned = (await Loadtest(config).execute()).to_json()
        print(f"spawned {spawned['ready']}/{servers} in {time.monotonic() - began:.0f}s", flush=True)
        ready = spawned["ready"]
        leaders = await stack.leaders()
        standby = next(hub for hub in stack.hubs if hub not in leaders)
        if standby.exit_code() is None:
            await next_prime(standby, _primes_logged(standby))  # it stood by before the servers existed
        failovers = []
        for i in range(repeats):
            failovers.append(await failover(stack, ready, kill))
            print(f"failover {i + 1}: {failovers[-1]}", flush=True)
        cold = await cold_restart(stack, ready)
        print(f"cold restart: {cold}", flush=True)
        plain = await plain_restart(stack, ready)
        print(f"plain restart: {plain}", flush=True)
        fenced = sum(_log(hub).count("Calliope HA: fenced") for hub in stack.hubs)
        handed_over = sum(_log(hub).count(HANDED_OVER_LOG) for hub in stack.hubs)
    finally:
        await stack.close()
        drop_database(db_url)
    return {
        "servers": servers,
        "ready_before": ready,
        "spawn": spawned,
        "failover": failovers,
        "failover_api_s": summary([f["api_s"] for f in failovers]),
        "failover_verified_s": summary([f["verified_s"] for f in failovers]),
        "kill": kill,
        "takeovers_handed_over": handed_over,
        "cold_restart": cold,
        "plain_restart": plain,
        "standby_prime_interval_s": STANDBY_PRIME_INTERVAL,
        "fence_timeout_s": spec.fence_timeout,
        "leaders_fenced": fenced,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000, help="servers before the first kill (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="failovers, for min/median/max (default: 3)")
    parser.add_argument("--concurrency", type=int, default=50, help="spawn requests in flight (default: 50)")
    parser.add_argument(
        "--kill",
        choices=("process", "group"),
        default="process",
        help="process (default): kill -9 the leader hub's process, whose fence keeper sees it exit and hands "
        "over at once; group: the hub and its keeper at once, as a lost container, so the standby waits "
        "fence_timeout",
    )
    parser.add_argument("--json", type=Path, help="write the run here")
    parser.add_argument("--keep-logs", type=Path, help="run the stack in this directory and keep its logs")
    args = parser.parse_args(argv)
    if args.servers < 1 or args.repeats < 1 or args.concurrency < 1:
        parser.error("--servers, --repeats and --concurrency must be at least 1")
    try:  # SIGTERM or Ctrl-C: the stack is closed and its database dropped by run()'s own teardown
        record = run_interruptible(run(args.servers, args.repeats, args.concurrency, args.kill, args.keep_logs))
    except KeyboardInterrupt as stop:
        return exit_status(stop)
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
