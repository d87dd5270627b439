"""The fence keeper (calliope_hub.hub.fence) on a real PostgreSQL, with a stand-in hub process.

The first test is the false fence found at 1,000 servers: a hub that holds its GIL longer than
`fence_timeout` (as a long garbage collection does) kept its lock session alive all along, yet
the prover and watchdog threads it used to run could not run until the GIL came back and then
fenced it. The others keep the fence honest: a lost session kills even a hub stuck holding its
GIL, and neither the hub nor its keeper outlives the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, replace

import psutil
import psycopg2
import pytest

from calliope_hub.hub.fence import FENCED_EXIT, KeeperSettings
from calliope_hub.hub.lock import hub_lock
from tests.ha.conftest import require

DB_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
TIMEOUT = 1.0

# A stand-in hub: start the keeper, wait for the lock, then hold this process's GIL for argv[2]
# seconds in one C call (ctypes.PyDLL keeps the GIL through the call), or sleep with it released.
HUB = """
import ctypes, json, sys, time
from calliope_hub.hub.fence import ACQUIRED, FenceKeeper, KeeperSettings
from calliope_hub.hub.ha import exit_fenced
keeper = FenceKeeper(KeeperSettings(**json.loads(sys.argv[1])))
keeper.start()
while not (report := keeper.next_report()).startswith(ACQUIRED):
    assert report, "the keeper exited"
    print("standing by", flush=True)
keeper.tie(exit_fenced)
print("leading", keeper.pid, report, flush=True)
if sys.argv[3] == "gil":
    ctypes.PyDLL("libc.so.6").sleep(int(float(sys.argv[2])))
else:
    time.sleep(float(sys.argv[2]))
print("survived", flush=True)
"""


@pytest.fixture
def settings() -> KeeperSettings:
    try:
        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        require(False, f"no PostgreSQL at 127.0.0.1:5432: {e}")
    name = uuid.uuid4().hex[:12]
    return KeeperSettings(
        db_url=DB_URL,
        lock_name=f"fence-test-{name}",
        application_name=f"calliope-hub/test/{name}",
        poll_interval=0.1,
        check_interval=0.2,
        timeout=TIMEOUT,
    )


def start_hub(settings: KeeperSettings, seconds: float, how: str) -> subprocess.Popen[str]:
    """A stand-in hub in a session of its own (so its keeper can be killed with it)."""
    return subprocess.Popen(
        [sys.executable, "-c", HUB, json.dumps(asdict(settings)), str(seconds), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def leading(hub: subprocess.Popen[str], within: float = 30) -> tuple[int, str]:
    """Once the hub leads: its keeper's pid and what the keeper reported ('acquired [handed-over]')."""
    assert hub.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = hub.stdout.readline()
        if line.startswith("leading"):
            _, pid, report = line.strip().split(" ", 2)
            return int(pid), report
        assert line, f"the hub exited ({hub.wait()}) before it led"
    hub.kill()
    raise AssertionError(f"the hub did not lead within {within} s")


def standing_by(hub: subprocess.Popen[str], within: float = 30) -> None:
    """Once the hub's keeper has seen another hold the lock."""
    assert hub.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = hub.stdout.readline()
        if line.startswith("standing by"):
            return
        assert line, f"the hub exited ({hub.wait()}) before it stood by"
    raise AssertionError(f"the hub did not stand by within {within} s")


def lead(settings: KeeperSettings, seconds: float, how: str) -> tuple[subprocess.Popen[str], int]:
    hub = start_hub(settings, seconds, how)
    keeper, _ = leading(hub)
    return hub, keeper


def other(settings: KeeperSettings) -> KeeperSettings:
    """The same lock, another instance's session name."""
    return replace(settings, application_name=f"{settings.application_name}-{uuid.uuid4().hex[:6]}")


def output(hub: subprocess.Popen[str], within: float) -> tuple[int, str]:
    try:
        out, _ = hub.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        hub.kill()
        out, _ = hub.communicate()
        raise AssertionError(f"the hub still ran after {within} s:\n{out}") from None
    return hub.returncode, out


def lock_free_within(settings: KeeperSettings, seconds: float) -> bool:
    lock = hub_lock(settings.db_url, settings.lock_name, "fence-test-probe")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if lock.try_acquire_blocking():
                return True
            time.sleep(0.05)
        return False
    finally:
        lock._close()


def test_a_hub_holding_its_gil_past_the_fence_timeout_keeps_the_lock(settings: KeeperSettings) -> None:
    hub, _ = lead(settings, 3 * TIMEOUT, "gil")
    status, out = output(hub, 20)
    assert (status, out.strip().splitlines()[-1]) == (0, "survived"), out
    assert "fenced" not in out


def test_a_lost_session_kills_the_hub_even_while_it_holds_its_gil(settings: KeeperSettings) -> None:
    hub, _ = lead(settings, 30, "gil")
    with contextlib.closing(psycopg2.connect(DB_URL.replace("+psycopg2", ""))) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (settings.application_name,),
        )
        assert cursor.fetchall() == [(True,)], "the keeper's one session"
    cut_at = time.monotonic()
    status, out = output(hub, 10)
    assert status == -signal.SIGKILL, out
    assert time.monotonic() - cut_at <= TIMEOUT + 1, out
    assert "fenced (the leader lock's database session ended)" in out
    assert "survived" not in out


def test_a_hub_killed_alone_takes_its_keeper_and_the_lock_with_it(settings: KeeperSettings) -> None:
    hub, keeper = lead(settings, 30, "sleep")
    hub.send_signal(signal.SIGKILL)  # the hub only: the keeper must notice by itself
    output(hub, 10)
    assert lock_free_within(settings, 3)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(keeper).wait(3)  # psutil.TimeoutExpired while it still runs


def test_a_hub_whose_keeper_died_exits_fenced(settings: KeeperSettings) -> None:
    hub, keeper = lead(settings, 30, "sleep")
    psutil.Process(keeper).kill()
    status, out = output(hub, 10)
    assert status == FENCED_EXIT, out
    assert "the fence keeper exited" in out


def test_a_standby_serves_at_once_after_a_hub_that_exited_and_waits_after_a_lost_container(
    settings: KeeperSettings,
) -> None:
    first, _ = lead(settings, 60, "sleep")
    second = start_hub(other(settings), 60, "sleep")
    standing_by(second)  # it saw the first hold the lock
    first.send_signal(signal.SIGKILL)  # the hub alone: its keeper sees it exit and says so
    output(first, 10)
    _, report = leading(second, 10)
    assert report == "acquired handed-over"

    third = start_hub(other(settings), 60, "sleep")
    standing_by(third)
    os.killpg(second.pid, signal.SIGKILL)  # hub and keeper at once, as a lost container: nobody says so
    output(second, 10)
    _, report = leading(third, 10)
    assert report == "acquired", "a standby may skip the fence wait only for a hub known to have exited"
    third.kill()
    output(third, 10)
