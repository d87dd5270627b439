"""`calliope-hub bench-detect`: how long until the hub notices a task that died.

For each mode (events on, events off) it starts local ECS (sim) and a real hub at the same
poll interval, spawns N servers, then kills their tasks through local ECS's fault endpoint,
spread evenly over one poll interval (so polling's answer is not flattered or punished by
kill timing). Detection time is from the kill to the moment GET /hub/api/users/<name> no
longer lists the server: the hub has run its stop callbacks and removed the route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.loadtest import write_json
from calliope_hub.tools.local.hubconfig import HubSettings
from calliope_hub.tools.local.localecs_proc import LocalEcsProcess
from calliope_hub.tools.local.stack import LocalEcsSpec, LocalStack, StackSpec
from calliope_hub.tools.stats import Percentiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--kills", type=int, default=20, help="servers spawned and killed per mode")
    add("--poll-interval", type=float, default=30.0, help="the hub's poll interval, both modes")
    add("--modes", default="events,poll", help="comma-separated: events, poll")
    add("--out", type=Path, help="write the figures as JSON here")


async def _spawn(api: HubApi, name: str, timeout: float = 120) -> str:
    """Start `name`'s server; its task's id once the hub says it is ready."""
    await api.request("POST", f"/users/{name}")
    answer = await api.request("POST", f"/users/{name}/server", {"user_options": {}})
    if answer.status not in (201, 202):
        raise RuntimeError(f"spawning {name}: HTTP {answer.status} {answer.text}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = (await api.request("GET", f"/users/{name}")).json()["servers"].get("", {})
        if server.get("ready"):
            return str(server["state"]["task_arn"]).rsplit("/", 1)[-1]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name}'s server was not ready within {timeout}s")


async def _time_detection(api: HubApi, ecs: LocalEcsProcess, name: str, task_id: str, delay: float) -> float:
    await asyncio.sleep(delay)
    await ecs.kill_task(task_id)
    killed = time.monotonic()
    while time.monotonic() - killed < 600:
        if "" not in (await api.request("GET", f"/users/{name}")).json()["servers"]:
            return time.monotonic() - killed
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{name}'s dead task was not noticed within 600s")


async def measure(mode: str, kills: int, poll_interval: float) -> dict[str, Any]:
    """One mode on a fresh local ECS and hub: detection times of `kills` kills."""
    spec = StackSpec(
        hub=HubSettings(hub_id=f"detect-{mode}", poll_interval=poll_interval),
        ecs=LocalEcsSpec(mode="sim", throttle="aws", sim_provisioning=0.2, sim_pending=0.2),
        events=mode == "events",
        api_service="loadtest",
    )
    async with LocalStack(spec) as stack:
        names = [f"detect-{i}" for i in range(kills)]
        task_ids = await asyncio.gather(*(_spawn(stack.api, n) for n in names))
        spacing = poll_interval / kills
        times = await asyncio.gather(
            *(
                _time_detection(stack.api, stack.ecs, n, t, i * spacing)
                for i, (n, t) in enumerate(zip(names, task_ids, strict=True))
            )
        )
    return {"mode": mode, "poll_interval_s": poll_interval, "detection_s": Percentiles.of(times).to_json(3),
            "samples_s": [round(t, 3) for t in sorted(times)]}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("events", "poll") for m in modes) or args.kills < 1 or args.poll_interval <= 0:
        print("--modes takes events and/or poll; --kills and --poll-interval must be positive")
        return 2
    results = [asyncio.run(measure(mode, args.kills, args.poll_interval)) for mode in modes]
    for result in results:
        d = result["detection_s"]
        print(f"{result['mode']:>6}: median {d['p50']} s, max {d['max']} s over {d['count']} kills "
              f"(poll interval {result['poll_interval_s']} s)")  # fmt: skip
    if args.out:
        write_json(args.out, {"command": "calliope-hub bench-detect", "results": results})
    else:
        print(json.dumps(results, indent=2))
    return 0
