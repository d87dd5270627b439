"""`calliope-hub local-ecs`: run local ECS in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.text import Text

from calliope_hub.localecs.callers import ACCESS_KEY_ENV
from calliope_hub.localecs.config import SIM_TIMINGS, LocalEcsConfig, random_cidr
from calliope_hub.localecs.model import LIFECYCLE
from calliope_hub.localecs.service import LocalEcs

#: The events header may come from here instead of --events-header: a secret in argv is visible in `ps`.
EVENTS_HEADER_ENV = "CALLIOPE_LOCAL_ECS_EVENTS_HEADER"
#: the sim timing flags: (flag, LocalEcsConfig field, what it sets).
_SIM_FLAGS = [
    ("--sim-provisioning", "sim_provisioning_s", "seconds in PROVISIONING"),
    ("--sim-pending", "sim_pending_s", "seconds in PENDING"),
    ("--sim-activating", "sim_activating_s", "seconds in ACTIVATING"),
    ("--sim-deactivating", "sim_deactivating_s", "seconds in DEACTIVATING"),
    ("--sim-stopping", "sim_stopping_s", "seconds in STOPPING (a container's exit after SIGTERM)"),
    ("--sim-deprovisioning", "sim_deprovisioning_s", "seconds in DEPROVISIONING"),
    ("--sim-jitter", "sim_jitter", "+- fraction applied to each of those times"),
]
#: seconds between two status lines on a terminal.
STATUS_EVERY_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = LocalEcsConfig()
    add = parser.add_argument
    add("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    add("--port", type=int, default=defaults.port, help="port to listen on; 0 picks a free one (default %(default)s)")
    add(
        "--mode",
        choices=["sim", "process"],
        default=defaults.mode,
        help="sim: tasks run nothing but answer HTTP; process: run each container's command locally",
    )
    add(
        "--throttle",
        default=defaults.throttle,
        help="aws (the quotas in calliope_hub.ecsfacts), off, or overrides as name=burst:rate per s, names read, "
        "modify, fargate, ssm-put, ssm-delete (e.g. ssm-put=10:10 is Parameter Store's higher throughput)",
    )
    add("--events-url", help="POST every ECS Task State Change event here, as an EventBridge API destination")
    add("--events-header", help=f"header sent with every event, 'Name: value' (or set {EVENTS_HEADER_ENV})")
    add("--event-duplicate", type=float, default=0.0, help="fraction of events delivered twice (for tests)")
    add("--event-reorder", action="store_true", help="deliver events out of order (for tests)")
    add(
        "--sim-timing",
        choices=sorted(SIM_TIMINGS),
        help="how long tasks dwell in each state; fargate: a 30-60 s cold start and a stop of tens of "
        "seconds, for benches and demos (default fast); the flags below override one value each. Process mode "
        "dwells only when this or one of those flags is given; its STOPPING is the real exit",
    )
    for flag, field, what in _SIM_FLAGS:
        presets = ", ".join(f"{name} {values[field]:g}" for name, values in sorted(SIM_TIMINGS.items()))
        add(flag, type=float, help=f"sim: {what} (default from --sim-timing: {presets})")
    add("--sim-fail-fraction", type=float, default=0.0, help="fraction of tasks that fail to start")
    add("--sim-stop-rate", type=float, default=0.0, help="spontaneous stops per running task per hour")
    add("--retention", type=float, default=defaults.retention_s, help="seconds a STOPPED task stays describable")
    add("--stop-timeout", type=float, default=defaults.stop_timeout_s, help="seconds from SIGTERM to SIGKILL")
    add("--cidr", help="task addresses come from here, inside 127.0.0.0/8 (default: a random /16)")
    add("--tls", action="store_true", help="serve https with a self-signed certificate (its path is printed)")
    add("--tls-dir", type=Path, help="where to keep that certificate (default: a temporary directory)")
    add("--data-dir", type=Path, help="process mode: keep EFS access points' files here (default: a temp directory)")
    add(
        "--efs-access-point-limit",
        type=int,
        default=defaults.efs_access_point_limit,
        help="access points per EFS file system (default %(default)s)",
    )
    add("--region", default=defaults.region)
    add("--account", default=defaults.account)


def config_from(args: argparse.Namespace) -> LocalEcsConfig:
    """The one place command-line flags become a LocalEcsConfig."""
    header = None
    header_text = args.events_header or os.environ.get(EVENTS_HEADER_ENV)
    if header_text:
        from calliope_hub.localecs.events import parse_header

        header = parse_header(header_text)
    timing = dict(SIM_TIMINGS[args.sim_timing or "fast"])
    overrides = {field: getattr(args, flag.removeprefix("--").replace("-", "_")) for flag, field, _ in _SIM_FLAGS}
    timing.update({field: value for field, value in overrides.items() if value is not None})
    timed = args.sim_timing is not None or any(value is not None for value in overrides.values())
    return LocalEcsConfig(
        **timing,
        process_timing=args.mode == "process" and timed,
        host=args.host,
        port=args.port,
        mode=args.mode,
        throttle=args.throttle,
        events_url=args.events_url,
        events_header=header,
        event_duplicate=args.event_duplicate,
        event_reorder=args.event_reorder,
        sim_fail_fraction=args.sim_fail_fraction,
        sim_stop_rate=args.sim_stop_rate,
        retention_s=args.retention,
        stop_timeout_s=args.stop_timeout,
        cidr=args.cidr or random_cidr(),
        tls=args.tls,
        tls_dir=args.tls_dir,
        region=args.region,
        account=args.account,
        data_dir=args.data_dir,
        efs_access_point_limit=args.efs_access_point_limit,
        access_key_id=os.environ.get(ACCESS_KEY_ENV) or None,
    )


#: ECSSpawner.cluster's default: where the hub's tasks are, so the banner's snippet lists them.
HUB_CLUSTER = "calliope"


def boto3_snippet(server: LocalEcs) -> str:
    verify = f", verify={str(server.certificate)!r}" if server.certificate else ""
    return (
        "import boto3\n"
        f'ecs = boto3.client("ecs", endpoint_url="{server.endpoint_url}", region_name="{server.config.region}",\n'
        f'                   aws_access_key_id="local", aws_secret_access_key="local"{verify})\n'
        f'print(ecs.list_tasks(cluster="{HUB_CLUSTER}"))  # the hub\'s cluster (ECSSpawner.cluster)'
    )


def status_line(server: LocalEcs) -> Text:
    counts = server.plane.by_status if server.plane else {}
    parts = [f"{status.lower()} {counts[status]}" for status in LIFECYCLE if counts.get(status)]
    return Text(f"local ECS {server.endpoint_url}  tasks: " + (", ".join(parts) or "none"))


async def serve(config: LocalEcsConfig, console: Console) -> None:
    server = LocalEcs(config)
    await server.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    try:
        console.print(f"local ECS ({config.mode} mode) listening on [bold]{server.endpoint_url}[/bold]")
        if server.certificate:
            console.print(f"TLS certificate: {server.certificate}")
        console.print("Use it from Python:\n" + boto3_snippet(server), highlight=False, soft_wrap=True)
        if console.is_terminal:
            with Live(status_line(server), console=console, auto_refresh=False) as live:
                while not await _wait(done, STATUS_EVERY_S):
                    live.update(status_line(server), refresh=True)
        else:
            await done.wait()
    finally:
        console.print("stopping local ECS ...")
        await server.stop()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        config = config_from(args)
        config.validate()
    except ValueError as error:
        print(f"local-ecs: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, console))
    except OSError as error:
        print(f"local-ecs: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    return 0
