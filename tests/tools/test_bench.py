"""`calliope-hub bench` end to end: the product beside its floor, production-shaped, at 50 servers.

ONE bench run (batched then floor, each on a fresh stack): a PostgreSQL database made and
dropped by the bench, configurable-http-proxy run beside the hub, every user spawning a
service with no per-user storage. The figures themselves are only sanity-checked here (speed
claims come from real runs in docs/benchmarks/); what is proven is that every phase runs on a
real local ECS, a real JupyterHub and PostgreSQL, batched status stays within its
DescribeTasks bound, the floor runs beside the product with ratios to it, the JSON has the
shape other tools read, and nothing outlives the bench. The stock pattern (naive mode) is
the same stack with NaiveECSSpawner, which tests/hub/test_baseline_in_a_hub.py runs in a hub.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text

from calliope_hub.cli import main

SERVERS = 50
#: The bench run fits in its first test's timeout (its fixture's setup), with room for a loaded machine.
RUN_TIMEOUT_S = 420
pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)
POLL_S = 5
KILLS = 3
#: No per-user storage: no EFS access point per user (the bench's --service decides what users spawn).
SERVICE = "chat/small"


MARK = "CALLIOPE_BENCH_TEST_RUN"
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _bench_databases() -> set[str]:
    engine = create_engine(POSTGRES)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'calliope_bench_%'"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


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


Run = tuple[dict, Path, str]


def _bench(out: Path, modes: list[str], *extra: str) -> Run:
    """One `calliope-hub bench` at SERVERS; on any failure or timeout it gets SIGTERM (its own
    teardown runs) before SIGKILL, so a failed test leaves no hub, proxy or database behind."""
    mark = uuid.uuid4().hex
    command = [
        sys.executable, "-m", "calliope_hub.cli", "bench",
        "--servers", str(SERVERS), "--mode", ",".join(modes), *extra,
        "--window", "8", "--idle-window", "2", "--poll-interval", str(POLL_S), "--detect", str(KILLS),
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"),
    ]  # fmt: skip
    bench = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, MARK: mark}
    )
    try:
        stdout, stderr = bench.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if bench.poll() is None:
            bench.send_signal(signal.SIGTERM)
            try:
                bench.communicate(timeout=60)
            finally:
                bench.kill()
    assert _marked_processes(mark) == [], "a hub, proxy, stub server or local ECS outlived the bench"
    assert bench.returncode == 0, stdout[-3000:] + stderr[-3000:]
    document = json.loads((out / "bench.json").read_text())
    # Each run's own database (another engineer's bench may have its own meanwhile). PostgreSQL
    # may still be ending the killed hub's sessions when the bench exits: give the drop 30 s.
    made = {run["database"] for run in document["runs"]}
    assert None not in made and len(made) == len(modes)
    deadline = time.monotonic() + 30
    while made & _bench_databases() and time.monotonic() < deadline:
        time.sleep(1)
    assert not made & _bench_databases(), "the bench left its PostgreSQL database behind"
    return document, out / "bench.png", stdout


@pytest.fixture(scope="module")
def product_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The product beside its floor, production-shaped: PostgreSQL, configurable-http-proxy beside the hub."""
    out = tmp_path_factory.mktemp("bench-product")
    return _bench(
        out,
        ["batched", "floor"],
        *("--db", "postgres", "--external-proxy", "--service", SERVICE, "--ssm-higher-throughput"),
        *("--profile", str(out / "profiles")),
    )


def _run(document: dict, mode: str) -> dict:
    (run,) = [run for run in document["runs"] if run["mode"] == mode]
    return run


