"""ProcessRunner against real local processes: startup, health gating, stop, kill, close, no leftovers."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from calliope_hub.localecs.process import (
    ESSENTIAL_EXITED,
    HEALTH_CHECK_FAILED,
    SHUT_DOWN,
    STOPPED,
    ProcessRunner,
    bind_task_address,
)
from calliope_hub.localecs.runner import ContainerSpec, LaunchSpec

PY = sys.executable
HELLO = str(Path(__file__).with_name("hello_task.py"))


class RecordingHooks:
    def __init__(self, on_running=None) -> None:
        self.calls: list = []
        self.seen_when_running = None
        self.is_running = asyncio.Event()
        self.has_exited = asyncio.Event()
        self._on_running = on_running

    def running(self) -> None:
        if self._on_running is not None:
            self.seen_when_running = self._on_running()
        self.calls.append("running")
        self.is_running.set()

    def exited(self, exit_codes, reason, failed_to_start) -> None:
        self.calls.append(("exited", exit_codes, reason, failed_to_start))
        self.has_exited.set()

    @property
    def exit(self) -> tuple:
        [call] = [call for call in self.calls if call[0] == "exited"]
        return call[1:]


def task_address() -> tuple[str, int]:
    """A task's own loopback address (never 127.0.0.1) and a port free on it."""
    ip = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return ip, probe.getsockname()[1]


def server_spec(ip: str, port: int, on_term: str = "exit0", stop_timeout: float = 30.0, **container) -> LaunchSpec:
    environment = {"ON_TERM": on_term, **container.pop("environment", {})}
    server = ContainerSpec(
        name="app",
        image="local/hello",
        argv=[PY, HELLO, "0.0.0.0", str(port)],
        environment=environment,
        port=port,
        **container,
    )
    return LaunchSpec(task_id=f"t{port}", ip=ip, containers=[server], stop_timeout=stop_timeout)


def get(ip: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as answer:
        return answer.read().decode()


async def wait_for_answer(ip: str, port: int) -> str:
    for _ in range(100):
        try:
            return await asyncio.to_thread(get, ip, port)
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answered on {ip}:{port}")


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture
async def runner():
    before = children()
    runner = ProcessRunner()
    yield runner
    await runner.close()
    assert children() - before == set(), "a process outlived the runner"
    assert not runner.log_dir.exists()


async def test_serves_on_the_task_address_and_stops_on_sigterm(runner):
    ip, port = task_address()
    hooks = RecordingHooks()
    await runner.start(server_spec(ip, port), hooks)
    assert hooks.calls == [], "hooks are never called from inside start()"
    await asyncio.wait_for(hooks.is_running.wait(), 10)
    assert await wait_for_answer(ip, port) == f"hello from {ip}"
    [pid] = children()

    await runner.stop(f"t{port}", timeout=30)

    assert hooks.exit == ({"app": 0}, STOPPED, False), "SIGTERM handler ran, so no SIGKILL was needed"
    assert not psutil.pid_exists(pid), "the process was reaped, not left as a zombie"
    with pytest.raises(OSError):
        get(ip, port)


async def test_sigterm_ignored_means_sigkill_after_the_timeout(runner):
    ip, port = task_address()
    hooks = RecordingHooks()
    await runner.start(server_spec(ip, port, on_term="ignore"), hooks)
    await wait_for_answer(ip, port)

    await runner.stop(f"t{port}", timeout=0.5)

    assert hooks.exit == ({"app": 137}, STOPPED, False)
    assert children() == set()


async def test_default_sigterm_death_reports_143_and_stop_is_idempotent(runner):
    ip, port = task_address()
    hooks = RecordingHooks()
    await runner.start(server_spec(ip, port, on_term="default"), hooks)
    await wait_for_answer(ip, port)
    await asyncio.gather(runner.stop(f"t{port}", 30), runner.stop(f"t{port}", 30))
    await runner.stop(f"t{port}", 30)
    assert hooks.exit == ({"app": 143}, STOPPED, False), "exited is reported exactly once"


async def test_the_whole_process_tree_is_stopped(runner):
    ip, port = task_address()
    grandparent = f"import subprocess, sys; subprocess.run([sys.executable, {HELLO!r}, '0.0.0.0', '{port}'])"
    tree = ContainerSpec("app", "local/tree", [PY, "-c", grandparent], {"ON_TERM": "ignore"})
    spec = LaunchSpec("tree", ip, [tree], stop_timeout=0.5)
    hooks = RecordingHooks()
    await runner.start(spec, hooks)
    await wait_for_answer(ip, port)
    assert len(children()) == 2

    await runner.stop("tree", timeout=0.5)

    assert hooks.exit[0] == {"app": 143}
    for _ in range(50):  # the grandchild is reparented to init, which reaps it
        if not children():
            break
        await asyncio.sleep(0.02)
    assert children() == set()


async def test_own_exit_reports_the_exit_code(runner):
    hooks = RecordingHooks()
    spec = LaunchSpec("exits", "127.0.3.3", [ContainerSpec("job", "local/job", [PY, "-c", "raise SystemExit(3)"], {})])
    await runner.start(spec, hooks)
    await asyncio.wait_for(hooks.has_exited.wait(), 10)
    assert hooks.exit == ({"job": 3}, ESSENTIAL_EXITED, False)


async def test_kill_reports_the_given_exit_code(runner):
    ip, port = task_address()
    hooks = RecordingHooks()
    await runner.start(server_spec(ip, port, on_term="ignore"), hooks)
    await wait_for_answer(ip, port)
    await runner.kill(f"t{port}", 42)
    assert hooks.exit == ({"app": 42}, ESSENTIAL_EXITED, False)
    assert children() == set()


async def test_non_essential_container_exit_keeps_the_task(runner):
    ip, port = task_address()
    spec = server_spec(ip, port)
    sidecar = ContainerSpec("init", "local/init", [PY, "-c", "pass"], {}, essential=False)
    spec = LaunchSpec(spec.task_id, ip, [*spec.containers, sidecar])
    hooks = RecordingHooks()
    await runner.start(spec, hooks)
    await wait_for_answer(ip, port)
    await asyncio.sleep(0.3)
    assert not hooks.has_exited.is_set()
    await runner.stop(spec.task_id, 30)
    assert hooks.exit == ({"app": 0, "init": 0}, STOPPED, False)


async def test_environment_is_the_containers_with_the_task_address(runner, monkeypatch):
    monkeypatch.setenv("LOCALECS_HOST_ONLY", "secret")
    script = (
        "import os, sys; print(sys.argv[1], os.environ['BIND'], os.environ['LOCALECS_TASK_IP'],"
        " 'LOCALECS_HOST_ONLY' in os.environ, 'PATH' in os.environ)"
    )
    container = ContainerSpec("job", "local/env", [PY, "-c", script, "--ip=0.0.0.0"], {"BIND": "0.0.0.0:8888"})
    hooks = RecordingHooks()
    await runner.start(LaunchSpec("env", "127.0.9.9", [container]), hooks)
    await asyncio.wait_for(hooks.has_exited.wait(), 10)
    printed = runner.log_path("env").read_text().split()
    assert printed == ["--ip=127.0.9.9", "127.0.9.9:8888", "127.0.9.9", "False", "True"]


async def test_health_check_gates_running(runner):
    ip, port = task_address()
    check = {
        "command": [
            "CMD",
            PY,
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)",
            f"http://0.0.0.0:{port}/",
        ],
        "interval": 30,
        "timeout": 5,
        "retries": 3,
        "startPeriod": 20,
    }

    def answers_already() -> bool:
        try:
            socket.create_connection((ip, port), timeout=1).close()
        except OSError:
            return False
        return True

    hooks = RecordingHooks(on_running=answers_already)
    await runner.start(server_spec(ip, port, environment={"DELAY_BIND": "1.5"}, health_check=check), hooks)
    await asyncio.wait_for(hooks.is_running.wait(), 15)
    assert hooks.calls == ["running"]
    assert hooks.seen_when_running is True, "running() only once the health check passed"


