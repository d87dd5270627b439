"""HubProcess: a real JupyterHub that answers, restarts, and leaves no process behind."""

from __future__ import annotations

import os
import stat
from typing import Any

import psutil
import pytest
from aiohttp import web

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local import hubproc
from calliope_hub.tools.local.hubproc import PROXY_NAME, PROXY_PID_FILE, HubProcess, HubStartError, ProxyNotInstalled
from calliope_hub.tools.local.procs import free_port

pytestmark = pytest.mark.usefixtures("proxy_installed")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hub_and_proxy_pids(hub: HubProcess) -> tuple[int, int]:
    """The hub and the configurable-http-proxy it started, found by process tree."""
    assert hub.pid is not None
    children = psutil.Process(hub.pid).children(recursive=True)
    (proxy,) = [p for p in children if PROXY_NAME in " ".join(p.cmdline())]
    return hub.pid, proxy.pid


async def api(hub: HubProcess, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with HubApi(hub.url, token, max_retries=0) as client:
        answer = await client.request(method, path, body)
    return answer.status, answer.json() if answer.text else None


async def test_kill_restart_and_stop_leave_no_process_nor_dir(base_hub_config, api_token):
    async with HubProcess(base_hub_config) as hub:
        status, me = await api(hub, api_token, "GET", "/user")
        assert (status, me["kind"], me["name"]) == (200, "service", "loadtest")
        assert (await api(hub, api_token, "POST", "/users", {"usernames": ["survivor"]}))[0] == 201
        crashed = hub_and_proxy_pids(hub)
        assert int((hub.workdir / PROXY_PID_FILE).read_text()) == crashed[1]

        hub.kill()  # a crash: the orphaned proxy must go too
        assert all(gone(pid) for pid in crashed)
        assert hub.pid is None and not (hub.workdir / PROXY_PID_FILE).exists()

        await hub.start()  # a restart: same dir, database and port
        assert (await api(hub, api_token, "GET", "/users/survivor"))[0] == 200
        restarted = hub_and_proxy_pids(hub)
    assert all(gone(pid) for pid in restarted)
    assert hub.pid is None and not hub.workdir.exists()


async def test_a_broken_config_fails_with_the_log_tail_and_leaves_nothing(base_hub_config):
    hub = HubProcess(base_hub_config + "raise RuntimeError('broken on purpose')\n")
    try:
        with pytest.raises(HubStartError, match="broken on purpose") as failure:
            await hub.start(timeout=30)
        assert "exited with code" in str(failure.value)
        assert hub.pid is None
        leftovers = [
            p for p in psutil.process_iter(["cmdline"]) if str(hub.config_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert leftovers == []
    finally:
        hub.cleanup()


def test_a_missing_proxy_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(hubproc, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProxyNotInstalled, match="make up"):
        hubproc.proxy_command()
    with pytest.raises(ProxyNotInstalled):
        HubProcess("")


async def test_another_server_answering_on_the_port_is_not_taken_for_the_hub(base_hub_config):
    """A second hub on a busy port must fail, not report the first one's answer as its own."""
    imposter = web.Application()
    imposter.router.add_get("/hub/api", lambda request: web.json_response({"version": "imposter"}))
    runner = web.AppRunner(imposter)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", free_port())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hub = HubProcess(base_hub_config, port=port)
    try:
        with pytest.raises(HubStartError, match=f"port {port}") as failure:
            await hub.start(timeout=60)
        assert f"pid {os.getpid()}" in str(failure.value), str(failure.value)[:300]
        assert hub.pid is None
    finally:
        hub.cleanup()
        await runner.cleanup()


def test_the_config_holding_tokens_is_private(base_hub_config):
    hub = HubProcess(base_hub_config)
    try:
        assert stat.S_IMODE(hub.config_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(hub.workdir.stat().st_mode) == 0o700
    finally:
        hub.cleanup()
