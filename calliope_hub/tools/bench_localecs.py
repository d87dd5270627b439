"""`calliope-hub bench-local-ecs`: local ECS itself at 10,000 live sim tasks.

Local ECS runs as a subprocess, so its resident memory is its own and the client's work
never shares its CPU time. Server time comes from its /_localecs/stats (ground truth),
client time from the round trip seen by a real aiobotocore client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiobotocore.session import get_session
from botocore.config import Config
from rich.console import Console
from rich.table import Table

from calliope_hub.tools.local.localecs_proc import LocalEcsProcess
from calliope_hub.tools.machine import machine
from calliope_hub.tools.stats import Percentiles

CLUSTER = "bench"
FAMILY = "bench-lab"


@dataclass
class BenchReport:
    tasks: int
    run_task_seconds: float
    run_task_per_s: float
    running_after_s: float
    describe_calls: int
    describe_server_ms: dict
    describe_client_ms: dict
    server_rss_mib: float
    machine: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def wait_until(ecs: LocalEcsProcess, ready: Any, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = await ecs.stats()
        if ready(stats):
            return stats
        await asyncio.sleep(0.5)
    raise RuntimeError(f"local ECS did not get {what} within {timeout:.0f} s")


async def run_tasks(ecs: Any, total: int, concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    network = {"awsvpcConfiguration": {"subnets": ["subnet-bench"]}}

    async def batch(count: int) -> list[str]:
        async with gate:
            answer = await ecs.run_task(
                cluster=CLUSTER,
                taskDefinition=FAMILY,
                count=count,
                launchType="FARGATE",
                networkConfiguration=network,
                startedBy="calliope-hub/bench",
            )
            return [t["taskArn"] for t in answer["tasks"]]

    sizes = [min(10, total - start) for start in range(0, total, 10)]
    return [arn for arns in await asyncio.gather(*(batch(n) for n in sizes)) for arn in arns]


async def bench(server: LocalEcsProcess, total: int, concurrency: int, describes: int) -> tuple[dict, list[float]]:
    session = get_session()
    config = Config(max_pool_connections=concurrency, retries={"mode": "standard"})
    async with session.create_client(
        "ecs",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        config=config,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ) as ecs:
        await ecs.create_cluster(clusterName=CLUSTER)
        await ecs.register_task_definition(
            family=FAMILY,
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="1024",
            memory="2048",
            containerDefinitions=[{"name": "lab", "image": "lab", "portMappings": [{"containerPort": 8888}]}],
        )
        started = time.perf_counter()
        arns = await run_tasks(ecs, total, concurrency)
        run_seconds = time.perf_counter() - started
        await wait_until(server, lambda s: s["tasks"].get("RUNNING", 0) >= total, 600, f"{total} RUNNING")
        running_after = time.perf_counter() - started
        # one full sweep first, as a hub's watcher makes: answers are cached per task version
        for start in range(0, len(arns), 100):
            await ecs.describe_tasks(cluster=CLUSTER, tasks=arns[start : start + 100], include=["TAGS"])
        before = (await server.stats())["server_ms"]["DescribeTasks"]["count"]
        round_trips = []
        for _ in range(describes):
            sample = random.sample(arns, 100)
            begin = time.perf_counter()
            answer = await ecs.describe_tasks(cluster=CLUSTER, tasks=sample, include=["TAGS"])
            round_trips.append((time.perf_counter() - begin) * 1000)
            assert len(answer["tasks"]) == 100, answer["failures"][:3]
    timing = {"run_seconds": run_seconds, "running_after": running_after, "arns": len(arns), "warmup": before}
    return timing, round_trips


async def measure(total: int, concurrency: int, describes: int) -> BenchReport:
    args = ["--mode", "sim", "--throttle", "off", "--sim-provisioning", "0.05", "--sim-pending", "0.1"]
    async with LocalEcsProcess(args) as server:
        timing, round_trips = await bench(server, total, concurrency, describes)
        stats = await server.stats()
        rss = psutil.Process(server.pid).memory_info().rss
    served = stats["server_ms"]["DescribeTasks"]
    assert served["count"] == timing["warmup"] + describes, "server samples must be this run's only"
    return BenchReport(
        tasks=timing["arns"],
        run_task_seconds=round(timing["run_seconds"], 3),
        run_task_per_s=round(timing["arns"] / timing["run_seconds"], 1),
        running_after_s=round(timing["running_after"], 3),
        describe_calls=describes,
        describe_server_ms={"p50": served["p50"], "p99": served["p99"], "count": served["count"]},
        describe_client_ms=Percentiles.of(round_trips).to_json(),
        server_rss_mib=round(rss / 1024**2, 1),
        machine=machine(),
    )


def render(report: BenchReport) -> Table:
    table = Table(title=f"local ECS, sim mode, {report.tasks} live tasks")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("RunTask throughput (count=10 per call)", f"{report.run_task_per_s} tasks/s"),
        ("all tasks RUNNING after", f"{report.running_after_s} s"),
        ("DescribeTasks 100 ARNs, server p50", f"{report.describe_server_ms['p50']} ms"),
        ("DescribeTasks 100 ARNs, server p99", f"{report.describe_server_ms['p99']} ms"),
        ("DescribeTasks 100 ARNs, client p50", f"{report.describe_client_ms['p50']} ms"),
        ("DescribeTasks 100 ARNs, client p99", f"{report.describe_client_ms['p99']} ms"),
        ("server resident memory", f"{report.server_rss_mib} MiB"),
        ("machine", f"{report.machine['cpus']} CPUs, {report.machine['memory_gib']} GiB RAM"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=10_000, help="live sim tasks to start")
    parser.add_argument("--concurrency", type=int, default=32, help="RunTask calls in flight")
    parser.add_argument("--describes", type=int, default=1000, help="DescribeTasks calls of 100 ARNs to time")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.tasks < 100 or args.concurrency < 1 or args.describes < 1:
        print("bench-local-ecs: need --tasks >= 100, --concurrency >= 1, --describes >= 1", file=sys.stderr)
        return 2
    report = asyncio.run(measure(args.tasks, args.concurrency, args.describes))
    Console().print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0