async def test_failures_in_start_period_do_not_count(runner, tmp_path):
    marker = tmp_path / "ready"
    script = f"import pathlib, time; time.sleep(1.2); pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    check = {"command": ["CMD-SHELL", f"test -e {marker}"], "interval": 0.2, "retries": 1, "startPeriod": 10}
    container = ContainerSpec("app", "local/slow", [PY, "-c", script], {}, health_check=check)
    hooks = RecordingHooks()
    await runner.start(LaunchSpec("slow", "127.0.4.4", [container], stop_timeout=1), hooks)
    await asyncio.wait_for(hooks.is_running.wait(), 10)
    assert not hooks.has_exited.is_set()


async def test_failing_health_check_stops_the_task(runner):
    check = {"command": ["CMD", "false"], "interval": 0.1, "timeout": 1, "retries": 2, "startPeriod": 0}
    container = ContainerSpec("app", "local/sick", [PY, "-c", "import time; time.sleep(60)"], {}, health_check=check)
    hooks = RecordingHooks()
    await runner.start(LaunchSpec("sick", "127.0.5.5", [container], stop_timeout=5), hooks)
    await asyncio.wait_for(hooks.has_exited.wait(), 10)
    assert hooks.calls == [("exited", {"app": 143}, HEALTH_CHECK_FAILED, False)]


async def test_no_command_fails_to_start(runner):
    hooks = RecordingHooks()
    await runner.start(LaunchSpec("empty", "127.0.6.6", [ContainerSpec("app", "jupyter/base", [], {})]), hooks)
    await asyncio.wait_for(hooks.has_exited.wait(), 5)
    reason = "CannotStartContainerError: no command for image jupyter/base"
    assert hooks.calls == [("exited", {"app": None}, reason, True)]


async def test_missing_executable_fails_to_start_and_leaves_nothing(runner):
    ip, port = task_address()
    good = server_spec(ip, port).containers[0]
    bad = ContainerSpec("sidecar", "local/missing", ["/nonexistent/program"], {})
    hooks = RecordingHooks()
    await runner.start(LaunchSpec("missing", ip, [good, bad]), hooks)
    await asyncio.wait_for(hooks.has_exited.wait(), 5)
    _codes, reason, failed_to_start = hooks.exit
    assert failed_to_start and reason.startswith("CannotStartContainerError:") and "/nonexistent/program" in reason
    assert children() == set()


async def test_close_kills_every_task_and_reports_it():
    runner = ProcessRunner()
    hooks = [RecordingHooks() for _ in range(3)]
    for task_hooks in hooks:
        ip, port = task_address()
        await runner.start(server_spec(ip, port, on_term="ignore"), task_hooks)
    await asyncio.gather(*(task_hooks.is_running.wait() for task_hooks in hooks))
    assert len(children()) == 3
    await runner.close()
    assert children() == set()
    assert [task_hooks.exit for task_hooks in hooks] == [({"app": 137}, SHUT_DOWN, False)] * 3


def test_only_whole_all_interfaces_addresses_are_replaced():
    assert bind_task_address("--ip=0.0.0.0 --port=0", "127.0.0.7") == "--ip=127.0.0.7 --port=0"
    assert bind_task_address("10.0.0.0.0 0.0.0.01 0.0.0.0:80", "127.0.0.7") == "10.0.0.0.0 0.0.0.01 127.0.0.7:80"
