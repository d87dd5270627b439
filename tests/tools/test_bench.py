"""`calliope-hub bench` end to end: both modes on the real stack, at 50 servers.

The figures themselves are only sanity-checked here (speed claims come from real runs in
docs/benchmarks/); what is proven is that every phase runs on a real local ECS and a real
JupyterHub, the JSON has the shape other tools read, and nothing outlives the bench.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from calliope_hub.cli import main

SERVERS = 50
POLL_S = 5
KILLS = 3


MARK = "CALLIOPE_BENCH_TEST_RUN"


def _marked_processes(mark: str) -> list[int]:
    """Every process that inherited our marker: the bench and all it started, however deep."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(MARK) == mark:
                found.append(process.info["pid"])
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    mark = uuid.uuid4().hex
    command = [
        sys.executable, "-m", "calliope_hub.cli", "bench",
        "--servers", str(SERVERS), "--mode", "batched,naive",
        "--window", "12", "--idle-window", "4", "--poll-interval", str(POLL_S), "--detect", str(KILLS),
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"),
    ]  # fmt: skip
    env = {**os.environ, MARK: mark}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert _marked_processes(mark) == [], "a hub, proxy or local ECS outlived the bench"
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), out / "bench.png", finished


def _run(document: dict, mode: str) -> dict:
    (run,) = [run for run in document["runs"] if run["mode"] == mode]
    return run


def test_json_has_the_issue_shape(bench_run: tuple[dict, Path, subprocess.CompletedProcess]) -> None:
    document, _, _ = bench_run
    assert {"cpus", "memory_gib", "jupyterhub"} <= set(document["machine"])
    assert sorted(run["mode"] for run in document["runs"]) == ["batched", "naive"]
    for run in document["runs"]:
        assert run["servers"] == SERVERS and run["poll_interval_s"] == POLL_S
        assert run["error"] is None
        assert {"per_second", "ready_s", "http_429", "failed"} <= set(run["spawn"])
        assert {"p50", "p95", "p99", "max"} <= set(run["spawn"]["ready_s"])
        steady = run["steady"]
        assert {"window_s", "ecs_calls_per_min", "throttled_per_min", "hub_cpu_pct", "hub_rss_mib"} <= set(steady)
        assert {"p50", "p99"} <= set(steady["api_ms"])
        assert {"p50", "max"} <= set(run["detect_s"])
        assert {"seconds", "lost"} <= set(run["restart"])
        assert isinstance(run["shutdown_block_s"], float)


def test_every_phase_measured_sane_values(bench_run: tuple[dict, Path, subprocess.CompletedProcess]) -> None:
    document, _, _ = bench_run
    for run in document["runs"]:
        spawn, steady = run["spawn"], run["steady"]
        assert spawn["ready"] == SERVERS and spawn["failed"] == 0 and spawn["per_second"] > 0
        assert 0 < spawn["ready_s"]["p50"] <= spawn["ready_s"]["max"]
        assert 0 < steady["hub_cpu_pct"] < 200 and steady["hub_rss_mib"] > 50
        assert 0 <= steady["hub_cpu_idle_pct"] < 200
        assert 0 < steady["api_ms"]["p50"] <= steady["api_ms"]["p99"]
        assert steady["tasks"]["RUNNING"] == SERVERS
        # Killed tasks are noticed within a poll interval or two, by both patterns.
        assert run["detect_s"]["max"] is not None and run["detect_s"]["max"] < 3 * POLL_S
        assert run["restart"]["lost"] == 0 and run["restart"]["seconds"] > 0
        assert run["restart"]["ecs_running_after"] == SERVERS - KILLS
        assert run["shutdown"]["cleanup_off"]["ecs_running_after"] == SERVERS - KILLS
        assert run["shutdown"]["cleanup_on"]["ecs_running_after"] == 0


def test_batched_reads_less_than_naive(bench_run: tuple[dict, Path, subprocess.CompletedProcess]) -> None:
    document, _, _ = bench_run
    batched = _run(document, "batched")["steady"]
    naive = _run(document, "naive")["steady"]
    assert batched["ecs_calls_per_min"]["DescribeTasks"] < naive["ecs_calls_per_min"]["DescribeTasks"]
    assert batched["describe_per_poll"] <= math.ceil(SERVERS / 100) + 1  # +1: a sweep at the window's edge
    assert naive["describe_per_poll"] >= SERVERS * 0.8


def test_table_and_plot(bench_run: tuple[dict, Path, subprocess.CompletedProcess]) -> None:
    document, png, finished = bench_run
    assert "batched N=50" in finished.stdout and "naive N=50" in finished.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(document["summary"]) == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--servers", "0"], "--servers needs positive counts"),
        (["--mode", "batched,stock"], "--mode must be among"),
        (["--servers", "5", "--detect", "6"], "--detect must be between 1"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", *flags, "--json", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
