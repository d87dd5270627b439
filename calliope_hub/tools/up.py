"""`calliope-hub up`: the whole product on this machine, on its embedded defaults.

Local ECS (process mode: real JupyterLab) + JupyterHub + configurable-http-proxy, with
ECSSpawner and the built-in catalog. A newcomer gets a URL, a user and a password, and
Ctrl-C (or SIGTERM) takes everything down again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from ..catalog import Catalog
from ..ecs.api import EcsApi, EcsTarget
from ..ecs.bootstrap import prepare_cluster
from .local.hubconfig import HubSettings, render
from .local.hubproc import HubProcess, api_token_config
from .local.localecs_proc import LocalEcsProcess, event_args

TOKEN_ENV = "CALLIOPE_HUB_API_TOKEN"
ADMIN_SERVICE = "calliope-admin"
#: JupyterHub refuses to start with a shorter service token.
MIN_TOKEN_LENGTH = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--port", type=int, default=8000, help="the hub's public port (default %(default)s)")
    add("--ecs-port", type=int, default=9400, help="local ECS's port (default %(default)s)")
    add("--mode", choices=["process", "sim"], default="process",
        help="process: real JupyterLab per server; sim: stub servers, for load (default %(default)s)")
    add("--api-token", default=os.environ.get(TOKEN_ENV, ""),
        help=f"register an admin service token for scripts and loadtest (or set {TOKEN_ENV})")
    add("--data-dir", type=Path, default=Path(".calliope-hub"),
        help="the hub's database, logs and the generated password (default %(default)s)")
    add("--no-events", dest="events", action="store_false",
        help="no task state events from local ECS: the hub learns every change by polling")


def login_password(data_dir: Path) -> str:
    """A generated password, kept so that it stays the same across restarts."""
    path = data_dir / "password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


async def _serve(args: argparse.Namespace, console: Console) -> None:
    data = args.data_dir.resolve()
    (data / "tasks").mkdir(parents=True, exist_ok=True)
    events_secret = secrets.token_urlsafe(24) if args.events else ""
    ecs = LocalEcsProcess(
        ["--mode", args.mode, *event_args(f"http://127.0.0.1:{args.port}", events_secret)],
        port=args.ecs_port,
        log_path=data / "local-ecs.log",
        cwd=data / "tasks",
    )
    hub: HubProcess | None = None
    try:
        with console.status("starting local ECS"):
            await ecs.start()
            api = await EcsApi.shared(EcsTarget("us-east-1", ecs.endpoint_url))
            await prepare_cluster(api, Catalog.load(), "calliope", local=True)
            await EcsApi.close_all()
        settings = HubSettings(
            ecs_endpoint=ecs.endpoint_url, user_password=login_password(data), events_secret=events_secret
        )
        config = render(settings)
        if args.api_token:
            config += api_token_config(args.api_token, ADMIN_SERVICE)
        hub = HubProcess(config, port=args.port, workdir=data / "hub")
        with console.status("starting JupyterHub (the first start takes a few seconds)"):
            await hub.start(timeout=120)
        console.print(_banner(hub, settings, args, data))
        await _until_signalled()
    finally:
        with console.status("stopping"):
            if hub is not None:
                await hub.stop()
            await ecs.stop()
        console.print("stopped: no process left behind")


def _banner(hub: HubProcess, settings: HubSettings, args: argparse.Namespace, data: Path) -> Panel:
    lines = [
        f"[bold]Calliope Hub[/] is up at [link={hub.url}]{hub.url}[/link]",
        f"log in as any user name (e.g. [bold]alice[/]) with the password [bold]{settings.user_password}[/]",
        f"local ECS ({args.mode} mode): {settings.ecs_endpoint}, "
        + ("task events pushed to the hub" if settings.events_secret else "no events (--no-events): polling"),
        f"logs: {data / 'hub' / 'jupyterhub.log'} and {data / 'local-ecs.log'}",
    ]
    if args.api_token:
        lines.append(f"admin API token: registered for the service '{ADMIN_SERVICE}'")
    lines.append("Ctrl-C stops everything")
    return Panel("\n".join(lines), expand=False)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def _bad_arguments(args: argparse.Namespace) -> str:
    """What is wrong with the flags, before anything starts ('' when nothing is)."""
    if args.port == args.ecs_port:
        return "--port and --ecs-port must differ"
    if args.api_token and len(args.api_token) < MIN_TOKEN_LENGTH:
        return f"--api-token must be at least {MIN_TOKEN_LENGTH} characters (JupyterHub refuses shorter ones)"
    return ""


def run(args: argparse.Namespace) -> int:
    console = Console()
    problem = _bad_arguments(args)
    if problem:
        console.print(f"[red]calliope-hub up:[/] {problem}")
        return 2
    try:
        asyncio.run(_serve(args, console))
    except (OSError, RuntimeError) as e:
        console.print(f"[red]calliope-hub up failed:[/] {e}")
        return 1
    return 0
