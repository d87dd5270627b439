"""`calliope-hub up`: the whole product on this machine, on its embedded defaults.

Local ECS (process mode: real JupyterLab) + JupyterHub + configurable-http-proxy, with
ECSSpawner and the built-in catalog, started as one `LocalStack`. A newcomer gets a URL, a
user and a password, and Ctrl-C (or SIGTERM) takes everything down again.

It is honest about what it owns: every port is checked before anything starts, and a port
held by someone else (a second `up`, say) stops it at once, naming the port and its holder.
No secret is ever on a command line: the admin token comes from the environment or a 0600
file, the events secret reaches local ECS through its environment, and the generated files
that hold secrets are 0600 in a 0700 data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import stat
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from ..catalog import load_catalog
from ..localecs.callers import ACCESS_KEY_ENV
from ..localecs.config import SIM_TIMINGS
from ..pool.config import PoolConfigError, check_against_catalog, parse_pools
from .local import ha_up
from .local.hubconfig import HubSettings
from .local.hubproc import private_dir, write_private
from .local.procs import BusyPort
from .local.stack import LocalEcsSpec, LocalStack, PortsBusy, StackPorts, StackSpec

TOKEN_ENV = "CALLIOPE_HUB_API_TOKEN"
ADMIN_SERVICE = "calliope-admin"
#: JupyterHub refuses to start with a shorter service token.
MIN_TOKEN_LENGTH = 8
PASSWORD_FILE = "password"
ACCESS_KEY_FILE = "local-ecs-access-key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--port", type=int, default=8000, help="the hub's public port")
    add("--ecs-port", type=int, default=9400, help="local ECS's port")
    add("--mode", choices=["process", "sim"], default="process",
        help="process: real JupyterLab per server; sim: stub servers, for load")  # fmt: skip
    add("--api-token-file", type=Path,
        help=f"register an admin service token read from this 0600 file, for scripts and loadtest "
        f"(or set {TOKEN_ENV})")  # fmt: skip
    add("--api-token", help=argparse.SUPPRESS)  # refused with a clear error: argv is visible in `ps`
    add("--data-dir", type=Path, default=Path(".calliope-hub"),
        help="the hub's database, logs and the generated password (made 0700)")  # fmt: skip
    add("--no-events", dest="events", action="store_false",
        help="no task state events from local ECS: the hub learns every change by polling")  # fmt: skip
    add("--pool", action="append", default=[], metavar="SERVICE/SIZE=N",
        help="keep N warm servers of SERVICE/SIZE, claimed in seconds by a spawn (process mode; repeatable), "
        "e.g. --pool chat/small=2 (docs/pool.md)")  # fmt: skip
    add("--sim-timing", choices=sorted(SIM_TIMINGS), default="",
        help="local ECS's lifecycle preset: 'fargate' makes a cold start take as long as on Fargate")  # fmt: skip
    ha_up.add_arguments(parser)


def login_password(data_dir: Path) -> str:
    """A generated password, kept (0600) so that it stays the same across restarts."""
    path = data_dir / PASSWORD_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(12) + "\n")
    return path.read_text().strip()


def read_api_token(args: argparse.Namespace) -> str:
    """The admin token from --api-token-file or the environment ('' = none); ValueError says what is wrong."""
    if args.api_token is not None:
        raise ValueError(
            "--api-token is no longer accepted: a token on the command line is visible to every local "
            f"user through `ps`. Set {TOKEN_ENV}, or put it in a file only you can read and pass --api-token-file"
        )
    token = os.environ.get(TOKEN_ENV, "")
    if args.api_token_file is not None:
        path: Path = args.api_token_file
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except OSError as error:
            raise ValueError(f"--api-token-file: {error}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"--api-token-file {path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the API token must be at least {MIN_TOKEN_LENGTH} characters (JupyterHub refuses shorter)")
    return token


def pool_config(flags: list[str], mode: str) -> dict[str, dict[str, int]]:
    """`--pool SERVICE/SIZE=N` flags as c.CalliopePool.pools, checked as the hub will check them."""
    pools: dict[str, dict[str, int]] = {}
    for flag in flags:
        name, equals, count = flag.partition("=")
        if not equals or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--pool {flag}: write SERVICE/SIZE=N with N a whole number >= 1, e.g. chat/small=2")
        if name in pools:
            raise ValueError(f"--pool {name} is given twice")
        pools[name] = {"min_idle": int(count), "max": int(count)}
    if pools and mode != "process":
        raise ValueError("--pool needs --mode process: a sim task runs no launcher to claim")
    try:
        check_against_catalog(parse_pools(pools), load_catalog(None), local=True)
    except PoolConfigError as error:
        raise ValueError(re.sub(r"c\.CalliopePool\.pools\['([^']*)'\]", r"--pool \1", str(error))) from None
    return pools


def _bad_arguments(args: argparse.Namespace) -> str:
    """What is wrong with the flags, before anything starts ('' when nothing is)."""
    if args.port == args.ecs_port:
        return "--port and --ecs-port must differ"
    if args.ha and (args.pool or args.sim_timing):
        return "--pool and --sim-timing are not supported with --ha (its stack is fixed: docs/ha.md)"
    try:
        read_api_token(args)
        pool_config(args.pool, args.mode)
    except ValueError as error:
        return str(error)
    return ""


def busy_message(busy: list[BusyPort], ports: StackPorts) -> str:
    """Each busy port, who holds it, and how to get past it."""
    flags = {ports.public: "--port", ports.ecs: "--ecs-port"}
    lines = []
    for port in busy:
        flag = flags.get(port.port)
        remedy = f"stop it, or pick another port with {flag} N" if flag else "it was free a moment ago: run up again"
        lines.append(f"{port}: {remedy}")
    return "nothing was started.\n" + "\n".join(lines)


def _spec(args: argparse.Namespace, ports: StackPorts, data: Path, token: str) -> StackSpec:
    pools = pool_config(args.pool, args.mode)
    extra = [f"c.CalliopePool.pools = {pools!r}"] if pools else []
    return StackSpec(
        hub=HubSettings(user_password=login_password(data), extra=extra),
        ecs=LocalEcsSpec(mode=args.mode, sim_timing=args.sim_timing),
        ports=ports,
        workdir=data,
        events=args.events,
        api_token=token,
        api_service=ADMIN_SERVICE,
    )


def close_local_ecs_to_tasks(data_dir: Path) -> None:
    """Let only the hub call local ECS: every task (every user's JupyterLab) can reach its port.

    Local ECS refuses any call not signed with this key ID (docs/local-ecs.md), so code in Alice's server
    cannot register a task definition naming Bob's secret and run it. The key is kept 0600 in the data
    dir and travels by environment, never argv: this process's ECS client, the hub's (a child) and local
    ECS (a child) inherit it, while local ECS builds each task's environment clean.
    """
    path = data_dir / ACCESS_KEY_FILE
    if not path.exists():
        write_private(path, f"CALLIOPE{secrets.token_hex(8).upper()}\n")
    key = path.read_text().strip()
    os.environ.update({ACCESS_KEY_ENV: key, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "calliope-local"})


async def _serve(args: argparse.Namespace, ports: StackPorts, token: str, console: Console) -> None:
    data = private_dir(args.data_dir.resolve())
    close_local_ecs_to_tasks(data)
    stack = LocalStack(_spec(args, ports, data, token))
    try:
        with console.status("starting local ECS, then JupyterHub (the first start takes a few seconds)"):
            await stack.start()
        console.print(_banner(stack, args, data, bool(token)))
        await _until_signalled()
    finally:
        with console.status("stopping"):
            await stack.close()
    console.print("stopped: no process left behind")


def _banner(stack: LocalStack, args: argparse.Namespace, data: Path, token: bool) -> Panel:
    settings = stack.settings
    lines = [
        f"[bold]Calliope Hub[/] is up at [link={stack.url}]{stack.url}[/link]",
        f"log in as any user name (e.g. [bold]alice[/]) with the password [bold]{settings.user_password}[/]",
        f"local ECS ({args.mode} mode, {args.sim_timing or 'default'} timing): {stack.ecs_url}, "
        + ("task events pushed to the hub" if settings.events_secret else "no events (--no-events): polling"),
        f"logs: {stack.hub_workdir / 'jupyterhub.log'} and {data / 'local-ecs.log'}",
    ]
    if args.pool:
        lines.append(f"warm pools: {', '.join(args.pool)} (docs/pool.md)")
    if token:
        lines.append(f"admin API token: registered for the service '{ADMIN_SERVICE}'")
    lines.append("Ctrl-C stops everything")
    return Panel("\n".join(lines), expand=False)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run(args: argparse.Namespace) -> int:
    console = Console()
    problem = _bad_arguments(args)
    if problem:
        console.print(f"[red]calliope-hub up:[/] {problem}")
        return 2
    if args.ha or args.kill:
        return ha_up.run(args, login_password(private_dir(args.data_dir.resolve())))
    ports = StackPorts.pick(public=args.port, ecs=args.ecs_port)
    busy = ports.busy()
    if busy:
        console.print(f"[red]calliope-hub up:[/] {busy_message(busy, ports)}")
        return 1
    try:
        asyncio.run(_serve(args, ports, read_api_token(args), console))
    except PortsBusy as taken:  # taken between the check and the start
        console.print(f"[red]calliope-hub up:[/] {busy_message(taken.busy, ports)}")
        return 1
    except (OSError, RuntimeError) as e:
        console.print(f"[red]calliope-hub up failed:[/] {e}")
        return 1
    return 0
