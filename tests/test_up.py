"""`calliope-hub up` as a newcomer runs it: it comes up, serves a spawn, and SIGTERM
takes everything down with it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubproc import free_port

TOKEN = "up-test-admin-token"


def up_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "calliope_hub.cli", "up", *args]


def test_bad_flags_are_refused_before_anything_starts(tmp_path):
    done = subprocess.run(
        up_command("--api-token", "short", "--data-dir", str(tmp_path)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "at least 8 characters" in done.stdout
    assert not (tmp_path / "password").exists(), "nothing was written"


async def wait_for_hub(api: HubApi, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if (await api.request("GET", "/")).status == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError("calliope-hub up did not answer")


async def test_up_serves_a_spawn_and_sigterm_leaves_nothing(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        up_command("--mode", "sim", "--port", str(port), "--ecs-port", str(free_port()),
                   "--api-token", TOKEN, "--data-dir", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    api = HubApi(f"http://127.0.0.1:{port}", TOKEN, max_retries=2, request_timeout=30)
    try:
        await wait_for_hub(api, process, 120)
        await api.request("POST", "/users/newcomer")
        answer = await api.request(
            "POST", "/users/newcomer/server", {"user_options": {"service": "chat", "size": "small"}}
        )
        assert answer.status in (201, 202), answer.text
        deadline = time.monotonic() + 60
        while not (await api.request("GET", "/users/newcomer")).json()["servers"][""]["ready"]:
            assert time.monotonic() < deadline, "the sim server never became ready"
            await asyncio.sleep(0.5)
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 3, "local ECS, JupyterHub and the proxy run under up"
    finally:
        await api.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)

    assert process.returncode == 0, output
    assert "password" in output and f"http://127.0.0.1:{port}" in output
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left behind: {alive}"
