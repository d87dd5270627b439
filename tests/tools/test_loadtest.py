"""`calliope-hub loadtest` against real JupyterHubs: a throttled one and a stock one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.loadtest import LoadtestConfig, run_loadtest
from calliope_hub.tools.local.hubproc import HubProcess
from calliope_hub.tools.stats import Percentiles


@contextlib.contextmanager
def children_inherit_sigint(ignored: bool) -> Iterator[None]:
    """The SIGINT disposition a child starts with. From a terminal it is the default; from a script's
    background job (bash ignores SIGINT there, and so CI runners often do) it is ignored, and exec keeps
    it ignored, whatever this test process was started with. exec resets a *handled* signal to default."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    interrupt_when=None,
    signum: int = signal.SIGINT,
    sigint_ignored: bool = False,
):
    """Run `calliope-hub loadtest` as a user would; optionally send `signum` once a condition holds."""
    with children_inherit_sigint(sigint_ignored):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "calliope_hub.cli",
            "loadtest",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
    try:
        # Generous bounds: on a loaded 2-core CI machine the CLI alone takes seconds to import and start.
        if interrupt_when is not None:
            async with asyncio.timeout(60):
                while not await interrupt_when():
                    await asyncio.sleep(0.2)
            process.send_signal(signum)
        async with asyncio.timeout(120):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, stdout.decode(), stderr.decode()


async def server_states(hub: HubProcess, token: str, names: list[str]) -> dict[str, tuple[object, object]]:
    """(pending, server URL) of each user's default server, as the hub reports it."""
    async with HubApi(hub.url, token) as api:
        models = [(await api.request("GET", f"/users/{name}")).json() for name in names]
    return {model["name"]: (model["pending"], model["server"]) for model in models}


def assert_percentiles(sample: dict, count: int) -> None:
    assert sample["count"] == count
    assert 0 < sample["p50"] <= sample["p95"] <= sample["p99"] <= sample["max"]


async def test_every_spawn_completes_through_429s_and_stop_stops_them(instant_hub, api_token, tmp_path):
    out = tmp_path / "report.json"
    code, stdout, stderr = await run_cli(
        "--hub-url",
        instant_hub.url,
        "--token",
        api_token,
        "--users",
        "8",
        "--concurrency",
        "8",
        "--prefix",
        "throttled-",
        "--stop",
        "--json",
        str(out),
    )
    assert code == 0, stderr
    document = json.loads(out.read_text())
    report = document["report"]
    assert (report["requested"], report["ready"], report["failed"]) == (8, 8, 0)
    assert report["http_429"] > 0, "concurrent_spawn_limit=2 with 8 in flight must throttle"
    assert_percentiles(report["ready_s"], 8)
    # Every POST is timed, the throttled ones too.
    assert report["request_s"]["count"] == 8 + report["http_429"]
    assert report["per_second"] > 0
    assert report["stop"]["stopped"] == 8
    assert "token" not in document["config"] and api_token not in out.read_text()
    assert "time to ready" in stdout and "HTTP 429" in stdout
    names = [f"throttled-{i}" for i in range(8)]
    assert set((await server_states(instant_hub, api_token, names)).values()) == {(None, None)}


async def test_overall_timeout_counts_unfinished_spawns_and_stop_cancels_them(instant_hub, api_token):
    config = LoadtestConfig(
        hub_url=instant_hub.url, token=api_token, users=2, prefix="slow-t", timeout=2, stop=True, stop_timeout=20
    )
    report = await run_loadtest(config)
    assert (report.requested, report.ready, report.failed) == (2, 0, {"overall timeout": 2})
    assert report.stop is not None and report.stop.stopped == 2
    assert not report.ok
    assert set((await server_states(instant_hub, api_token, ["slow-t0", "slow-t1"])).values()) == {(None, None)}


