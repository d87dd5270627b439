"""`calliope-hub up` as a newcomer runs it: it comes up, serves a spawn, and SIGTERM
takes everything down with it; a busy port or a bad flag stops it before anything starts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.procs import free_port
from calliope_hub.tools.up import TOKEN_ENV

TOKEN = "up-test-admin-token"
MARK = "CALLIOPE_UP_TEST_RUN"


def up_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "calliope_hub.cli", "up", *args]


def run_up(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        up_command(*args), capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def marked_processes(mark: str) -> list[psutil.Process]:
    """Every live process that inherited our marker: whatever up started, however deep."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port this test process listens on, as a second `up` would find it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_token_on_the_command_line_is_refused_before_anything_starts(tmp_path):
    done = run_up("--api-token", "long-enough-token", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "--api-token is no longer accepted" in done.stdout and TOKEN_ENV in done.stdout
    assert not (tmp_path / "password").exists(), "nothing was written"


def test_a_short_token_is_refused_before_anything_starts(tmp_path):
    done = run_up("--data-dir", str(tmp_path), env={TOKEN_ENV: "short"})
    assert done.returncode == 2
    assert "at least 8 characters" in done.stdout
    assert not (tmp_path / "password").exists(), "nothing was written"


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    done = run_up("--api-token-file", str(token_file), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert "readable by others" in done.stdout and "chmod 600" in done.stdout


@pytest.mark.parametrize("which", ["--port", "--ecs-port"])
def test_a_busy_port_stops_up_at_once_naming_the_port_and_starting_nothing(tmp_path, held_port, which):
    other = "--ecs-port" if which == "--port" else "--port"
    mark = uuid.uuid4().hex
    began = time.monotonic()
    done = run_up(which, str(held_port), other, str(free_port()), "--data-dir", str(tmp_path / "data"),
                  env={MARK: mark})  # fmt: skip
    elapsed = time.monotonic() - began

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {held_port}" in done.stdout, done.stdout
    assert f"pid {os.getpid()}" in done.stdout, "names what holds the port"
    assert f"pick another port with {which} N" in done.stdout
    assert "nothing was started" in done.stdout and "is up at" not in done.stdout
    assert elapsed < 30, "at once: no start was attempted"
    assert not (tmp_path / "data").exists(), "no data dir, password or config was written"
    assert marked_processes(mark) == [], "no local ECS, hub or proxy was started"


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


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def secrets_in_argv(*secrets: str) -> list[str]:
    """Command lines on this machine that carry one of `secrets` (what `ps` shows everyone)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or ())
        if any(secret in line for secret in secrets):
            found.append(line)
    return found


async def test_up_serves_a_spawn_keeps_secrets_private_and_sigterm_leaves_nothing(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    process = subprocess.Popen(
        up_command("--mode", "sim", "--port", str(port), "--ecs-port", str(free_port()), "--data-dir", str(data)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200", TOKEN_ENV: TOKEN},
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

        config = data / "hub" / "jupyterhub_config.py"
        password = (data / "password").read_text().strip()
        assert private(data) and private(data / "hub"), "0700 dirs"
        assert private(config) and private(data / "password"), "0600 files"
        events_secret = next(
            line.split("'")[-2]
            for line in config.read_text().splitlines()
            if "CalliopeEvents" in line and "secret" in line
        )
        assert secrets_in_argv(TOKEN, password, events_secret) == [], "no secret on a command line"
    finally:
        await api.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)

    assert process.returncode == 0, output
    assert "password" in output and f"http://127.0.0.1:{port}" in output
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left behind: {alive}"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--pool", "lab/small=1"], "--pool lab/small: lab keeps each user's files on EFS"),
        (["--pool", "chat/small"], "write SERVICE/SIZE=N"),
        (["--pool", "chat/small=0"], "write SERVICE/SIZE=N"),
        (["--pool", "chat/small=1", "--pool", "chat/small=2"], "given twice"),
        (["--pool", "chat/huge=1"], "offers no size 'huge'"),
        (["--pool", "chat/small=1", "--mode", "sim"], "--pool needs --mode process"),
        (
            ["--ha", "--pool", "chat/small=1", "--mode", "process"],
            "--pool and --sim-timing are not supported with --ha",
        ),
        (["--ha", "--sim-timing", "fargate"], "--pool and --sim-timing are not supported with --ha"),
    ],
)
def test_a_pool_that_cannot_be_kept_is_refused_before_anything_starts(tmp_path, flags, words):
    done = run_up(*flags, "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert words in " ".join(done.stdout.split()), done.stdout
    assert not (tmp_path / "data").exists(), "nothing was created"


def test_an_unknown_timing_preset_is_refused(tmp_path):
    done = run_up("--sim-timing", "glacial", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2 and "fargate" in done.stderr
