"""`calliope-hub up --ha`: the HA stack in the foreground, one URL, and `--kill leader` to watch a failover.

The foreground process supervises: a hub that exits (killed, or fenced) is started again at
once, and comes back as the standby, so the pair is always whole again after a failover.
`up --ha --kill leader` (another terminal, same --data-dir) reads the stack's state file,
asks each hub's /leader, SIGKILLs the one that says 200 and times the standby's takeover.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.panel import Panel

from .ha import DEFAULT_DB_URL, HaSpec, HaStack
from .hubproc import private_dir, write_private
from .procs import LOOPBACK

STATE_FILE = "ha-state.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only `up --ha` reads (up's own --port, --ecs-port, --mode, --data-dir, --no-events apply too)."""
    add = parser.add_argument
    add("--ha", action="store_true", help="two hubs, two proxies and HAProxy on one PostgreSQL (docs/ha.md)")
    add("--db-url", default=DEFAULT_DB_URL, help="with --ha: the hubs' PostgreSQL database, created if missing")
    add("--kill", choices=["leader"], help="with --ha: SIGKILL the running stack's leader and time the failover")


async def _serve(args: argparse.Namespace, password: str, console: Console) -> None:
    data = private_dir(args.data_dir.resolve())
    spec = HaSpec(
        db_url=args.db_url,
        ecs_args=["--mode", args.mode],
        public_port=args.port,
        ecs_port=args.ecs_port,
        workdir=data / "ha",
        user_password=password,
        events=args.events,
    )
    stack = HaStack(spec)
    try:
        with console.status("starting PostgreSQL's database, local ECS, 2 proxies, 2 hubs and HAProxy"):
            await stack.start()
            leader = await stack.wait_for_leader()
        _write_state(stack, data)
        console.print(_banner(stack, leader.name, password, data))
        await _supervise(stack, data, console)
    finally:
        with console.status("stopping"):
            await stack.close()
        (data / STATE_FILE).unlink(missing_ok=True)
    console.print("stopped: no hub, proxy, HAProxy or local ECS left behind")


def _banner(stack: HaStack, leader: str, password: str, data: Path) -> Panel:
    return Panel(
        "\n".join(
            [
                f"[bold]Calliope Hub (HA)[/] is up at [link={stack.url}]{stack.url}[/link]",
                f"log in as any user name with the password [bold]{password}[/]",
                f"leader: {leader}; standby: the other; hub health: "
                + ", ".join(f"http://{LOOPBACK}:{hub.port}/leader" for hub in stack.hubs),
                f"failover live: calliope-hub up --ha --kill leader --data-dir {data}",
                f"logs: {stack.workdir}/hub-*/jupyterhub.log, chp-*.log, haproxy.log, local-ecs.log",
                "Ctrl-C stops everything",
            ]
        ),
        expand=False,
    )


def _write_state(stack: HaStack, data: Path) -> None:
    hubs = [{"name": hub.name, "pid": hub.pid, "health": hub.port} for hub in stack.hubs]
    write_private(data / STATE_FILE, json.dumps({"url": stack.url, "hubs": hubs}))


async def _supervise(stack: HaStack, data: Path, console: Console) -> None:
    """Until Ctrl-C: a hub that exited is started again, as the new standby."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        for hub in stack.hubs:
            code = hub.exit_code()
            if code is not None:
                console.print(f"{hub.name} exited ({code}); starting it again as the standby")
                await hub.start()
                _write_state(stack, data)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def kill_leader(data: Path, console: Console) -> int:
    """SIGKILL the leader of the stack running from `data`, then time the standby's takeover."""
    try:
        state = json.loads((data / STATE_FILE).read_text())
    except (OSError, ValueError):
        console.print(f"[red]calliope-hub up --ha --kill:[/] no running HA stack in {data} (start `up --ha` first)")
        return 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        leaders = [hub for hub in state["hubs"] if await _leads(session, hub["health"])]
        if len(leaders) != 1:
            console.print(f"[red]calliope-hub up --ha --kill:[/] {len(leaders)} hubs say they lead; nothing killed")
            return 1
        victim = leaders[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        console.print(f"killed {victim['name']} (pid {victim['pid']}) with SIGKILL")
        others = [hub for hub in state["hubs"] if hub is not victim]
        while time.monotonic() - killed < 120:
            for hub in others:
                if await _leads(session, hub["health"]):
                    console.print(f"{hub['name']} leads {time.monotonic() - killed:.1f}s after the kill")
                    return await _api_after(session, state["url"], killed, console)
            await asyncio.sleep(0.1)
    console.print("[red]no standby took over within 120 s[/]: see the hubs' logs")
    return 1


async def _leads(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://{LOOPBACK}:{port}/leader") as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _api_after(session: aiohttp.ClientSession, url: str, killed: float, console: Console) -> int:
    """The hub API answers again through the balancer (the same URL users have)."""
    while time.monotonic() - killed < 120:
        try:
            async with session.get(f"{url}/hub/api/") as answer:
                if answer.status == 200:
                    console.print(f"{url}/hub/api answers {time.monotonic() - killed:.1f}s after the kill")
                    return 0
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    return 1


def run(args: argparse.Namespace, password: str) -> int:
    """`up --ha` (or `up --ha --kill leader`); `password` is up's generated login password."""
    console = Console()
    data = args.data_dir.resolve()
    if args.kill == "leader":
        return asyncio.run(kill_leader(data, console))
    try:
        asyncio.run(_serve(args, password, console))
    except (OSError, RuntimeError, ValueError) as e:
        console.print(f"[red]calliope-hub up --ha failed:[/] {e}")
        return 1
    return 0