@pytest.mark.parametrize(
    ("signum", "sigint_ignored", "code"),
    [(signal.SIGINT, False, 130), (signal.SIGTERM, True, 143)],
    ids=["ctrl-c-from-a-terminal", "sigterm-with-sigint-ignored"],
)
async def test_a_signal_stops_the_run_and_prints_partial_results(
    instant_hub, api_token, tmp_path, signum, sigint_ignored, code
):
    """Ctrl-C, and SIGTERM even where SIGINT was ignored (a run started in the background), each stop
    the run at once with the partial report, though both spawns are still pending for a minute."""
    out = tmp_path / "partial.json"
    prefix = f"slow-{signal.Signals(signum).name.lower()}-"
    names = [f"{prefix}0", f"{prefix}1"]

    async def spawns_pending() -> bool:
        try:
            return all(
                pending == "spawn" for pending, _ in (await server_states(instant_hub, api_token, names)).values()
            )
        except (KeyError, ValueError):
            return False  # users not created yet

    returned, stdout, stderr = await run_cli(
        "--hub-url",
        instant_hub.url,
        "--token",
        api_token,
        "--users",
        "2",
        "--prefix",
        prefix,
        "--json",
        str(out),
        interrupt_when=spawns_pending,
        signum=signum,
        sigint_ignored=sigint_ignored,
    )
    assert returned == code, stdout + stderr
    assert "interrupted" in stdout
    report = json.loads(out.read_text())["report"]
    assert report["interrupted"] and report["unfinished"] == 2 and report["ready"] == 0
    async with HubApi(instant_hub.url, api_token) as api:  # leave no pending spawn behind
        for name in names:
            await api.request("DELETE", f"/users/{name}/server")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hub-url", "http://127.0.0.1:9", "--users", "1"], "token is required"),
        (["--hub-url", "ftp://x", "--token", "t", "--users", "1"], "http(s) URL"),
        (["--hub-url", "http://127.0.0.1:9", "--token", "t", "--users", "0"], "at least 1"),
    ],
)
async def test_bad_input_is_a_clear_error(args, message):
    env = {"CALLIOPE_HUB_API_TOKEN": "", "JUPYTERHUB_API_TOKEN": ""}
    code, _, stderr = await run_cli(*args, env=env)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr


async def test_a_rejected_token_is_a_clear_error(instant_hub):
    code, _, stderr = await run_cli("--hub-url", instant_hub.url, "--token", "wrong", "--users", "1")
    assert code == 2
    assert "rejected the token" in stderr and "Traceback" not in stderr


def singleuser_processes(hub: HubProcess) -> list[psutil.Process]:
    assert hub.pid is not None
    children = psutil.Process(hub.pid).children(recursive=True)
    return [p for p in children if "jupyterhub-singleuser" in " ".join(p.cmdline())]


async def test_loadtest_works_against_a_stock_hub(stock_hub, api_token):
    config = LoadtestConfig(hub_url=stock_hub.url, token=api_token, users=3, concurrency=3, stop=True, timeout=60)
    seen: list[str] = []
    report = await run_loadtest(config, progress=lambda update: seen.append(update.phase))
    assert (report.ready, report.failed, report.unfinished) == (3, {}, 0), report.failure_examples
    assert report.ready_s.count == 3 and report.ready_s.max is not None
    assert report.stop is not None and report.stop.stopped == 3
    assert report.ok
    assert {"users", "spawn", "stop"} <= set(seen)
    assert singleuser_processes(stock_hub) == []


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_percentiles_are_ordered_observed_values(values):
    summary = Percentiles.of(values)
    assert summary.count == len(values)
    assert summary.p50 <= summary.p95 <= summary.p99 <= summary.max == max(values)
    assert {summary.p50, summary.p95, summary.p99} <= set(values)


def test_percentiles_by_nearest_rank():
    summary = Percentiles.of(float(v) for v in range(1, 101))
    assert (summary.p50, summary.p95, summary.p99, summary.max) == (50.0, 95.0, 99.0, 100.0)
    assert Percentiles.of([]).to_json() == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