def test_json_has_the_issue_shape(product_run: Run) -> None:
    document = product_run[0]
    assert {"cpus", "memory_gib", "jupyterhub"} <= set(document["machine"])
    assert sorted(run["mode"] for run in document["runs"]) == ["batched", "floor"]
    for run in document["runs"]:
        assert run["servers"] == SERVERS and run["poll_interval_s"] == POLL_S
        assert run["error"] is None
        assert run["service"] == SERVICE and run["storage"] is False
        assert {"per_second", "ready_s", "http_429", "failed"} <= set(run["spawn"])
        assert {"p50", "p95", "p99", "max"} <= set(run["spawn"]["ready_s"])
        steady = run["steady"]
        assert {"window_s", "ecs_calls_per_min", "throttled_per_min", "hub_cpu_pct", "hub_rss_mib"} <= set(steady)
        assert {"p50", "p99"} <= set(steady["api_ms"])
        if run["mode"] != "floor":
            assert {"p50", "max"} <= set(run["detect_s"])
        assert {"seconds", "lost", "api_s"} <= set(run["restart"]) and run["restart"]["hub_only"] is True
        assert isinstance(run["shutdown_block_s"], float)
    assert document["config"]["db"] == "postgres" and document["config"]["external_proxy"] is True


def test_every_phase_measured_sane_values(product_run: Run) -> None:
    run = _run(product_run[0], "batched")
    spawn, steady = run["spawn"], run["steady"]
    assert spawn["ready"] == SERVERS and spawn["failed"] == 0 and spawn["per_second"] > 0
    assert 0 < spawn["ready_s"]["p50"] <= spawn["ready_s"]["max"]
    assert 0 < steady["hub_cpu_pct"] < 200 and steady["hub_rss_mib"] > 50
    assert 0 <= steady["hub_cpu_idle_pct"] < 200
    assert 0 < steady["api_ms"]["p50"] <= steady["api_ms"]["p99"]
    assert steady["tasks"]["RUNNING"] == SERVERS
    # Killed tasks are noticed within a poll interval or two.
    assert run["detect_s"]["max"] is not None and run["detect_s"]["max"] < 3 * POLL_S
    assert run["restart"]["lost"] == 0 and run["restart"]["seconds"] > 0
    assert run["restart"]["ecs_running_after"] == SERVERS - KILLS
    assert run["shutdown"]["cleanup_off"]["ecs_running_after"] == SERVERS - KILLS
    assert run["shutdown"]["cleanup_on"]["ecs_running_after"] == 0


def test_batched_status_stays_within_its_describe_bound(product_run: Run) -> None:
    """One DescribeTasks per 100 tasks per poll, where the stock pattern makes one per server."""
    steady = _run(product_run[0], "batched")["steady"]
    assert steady["describe_per_poll_bound"] == math.ceil(SERVERS / 100)
    assert 0 < steady["describe_per_poll"] <= steady["describe_per_poll_bound"] + 1  # +1: a sweep at the edge
    assert steady["sweeps"] >= 1 and 0 < steady["describe_per_sweep"] <= steady["describe_per_poll_bound"]


def test_floor_costs_nothing_and_survives_a_restart(product_run: Run) -> None:
    """The floor makes no ECS call and runs no task, yet every server is ready before and after a kill -9."""
    floor = _run(product_run[0], "floor")
    assert floor["spawn"]["ready"] == SERVERS and floor["spawn"]["failed"] == 0
    assert floor["steady"]["ecs_calls_per_min"] == {} and floor["steady"]["tasks"].get("RUNNING", 0) == 0
    assert floor["detect_s"] is None
    assert floor["restart"]["lost"] == 0 and floor["restart"]["expected"] == SERVERS
    assert floor["shutdown"]["cleanup_on"]["servers_at_stop"] == SERVERS


def test_batched_is_reported_against_the_floor(product_run: Run) -> None:
    document, _, stdout = product_run
    groups = {group["mode"]: group for group in document["summary"]}
    batched, floor = groups["batched"], groups["floor"]
    assert "ratio_to_floor" not in floor
    ratio = batched["ratio_to_floor"]["restart s"]
    assert ratio == round(batched["figures"]["restart s"]["median"] / floor["figures"]["restart s"]["median"], 3)
    assert {"spawns/s", "hub CPU %", "API p99 ms", "restart API s"} <= set(batched["ratio_to_floor"])
    assert "batched/floor N=50" in stdout


