"""`calliope-hub loadtest`: spawn N servers on any JupyterHub and time each one to ready.

It speaks only the hub's public REST API (6.x), so the same numbers can be taken from a
stock hub and from ours. Unlike a plain loop of POSTs it honours 429 Retry-After, backs
off on 5xx and connection errors, follows each server's progress event stream to time it
from request to *ready*, and reports percentiles rather than a mean. Every loop is
bounded in count and time, and an interrupted run still reports what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from calliope_hub.tools.hubapi import HubApi, HubApiGaveUp, backoff
from calliope_hub.tools.interrupt import exit_status, run_interruptible
from calliope_hub.tools.stats import Percentiles

USER_BATCH = 100
#: How often a dropped progress stream is reopened before the spawn counts as failed.
PROGRESS_REOPENS = 3
STOP_POLL_S = 0.5


class LoadtestError(RuntimeError):
    """The hub cannot be load-tested as asked (unreachable, bad token, missing scope)."""


@dataclass(frozen=True)
class LoadtestConfig:
    """What to spawn, how hard to push, and how long anything may take."""

    hub_url: str
    token: str
    users: int
    prefix: str = "loadtest-"
    concurrency: int = 10
    rate: float | None = None
    service: str | None = None
    size: str | None = None
    timeout: float = 900.0
    ready_timeout: float = 300.0
    stop: bool = False
    stop_timeout: float = 300.0
    max_retries: int = 30
    request_timeout: float = 120.0

    def __post_init__(self) -> None:
        checks = {
            "--hub-url must be an http(s) URL": self.hub_url.startswith(("http://", "https://")),
            "a token is required (--token or CALLIOPE_HUB_API_TOKEN)": bool(self.token),
            "--users must be at least 1": self.users >= 1,
            "--prefix must be non-empty lowercase without '/'": bool(self.prefix)
            and self.prefix == self.prefix.lower()
            and "/" not in self.prefix,
            "--concurrency must be at least 1": self.concurrency >= 1,
            "--rate must be positive": self.rate is None or self.rate > 0,
            "timeouts must be positive": min(self.timeout, self.ready_timeout, self.stop_timeout) > 0,
            "--max-retries must be 0 or more": self.max_retries >= 0,
        }
        problems = [message for message, ok in checks.items() if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    def usernames(self) -> list[str]:
        width = len(str(self.users - 1))
        return [f"{self.prefix}{i:0{width}d}" for i in range(self.users)]

    def spawn_body(self) -> dict[str, Any]:
        """The 6.x POST body; user_options only carries what was asked for."""
        options = {key: value for key, value in (("service", self.service), ("size", self.size)) if value}
        return {"user_options": options} if options else {}


@dataclass(frozen=True)
class Progress:
    """A snapshot for live displays: which phase, how far, and the 429s so far."""

    phase: str
    done: int
    total: int
    ready: int
    failed: int
    http_429: int


ProgressCallback = Callable[[Progress], None]


@dataclass
class StopSummary:
    requested: int
    stopped: int
    failed: dict[str, int]
    duration_s: float


@dataclass
class LoadtestReport:
    """What a run measured. ``to_json`` gives the shape the bench embeds."""

    requested: int
    ready: int
    failed: dict[str, int]
    unfinished: int
    request_s: Percentiles
    ready_s: Percentiles
    per_second: float
    http_429: int
    retries: int
    duration_s: float
    interrupted: bool = False
    failure_examples: dict[str, str] = field(default_factory=dict)
    stop: StopSummary | None = None

    @property
    def ok(self) -> bool:
        stopped_all = self.stop is None or self.stop.stopped == self.stop.requested
        return self.ready == self.requested and not self.interrupted and stopped_all

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (not a string), so callers can embed it in their own records."""
        return {
            "requested": self.requested,
            "ready": self.ready,
            "failed": sum(self.failed.values()),
            "failed_by_reason": dict(self.failed),
            "unfinished": self.unfinished,
            "request_s": self.request_s.to_json(),
            "ready_s": self.ready_s.to_json(),
            "per_second": round(self.per_second, 3),
            "http_429": self.http_429,
            "retries": self.retries,
            "duration_s": round(self.duration_s, 3),
            "interrupted": self.interrupted,
            "failure_examples": dict(self.failure_examples),
            "stop": None if self.stop is None else vars(self.stop),
        }


