"""The Chat/WAIIDE stand-ins as local ECS runs them: a real process, real HTTP, a real SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from html.parser import HTMLParser

import aiohttp
import pytest
from aiohttp import web
from jupyterhub import __version__ as jupyterhub_version

from calliope_hub.standins.server import StandInConfig

START_TIMEOUT = 20


class ActivityReceiver:
    """A stand-in for the hub's POST /hub/api/users/<name>/activity."""

    def __init__(self) -> None:
        self.posts: asyncio.Queue = asyncio.Queue()
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        await self.posts.put((request.headers.get("Authorization"), await request.json()))
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[ActivityReceiver]:
    activity = ActivityReceiver()
    app = web.Application()
    app.router.add_post("/hub/api/users/alice/activity", activity.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    activity.url = f"http://{host}:{port}/hub/api/users/alice/activity"
    try:
        yield activity
    finally:
        await runner.cleanup()


async def start_stand_in(service: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    """`python -m calliope_hub.standins <service>` on a free port; returns it and its base URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calliope_hub.standins",
        service,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert b"listening on " in line, (line, await process.stderr.read())
    return process, line.decode().split("listening on ")[1].strip()


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


async def test_chat_stand_in_serves_reports_activity_and_exits_on_sigterm(receiver: ActivityReceiver) -> None:
    env = {
        "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0/user/alice/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
        "JUPYTERHUB_ACTIVITY_URL": receiver.url,
        "JUPYTERHUB_ACTIVITY_INTERVAL": "1",
        "JUPYTERHUB_API_TOKEN": "token-for-alice",
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_BASE_URL": "/jhub/",
        "CALLIOPE_SERVICE": "chat",
        "CALLIOPE_SIZE": "medium",
    }
    process, url = await start_stand_in("chat", env)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/user/alice/")
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as page:
                assert page.status == 200
                assert page.headers["X-JupyterHub-Version"] == jupyterhub_version
                html = await page.text()
            assert "<title>Calliope Chat — local stand-in</title>" in html
            assert "This is not Calliope Chat" in html and "alice" in html
            assert '<dd class="col-sm-9" id="calliope-size">medium</dd>' in html
            await assert_hub_look_served_locally(session, url, html, hub_home="/jhub/hub/home")
            async with session.get(url + "api/status") as status:
                assert status.status == 200
                assert (await status.json())["service"] == "chat"
            async with session.get(url.rstrip("/"), allow_redirects=False) as bare:
                assert (bare.status, bare.headers["Location"]) == (302, "/user/alice/")

        authorization, body = await asyncio.wait_for(receiver.posts.get(), 10)
        assert authorization == "token token-for-alice"
        assert set(body) == {"servers", "last_activity"}
        assert body["servers"] == {"": {"last_activity": body["last_activity"]}}
        assert body["last_activity"].endswith("Z")
        datetime.fromisoformat(body["last_activity"].removesuffix("Z"))
    finally:
        assert await stop(process) == 0


class Links(HTMLParser):
    """Every href and src of a page, and the href of the element with id back-to-hub."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.back = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [value for key, value in attrs if key in ("href", "src") and value]
        if found.get("id") == "back-to-hub":
            self.back = found.get("href") or ""


async def assert_hub_look_served_locally(session: aiohttp.ClientSession, url: str, html: str, *, hub_home: str) -> None:
    """The page links back to the hub's home, and each file it loads is the stand-in's own, and there."""
    links = Links()
    links.feed(html)
    assert links.back == hub_home
    assert all(link.startswith("/") and not link.startswith("//") for link in links.urls), links.urls
    prefix = url.split("/", 3)[3]
    loaded = [link for link in links.urls if link.startswith("/" + prefix + "static/")]
    assert {link.rsplit("/", 1)[1] for link in loaded} == {"style.min.css", "favicon.ico", "jupyterhub-80.png"}
    origin = url.split("/user/")[0]
    for link in loaded:
        async with session.get(origin + link) as answer:
            assert answer.status == 200, link
            assert len(await answer.read()) > 100
            if link.endswith(".css"):
                assert answer.content_type == "text/css"


async def test_waiide_stand_in_is_labelled_as_such() -> None:
    env = {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0/user/bob/ide/", "JUPYTERHUB_SERVICE_PREFIX": "/user/bob/ide/"}
    process, url = await start_stand_in("waiide", env)
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as page:
            assert page.status == 200
            html = await page.text()
            assert "Calliope WAIIDE — local stand-in" in html
            # Without JUPYTERHUB_BASE_URL, the hub is at the root, as JupyterHub's default.
            await assert_hub_look_served_locally(session, url, html, hub_home="/hub/home")
    finally:
        assert await stop(process) == 0


async def test_bad_service_and_busy_port_exit_with_a_message() -> None:
    unknown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calliope_hub.standins", "lab", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(unknown.communicate(), START_TIMEOUT)
    assert unknown.returncode == 2 and b"invalid choice: 'lab'" in stderr

    first, url = await start_stand_in("chat", {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:0/"})
    try:
        taken = url.split("/")[2]
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "calliope_hub.standins",
            "chat",
            env={**os.environ, "JUPYTERHUB_SERVICE_URL": f"http://{taken}/"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(second.communicate(), START_TIMEOUT)
        assert second.returncode == 1 and f"cannot listen on {taken}".encode() in stderr
    finally:
        assert await stop(first) == 0


def test_config_defaults_follow_jupyterhub_singleuser() -> None:
    config = StandInConfig.from_environ("chat", {"JUPYTERHUB_SERVICE_URL": "http://:8000/user/x"})
    assert (config.host, config.port, config.prefix, config.activity_interval) == ("0.0.0.0", 8000, "/", 300)
    assert (config.hub_home, config.size) == ("/hub/home", "")
    behind = StandInConfig.from_environ("chat", {"JUPYTERHUB_BASE_URL": "/jhub", "CALLIOPE_SIZE": "small"})
    assert (behind.hub_home, behind.size) == ("/jhub/hub/home", "small")
    bare = StandInConfig.from_environ("waiide", {"JUPYTERHUB_SERVICE_PREFIX": "/user/y"})
    assert (bare.host, bare.port, bare.prefix, bare.title) == (
        "0.0.0.0",
        8888,
        "/user/y/",
        "Calliope WAIIDE — local stand-in",
    )
