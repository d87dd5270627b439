"""One stand-in server for every non-public service: it behaves enough like jupyterhub-singleuser.

What the hub relies on, and the stand-in does: it binds where JUPYTERHUB_SERVICE_URL says,
answers under JUPYTERHUB_SERVICE_PREFIX (the hub's HTTP wait and the proxy route need that),
reports activity to JUPYTERHUB_ACTIVITY_URL as singleuser does (so the idle culler sees it),
and exits 0 on SIGTERM, which is how ECS StopTask ends a container.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

import aiohttp
from aiohttp import web
from jupyterhub import __version__ as jupyterhub_version

from .page import HUB_STATIC, render_page

log = logging.getLogger("calliope_hub.standins")

#: service name -> what the page calls it.
STAND_INS = {"chat": "Calliope Chat", "waiide": "Calliope WAIIDE"}
DEFAULT_ACTIVITY_INTERVAL = 300
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTIVITY_POST_TIMEOUT = 10


@dataclass(frozen=True)
class StandInConfig:
    """The stand-in's settings, read from the environment the spawner gives every server."""

    service: str
    host: str
    port: int
    prefix: str
    user: str
    server_name: str
    #: the catalog size it was started at (CALLIOPE_SIZE from the RunTask request), if any
    size: str
    #: the hub's home page, JUPYTERHUB_BASE_URL + "hub/home": the page's way back
    hub_home: str
    activity_url: str
    activity_interval: float
    api_token: str

    @property
    def title(self) -> str:
        return f"{STAND_INS[self.service]} — local stand-in"

    @classmethod
    def from_environ(cls, service: str, environ: Mapping[str, str]) -> StandInConfig:
        bind = urlparse(environ.get("JUPYTERHUB_SERVICE_URL", ""))
        prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"
        interval = environ.get("JUPYTERHUB_ACTIVITY_INTERVAL", "")
        return cls(
            service=service,
            host=bind.hostname or "0.0.0.0",
            port=8888 if bind.port is None else bind.port,
            prefix=prefix if prefix.endswith("/") else prefix + "/",
            user=environ.get("JUPYTERHUB_USER", ""),
            server_name=environ.get("JUPYTERHUB_SERVER_NAME", ""),
            size=environ.get("CALLIOPE_SIZE", ""),
            hub_home=(environ.get("JUPYTERHUB_BASE_URL") or "/").rstrip("/") + "/hub/home",
            activity_url=environ.get("JUPYTERHUB_ACTIVITY_URL", ""),
            activity_interval=float(interval) if interval else DEFAULT_ACTIVITY_INTERVAL,
            api_token=environ.get("JUPYTERHUB_API_TOKEN", ""),
        )


class Activity:
    """When a person last used the stand-in, and what the hub was last told."""

    def __init__(self) -> None:
        self.started = self.last = datetime.now(UTC)
        self.reported: datetime | None = None

    def touch(self) -> None:
        self.last = datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """UTC with a trailing Z, as jupyterhub.utils.isoformat writes activity timestamps."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def make_app(config: StandInConfig, activity: Activity) -> web.Application:
    """The page, <prefix>api/status and the hub's static files, all under the service prefix like a real server."""

    async def page(request: web.Request) -> web.Response:
        activity.touch()
        body = render_page(
            title=config.title,
            name=STAND_INS[config.service],
            service=config.service,
            size=config.size,
            user=config.user,
            server=config.server_name,
            static=config.prefix + "static/",
            hub_home=config.hub_home,
        )
        return web.Response(text=body, content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": config.service,
                "stand_in": True,
                "started": isoformat(activity.started),
                "last_activity": isoformat(activity.last),
            }
        )

    async def to_prefix(request: web.Request) -> web.Response:
        raise web.HTTPFound(config.prefix)

    @web.middleware
    async def version_header(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        # The hub compares this with its own version, as it does for jupyterhub-singleuser.
        response.headers["X-JupyterHub-Version"] = jupyterhub_version
        return response

    app = web.Application(middlewares=[version_header])
    app.router.add_get(config.prefix, page)
    app.router.add_get(config.prefix + "api/status", status)
    app.router.add_static(config.prefix + "static/", HUB_STATIC)
    if config.prefix != "/":
        app.router.add_get(config.prefix.rstrip("/"), to_prefix)
    return app


async def report_activity(config: StandInConfig, activity: Activity, session: aiohttp.ClientSession) -> None:
    """Post last_activity every interval when there was activity since the last post."""
    while True:
        if activity.reported is None or activity.last > activity.reported:
            moment, stamp = activity.last, isoformat(activity.last)
            body = {"servers": {config.server_name: {"last_activity": stamp}}, "last_activity": stamp}
            try:
                async with session.post(
                    config.activity_url,
                    json=body,
                    headers={"Authorization": f"token {config.api_token}"},
                    timeout=aiohttp.ClientTimeout(total=ACTIVITY_POST_TIMEOUT),
                ) as response:
                    if response.status < 400:
                        activity.reported = moment
                    else:
                        log.warning("hub answered %s to activity %s", response.status, stamp)
            except (aiohttp.ClientError, TimeoutError) as error:
                log.warning("could not report activity to the hub: %s", error)
        await asyncio.sleep(config.activity_interval)


async def serve(config: StandInConfig) -> None:
    """Run until SIGTERM or SIGINT, then close the listener and the activity loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    activity = Activity()
    runner = web.AppRunner(make_app(config, activity), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    # One line on stdout so whoever started the stand-in (e.g. with port 0) knows where it is.
    print(f"{config.title} listening on http://{host}:{port}{config.prefix}", flush=True)
    async with aiohttp.ClientSession() as session:
        reporter = asyncio.create_task(report_activity(config, activity, session)) if config.activity_url else None
        await stop.wait()
        if reporter:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calliope_hub.standins",
        description="Run a local stand-in for a Calliope service whose image is not public.",
    )
    parser.add_argument("service", choices=sorted(STAND_INS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        config = StandInConfig.from_environ(args.service, os.environ)
    except ValueError as error:
        print(f"stand-in: bad environment: {error}", file=sys.stderr)
        return 2
    # A StopTask that lands before the loop's handlers exist still ends with 0, as after.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        asyncio.run(serve(config))
    except OSError as error:
        print(f"stand-in: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    return 0