def test_table_and_plot(product_run: Run) -> None:
    document, png, stdout = product_run
    assert "batched N=50" in stdout and "floor N=50" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(document["summary"]) == 2


def test_profiles_of_each_phase_follow_the_restarted_hub(product_run: Run) -> None:
    """--profile: a py-spy speedscope file per phase of each run, of that hub; the restart's is of
    the new hub process, found while it starts."""
    for run in product_run[0]["runs"]:
        assert set(run["profiles"]) == {"spawn", "idle", "steady", "restart"}
        for phase, written in run["profiles"].items():
            path = Path(written)
            assert path.name == f"profile-{SERVERS}-{run['mode']}-0-{phase}.speedscope.json", written
            samples = sum(len(thread["samples"]) for thread in json.loads(path.read_text())["profiles"])
            # py-spy records no idle samples: a hub at rest may leave its idle window empty
            assert samples > 0 or phase == "idle", written
        restart = json.loads(Path(run["profiles"]["restart"]).read_text())
        frames = {frame["name"] for frame in restart["shared"]["frames"]}
        assert "JupyterHub.initialize" in frames, "the restart profile missed the new hub's start"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--servers", "0"], "--servers needs positive counts"),
        (["--mode", "batched,stock"], "--mode must be among"),
        (["--servers", "5", "--detect", "6"], "--detect must be between 1"),
        (["--db", "mysql"], "--db must be among sqlite, postgres"),
        (["--sim-timing", "slow"], "--sim-timing must be among"),
        (["--concurrent-spawn-limit", "-1"], "--concurrent-spawn-limit must be 0"),
        (["--service", "jupyter/small"], "--service 'jupyter/small': unknown service"),
        (["--service", "chat/large"], "does not offer size"),
        (["--profile", __file__], "not a directory"),
        (["--pool", "chat/small"], "--pool chat/small: write SERVICE/SIZE=N"),
        (["--pool", "lab/small=3", "--service", "lab/small"], "keeps each user's files on EFS"),
        (["--pool", "chat/small=3", "--servers", "3"], "--service lab/small must be one of the pools (chat/small)"),
        (["--pool", "chat/small=3", "--service", "chat", "--servers", "2000"], "--servers with --pool is at most"),
        (["--pool", "chat/small=3", "--service", "chat", "--mode", "batched"], "among pool, no-pool with --pool"),
        (["--pool", "chat/small=3", "--service", "chat", "--arrival-window", "0"], "--arrival-window must be"),
        (["--mode", "pool"], "--mode must be among batched, floor, naive"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", *flags, "--json", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_class_start_with_a_pool_and_without(tmp_path: Path) -> None:
    """--pool: SERVERS users arrive within a few seconds, once with a pool of POOLED warm Chat servers and
    once without, in local ECS's process mode (real launchers and stand-ins). The pool's warm tasks are
    claimed and the rest start cold (the keeper refills while they arrive), counted by the hub itself."""
    pooled = 10
    document, _, stdout = _bench(
        tmp_path,
        ["pool", "no-pool"],
        *("--pool", f"{SERVICE}={pooled}", "--service", SERVICE, "--arrival-window", "5", "--db", "postgres"),
    )
    warm, cold = _run(document, "pool"), _run(document, "no-pool")
    for run in (warm, cold):
        assert run["error"] is None, run["error"]
        assert run["spawn"]["ready"] == SERVERS and run["spawn"]["failed"] == 0
        assert run["pools"] == {SERVICE: pooled} and run["arrival_window_s"] == 5
        assert set(run["load_average"]) == {"start", "end"} and run["machine"]["memory_used_gib_max"] > 0
        assert "restart" not in run, "a class start measures the spawn only"
    counts = warm["pool"]
    assert counts["claimed"] >= pooled, counts
    assert counts["claimed"] + counts["fallback-empty"] == SERVERS and counts["fallback-failed"] == 0, counts
    assert warm["fill_s"] > 0 and "pool" not in cold and "fill_s" not in cold
    assert "claimed warm" in stdout and "restart s" not in stdout, "the table shows what was measured, only"