class Loadtest:
    """One run. ``report()`` may be called at any time, e.g. after Ctrl-C."""

    def __init__(self, config: LoadtestConfig, progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.progress = progress
        self._request_s: list[float] = []
        self._ready_s: list[float] = []
        self._failed: Counter[str] = Counter()
        self._examples: dict[str, str] = {}
        self._requested = 0
        self._api: HubApi | None = None
        self._spawn_started: float | None = None
        self._spawn_ended: float | None = None
        self._last_ready: float | None = None
        self._stop_summary: StopSummary | None = None
        self._next_slot = 0.0

    async def execute(self) -> LoadtestReport:
        names = self.config.usernames()
        async with HubApi(
            self.config.hub_url,
            self.config.token,
            max_connections=self.config.concurrency + 4,
            request_timeout=self.config.request_timeout,
            max_retries=self.config.max_retries,
        ) as self._api:
            try:
                async with asyncio.timeout(self.config.timeout):
                    await self._check_token()
                    await self._create_users(names)
                    await self._spawn_all(names)
            except TimeoutError:
                self._requested = len(names)
                self._failed["overall timeout"] += self._unfinished()
            self._spawn_ended = time.monotonic()
            if self.config.stop:
                await self._stop_all(names)
        return self.report()

    @property
    def api(self) -> HubApi:
        if self._api is None:
            raise RuntimeError("requests are only made inside execute()")
        return self._api

    def _unfinished(self) -> int:
        return max(0, self._requested - len(self._ready_s) - self._failed.total())

    def report(self, interrupted: bool = False) -> LoadtestReport:
        """What was measured so far; servers neither ready nor failed count as unfinished."""
        ready = len(self._ready_s)
        started, last = self._spawn_started, self._last_ready
        spawn_s = (last - started) if started is not None and last is not None else 0.0
        ended = self._spawn_ended or time.monotonic()
        return LoadtestReport(
            requested=self._requested,
            ready=ready,
            failed=dict(self._failed),
            unfinished=self._unfinished(),
            request_s=Percentiles.of(self._request_s),
            ready_s=Percentiles.of(self._ready_s),
            per_second=ready / spawn_s if spawn_s > 0 else 0.0,
            http_429=self._api.http_429 if self._api else 0,
            retries=self._api.retries if self._api else 0,
            duration_s=(ended - started) if started is not None else 0.0,
            interrupted=interrupted,
            failure_examples=dict(self._examples),
            stop=self._stop_summary,
        )

    def _notify(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            http_429 = self._api.http_429 if self._api else 0
            self.progress(Progress(phase, done, total, len(self._ready_s), self._failed.total(), http_429))

    def _fail(self, reason: str, detail: str) -> None:
        self._failed[reason] += 1
        self._examples.setdefault(reason, detail[:300])

    async def _check_token(self) -> None:
        try:
            answer = await self.api.request("GET", "/user")
        except HubApiGaveUp as error:
            raise LoadtestError(f"cannot reach the hub API at {self.api.api_url}: {error}") from None
        if answer.status in (401, 403):
            raise LoadtestError(f"the hub rejected the token (HTTP {answer.status})")

    async def _create_users(self, names: list[str]) -> None:
        """POST /users in batches; 409 means every name in the batch exists already."""
        for start in range(0, len(names), USER_BATCH):
            batch = names[start : start + USER_BATCH]
            try:
                answer = await self.api.request("POST", "/users", {"usernames": batch})
            except HubApiGaveUp as error:
                raise LoadtestError(f"creating users failed: {error}") from None
            if answer.status == 403:
                raise LoadtestError("the token may not create users: it needs the admin:users scope")
            if answer.status not in (201, 409):
                raise LoadtestError(f"creating users failed: HTTP {answer.status}: {answer.text}")
            self._notify("users", start + len(batch), len(names))

    async def _pace(self) -> None:
        """--rate: spawn requests start at most `rate` per second."""
        if self.config.rate is None:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1 / self.config.rate
        await asyncio.sleep(slot - now)

    async def _spawn_all(self, names: list[str]) -> None:
        limit = asyncio.Semaphore(self.config.concurrency)
        self._spawn_started = time.monotonic()
        self._requested = len(names)
        done = 0

        async def spawn(name: str) -> None:
            nonlocal done
            async with limit:
                await self._pace()
                await self._spawn(name)
            done += 1
            self._notify("spawn", done, len(names))

        await asyncio.gather(*(spawn(name) for name in names))

    async def _spawn(self, name: str) -> None:
        """Request one server and time it, from the first request until the hub says ready."""
        started = time.monotonic()
        body = self.config.spawn_body()
        try:
            answer = await self.api.request("POST", f"/users/{name}/server", body, self._request_s)
        except HubApiGaveUp as error:
            self._fail(error.reason, str(error))
            return
        if answer.status == 202:
            try:
                async with asyncio.timeout(self.config.ready_timeout):
                    failure = await self._await_ready(name)
            except TimeoutError:
                failure = ("ready timeout", f"{name} not ready in {self.config.ready_timeout:g}s")
            if failure:
                self._fail(*failure)
                return
        elif answer.status != 201:
            self._fail(f"http {answer.status}", answer.text)
            return
        self._last_ready = time.monotonic()
        self._ready_s.append(self._last_ready - started)

    async def _await_ready(self, name: str) -> tuple[str, str] | None:
        """Follow the progress event stream; None when ready, else (reason, detail)."""
        for attempt in range(PROGRESS_REOPENS):
            stream = self.api.events(f"/users/{name}/server/progress")
            try:
                # aclosing: leaving early must release the connection now, not at GC time.
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        if event.get("ready"):
                            return None
                        if event.get("failed"):
                            return "spawn failed", str(event.get("message", ""))
            except HubApiGaveUp as error:
                return error.reason, str(error)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(backoff(attempt))
        return "progress stream ended", f"{name}: stream closed {PROGRESS_REOPENS} times"

    async def _stop_all(self, names: list[str]) -> None:
        """DELETE every server we asked for and wait until the hub says it is gone."""
        limit = asyncio.Semaphore(self.config.concurrency)
        began = time.monotonic()
        failed: Counter[str] = Counter()
        stopped = 0

        async def stop(name: str) -> None:
            nonlocal stopped
            async with limit:
                reason = await self._stop_server(name)
            if reason:
                failed[reason] += 1
            else:
                stopped += 1
            self._notify("stop", stopped + failed.total(), len(names))

        try:
            async with asyncio.timeout(self.config.stop_timeout):
                await asyncio.gather(*(stop(name) for name in names))
        except TimeoutError:
            failed["stop timeout"] += len(names) - stopped - failed.total()
        self._stop_summary = StopSummary(len(names), stopped, dict(failed), time.monotonic() - began)

    async def _stop_server(self, name: str) -> str | None:
        """None once the server is gone, else the failure bucket."""
        try:
            answer = await self.api.request("DELETE", f"/users/{name}/server")
            if answer.status == 204:
                return None
            if answer.status != 202:
                return f"http {answer.status}"
            for _ in range(int(self.config.stop_timeout / STOP_POLL_S) + 1):
                await asyncio.sleep(STOP_POLL_S)
                answer = await self.api.request("GET", f"/users/{name}")
                if answer.status != 200:
                    return f"http {answer.status}"
                model = answer.json()
                if model.get("pending") is None and not model.get("server"):
                    return None
        except HubApiGaveUp as error:
            return error.reason
        return "stop timeout"


async def run_loadtest(config: LoadtestConfig, progress: ProgressCallback | None = None) -> LoadtestReport:
    """The library entry point the bench calls."""
    return await Loadtest(config, progress).execute()


# --- the command -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-url", required=True, help="the hub's public URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--token",
        default="",
        help="API token with admin:users and admin:servers (default: $CALLIOPE_HUB_API_TOKEN, "
        "then $JUPYTERHUB_API_TOKEN, which keep it out of `ps`)",
    )
    parser.add_argument("--users", type=int, required=True, help="how many users (one server each)")
    parser.add_argument("--prefix", default="loadtest-", help="user name prefix (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=10, help="spawns in flight, request to ready")
    parser.add_argument("--rate", type=float, help="start at most this many spawns per second")
    parser.add_argument("--service", help="user_options service (e.g. lab, chat, waiide)")
    parser.add_argument("--size", help="user_options size")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on setup + spawning, seconds")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="bound per server, seconds")
    parser.add_argument("--stop", action="store_true", help="stop every server afterwards")
    parser.add_argument("--stop-timeout", type=float, default=300.0, help="bound on --stop, seconds")
    parser.add_argument("--max-retries", type=int, default=30, help="retries per request (429/5xx/errors)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")


def _env_token() -> str:
    """The token from the environment (read here, not as the flag's default, so --help never shows it)."""
    return os.environ.get("CALLIOPE_HUB_API_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")


def _config_from_args(args: argparse.Namespace) -> LoadtestConfig:
    """Flags map one to one onto config fields (--ready-timeout -> ready_timeout)."""
    given = {f.name: getattr(args, f.name) for f in fields(LoadtestConfig) if hasattr(args, f.name)}
    given["token"] = args.token or _env_token()
    return LoadtestConfig(**given)


def run(args: argparse.Namespace) -> int:
    """0 when every server became ready (and stopped, with --stop); 1 otherwise; 130 on Ctrl-C, 143 on SIGTERM,
    each after printing (and writing) what was measured so far."""
    console = Console(stderr=True)
    try:
        config = _config_from_args(args)
    except ValueError as error:
        console.print(f"[red]loadtest: {error}[/red]")
        return 2
    loadtest = Loadtest(config)
    try:
        with _live_progress(console) as on_progress:
            loadtest.progress = on_progress
            report = run_interruptible(loadtest.execute())
        code = 0 if report.ok else 1
    except LoadtestError as error:
        console.print(f"[red]loadtest: {error}[/red]")
        return 2
    except KeyboardInterrupt as stop:
        report, code = loadtest.report(interrupted=True), exit_status(stop)
    Console().print(render_report(report))
    if args.json:
        write_json(args.json, {"config": _public_config(config), "report": report.to_json()})
    return code


@contextlib.contextmanager
def _live_progress(console: Console) -> Iterator[ProgressCallback]:
    """A rich bar per phase; the spawn bar also shows ready, failed and 429s so far."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with RichProgress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def on_progress(update: Progress) -> None:
            if update.phase not in tasks:
                tasks[update.phase] = bars.add_task(update.phase, total=update.total)
            description = update.phase
            if update.phase == "spawn":
                description = f"spawn  ready {update.ready}  failed {update.failed}  429s {update.http_429}"
            bars.update(tasks[update.phase], completed=update.done, description=description)

        yield on_progress


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_report(report: LoadtestReport) -> Table:
    """The final table: counts, then latency percentiles in seconds."""
    title = "loadtest (interrupted: partial results)" if report.interrupted else "loadtest"
    table = Table(title=title, show_header=True)
    table.add_column("measure")
    for column in ("value", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="right")
    failed = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.failed.items())) or "0"
    rows = [
        ("requested", report.requested),
        ("ready", report.ready),
        ("failed", failed),
        ("unfinished", report.unfinished),
        ("spawns per second", f"{report.per_second:.2f}"),
        ("HTTP 429", report.http_429),
        ("retries", report.retries),
        ("duration s", f"{report.duration_s:.2f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    for name, sample in (("request latency s", report.request_s), ("time to ready s", report.ready_s)):
        quantiles = (sample.p50, sample.p95, sample.p99, sample.max)
        table.add_row(name, f"n={sample.count}", *(_seconds(q) for q in quantiles))
    if report.stop is not None:
        stop_failed = sum(report.stop.failed.values())
        table.add_row("stopped", f"{report.stop.stopped}/{report.stop.requested} (failed {stop_failed})")
    return table


def _public_config(config: LoadtestConfig) -> dict[str, Any]:
    """The run's settings without the token, so a JSON report is safe to publish."""
    settings = asdict(config)
    settings.pop("token")
    return settings


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write whole or not at all: a temp file in the same dir, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
        json.dump(document, out, indent=2)
    os.replace(out.name, path)
