"""`calliope-hub plan`: the fit recovers what made the data, bad input exits 2 and writes
nothing, the JSON keeps issue 14's shape, and the alert rules name only metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jupyterhub.metrics  # noqa: F401  (registers JupyterHub's metrics, as in the hub)
import pytest
import yaml
from prometheus_client import REGISTRY

import calliope_hub.observability.metrics  # noqa: F401  (registers ours)
from calliope_hub.cli import main
from calliope_hub.ecsfacts import AWS_QUOTAS
from calliope_hub.tools.plan import calibrate
from calliope_hub.tools.plan.inputs import PlanInputs, load_prices
from calliope_hub.tools.plan.model import plan
from calliope_hub.tools.plan.report import MIN_READ_HEADROOM

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts" / "calliope-hub-rules.yml"
RULE_TESTS = ROOT / "docs" / "alerts" / "calliope-hub-rules.test.yml"

#: the coefficients the synthetic runs are made from.
TRUE = {
    "cpu_pct": {"const": 0.8, "servers": 0.001, "sweep_tasks_per_s": 0.07, "requests_per_s": 1.3},
    "rss_mib": {"const": 150.0, "servers": 0.03},
    "restart_s": {"const": 2.0, "servers": 0.012},
    "sweep_s": {"const": 0.1, "servers": 0.0008},
    "spawn_s": {"const": 0.09},
    "proxy_cpu_pct": {"const": 0.5, "requests_per_s": 0.1},
}


def synthetic_run(servers: int, poll: float, posts: int, probes: int, noise: float = 0.0) -> dict[str, Any]:
    """A bench run record whose figures follow TRUE exactly (times 1 + noise)."""
    window = 60.0
    requests = (posts + probes) / window

    def f(target: str, **x: float) -> float:
        return calibrate.predict_target(TRUE[target], {"servers": servers, **x}) * (1 + noise)

    return {
        "mode": "batched", "servers": servers, "poll_interval_s": poll, "error": None,
        "spawn": {"per_second": 1 / f("spawn_s")},
        "steady": {
            "window_s": window, "activity_posts": posts, "api_ms": {"count": probes}, "tasks": {"RUNNING": servers},
            "hub_cpu_idle_pct": f("cpu_pct", sweep_tasks_per_s=servers / poll, requests_per_s=0),
            "hub_cpu_pct": f("cpu_pct", sweep_tasks_per_s=servers / poll, requests_per_s=requests),
            "hub_rss_mib": f("rss_mib"), "sweep_s_mean": f("sweep_s"),
            "proxy_cpu_pct": f("proxy_cpu_pct", requests_per_s=requests),
        },
        "restart": {"seconds": f("restart_s"), "expected": servers},
    }  # fmt: skip


def write_bench(path: Path, runs: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"machine": {}, "runs": runs, "interrupted": False}))
    return path


@pytest.fixture
def bench_files(tmp_path: Path) -> list[Path]:
    naive = {**synthetic_run(2000, 30, 400, 200), "mode": "naive", "steady": {"hub_cpu_pct": 99.0}}
    return [
        write_bench(tmp_path / "a.json", [synthetic_run(1000, 30, 200, 210), naive, synthetic_run(3000, 60, 600, 170)]),
        write_bench(tmp_path / "b.json", [synthetic_run(2000, 10, 400, 190), synthetic_run(5000, 30, 1000, 160)]),
    ]


def test_fitting_synthetic_runs_recovers_the_coefficients(bench_files: list[Path]) -> None:
    document = calibrate.calibrate(bench_files)
    fitted = calibrate.coefficients_of(document)
    for target, coefficients in TRUE.items():
        for name, value in coefficients.items():
            assert fitted[target][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (target, name)
        assert all(abs(o["residual"]) < 1e-6 for o in document["targets"][target]["observations"])
    assert len(document["targets"]["cpu_pct"]["observations"]) == 8, "idle and loaded of the 4 batched runs only"


def test_noisy_runs_fit_close_and_show_their_residuals(tmp_path: Path) -> None:
    runs = [synthetic_run(n, p, n // 5, 200, noise) for n, p, noise in
            [(1000, 30, 0.03), (2000, 30, -0.03), (3000, 15, 0.02), (5000, 30, -0.02), (8000, 60, 0.01)]]  # fmt: skip
    document = calibrate.calibrate([write_bench(tmp_path / "n.json", runs)])
    rss = document["targets"]["rss_mib"]
    assert rss["coefficients"]["servers"] == pytest.approx(TRUE["rss_mib"]["servers"], rel=0.1)
    assert any(abs(o["residual"]) > 0.5 for o in rss["observations"]), "noise shows as residuals"


def test_a_fit_over_a_folder_skips_other_json_and_spawns_the_quotas_paced(
    bench_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--calibrate docs/benchmarks/*.json`: other results are skipped, and a spawn rate AWS's quotas set
    (a run naming its service writes a token a spawn; 0.8/s was RegisterTaskDefinition's pace) is no hub time."""
    other = tmp_path / "matrix.json"
    other.write_text('{"matrix": []}')
    tokens = {**synthetic_run(4000, 30, 800, 200), "spawn": {"per_second": 2.4}}
    registrations = {**synthetic_run(6000, 30, 1200, 200), "spawn": {"per_second": 0.8}}
    paced = tmp_path / "paced.json"
    paced.write_text(json.dumps({"config": {"service": "chat/small"}, "runs": [tokens]}))
    out = tmp_path / "c.json"
    files = [*bench_files, other, paced, write_bench(tmp_path / "old.json", [registrations])]
    assert main(["plan", "--calibrate", *map(str, files), "--output", str(out)]) == 0
    assert "skipped matrix.json: no bench runs" in capsys.readouterr().out
    document = calibrate.load_document(out)
    assert document["files"] == ["a.json", "b.json", "paced.json", "old.json"]
    assert [o["servers"] for o in document["targets"]["spawn_s"]["observations"]] == [1000, 3000, 2000, 5000]
    assert calibrate.coefficients_of(document)["spawn_s"]["const"] == pytest.approx(TRUE["spawn_s"]["const"])
    assert {o["servers"] for o in document["targets"]["restart_s"]["observations"]} >= {4000, 6000}
    assert main(["plan", "--calibrate", str(other), "--output", str(tmp_path / "none.json")]) == 2
    assert "no bench JSON among the calibration files" in capsys.readouterr().err


def test_calibrate_leaves_out_the_held_out_n_and_writes_a_loadable_file(
    bench_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "coefficients.json"
    assert main(["plan", "--calibrate", *map(str, bench_files), "--exclude-servers", "5000", "--output", str(out)]) == 0
    document = calibrate.load_document(out)
    assert document["excluded_servers"] == [5000]
    assert all(o["servers"] != 5000 for t in document["targets"].values() for o in t["observations"])


def test_the_plan_json_has_the_documented_shape(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--servers", "3000", "--burst", "300", "--events", "--storage", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["servers"] == 3000
    assert {"vcpu", "memory_gib", "cpu_pct_idle", "cpu_pct_loaded", "rss_mib"} <= set(result["hub"])
    calls = {"DescribeTasks", "ListTasks", "RunTask", "StopTask", "PutParameter", "DeleteParameters",
             "RegisterTaskDefinition", "CreateAccessPoint"}  # fmt: skip
    assert set(result["ecs_calls_per_min"]) == calls
    assert set(result["quota_headroom"]) == {"read", "modify", "fargate_launch", "task_definitions", "ssm_put",
                                             "ssm_delete", "efs_create", "efs_access_points"}  # fmt: skip
    assert {"spawns_per_s", "paced_by", "ssm_higher_throughput", "spawn_limit", "steps_s"} <= set(result["burst"])
    for key in ("restart_s", "failover_s", "burst_ready_s", "detect_s"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    cost = result["cost_per_month"]
    assert {"hub", "database", "efs", "nat", "user_servers", "total"} <= set(cost)
    assert cost["total"] == pytest.approx(sum(v for k, v in cost.items() if k != "total"), abs=0.05)
    assert "c.CalliopeEvents.enabled = True" in result["config"]
    assert result["ecs_calls_per_min"]["DescribeTasks"] == pytest.approx(30 * 60 / 300), "ceil(N/100) per reconcile"


def test_events_and_poll_interval_move_the_figures_the_right_way() -> None:
    coefficients = calibrate.coefficients_of(calibrate.load_document())
    prices = load_prices("us-east-1")
    polling, events = (plan(PlanInputs(10000, events=e), coefficients, prices) for e in (False, True))
    assert events["hub"]["cpu_pct_idle"] < polling["hub"]["cpu_pct_idle"]
    assert events["detect_typical_s"] < 1 < polling["detect_typical_s"]
    assert polling["ecs_calls_per_min"]["DescribeTasks"] == 200  # 100 calls per 30 s sweep


BAD = [
    (["--servers", "0"], "positive number of servers"),
    (["--servers", "-3"], "positive number of servers"),
    (["--servers", "10", "--poll-interval", "0"], "poll interval must be a finite number above 0"),
    (["--servers", "10", "--region", "mars-1"], "unknown region 'mars-1'"),
    (["--servers", "10", "--coefficients", "/nonexistent/c.json"], "coefficients file /nonexistent/c.json"),
    (["--servers", "10", "--mix", "lab/huge"], "size mix must name"),
    (["--calibrate", "/nonexistent/bench.json"], "calibration file /nonexistent/bench.json"),
    (["--servers", "10", "--set", "image_gib=-1"], "must be >= 0"),
    (["--servers", "10", "--set", "warp=9"], "unknown input"),
    (["--servers", "0", "--calibrate", str(ROOT / "docs/benchmarks/hub-2000.json")], "positive number of servers"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_input_exits_2_with_a_clear_message(argv: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out.json"
    assert main(["plan", *argv, "--json", str(out), "--output", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("content", ["not json", '{"runs": 5}', '{"runs": [{"mode": "batched", "servers": 1}]}'])
def test_a_malformed_calibration_file_exits_2(content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text(content)
    assert main(["plan", "--calibrate", str(bad), "--output", str(tmp_path / "c.json")]) == 2
    assert "is not bench JSON" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_too_few_runs_to_fit_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write_bench(tmp_path / "one.json", [synthetic_run(1000, 30, 200, 200)])
    assert main(["plan", "--calibrate", str(one), "--output", str(tmp_path / "c.json")]) == 2
    assert "add bench runs" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_a_malformed_coefficients_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"targets": {"cpu_pct": {}}}')
    assert main(["plan", "--servers", "10", "--coefficients", str(bad)]) == 2
    assert "is malformed" in capsys.readouterr().err


PACKAGED_PRICES = json.loads((ROOT / "calliope_hub/tools/plan/prices.json").read_text())["regions"]["us-east-1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"efs_gib_month": "x"}, "['efs_gib_month'] must be numbers >= 0"),
        ({"nat_gateway_hour": -1}, "['nat_gateway_hour'] must be numbers >= 0"),
        ({"fargate_vcpu_hour": True}, "['fargate_vcpu_hour'] must be numbers >= 0"),
        ({"rds_hour": 5}, "['rds_hour'] must be numbers >= 0"),
        ({"rds_hour": {"db.t4g.small": 0.03}}, "no rds_hour for db.t4g.medium"),  # 10,000 servers need a medium
    ],
)
def test_a_malformed_prices_file_exits_2(change: dict[str, Any], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    prices, out = tmp_path / "prices.json", tmp_path / "plan.json"
    prices.write_text(json.dumps({"regions": {"us-east-1": {**PACKAGED_PRICES, **change}}}))
    assert main(["plan", "--servers", "10000", "--prices", str(prices), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_an_unwritable_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--servers", "10", "--json", str(tmp_path / "no" / "such" / "dir.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_matrix_json_and_chart(tmp_path: Path) -> None:
    out, png = tmp_path / "matrix.json", tmp_path / "chart.png"
    assert main(["plan", "--matrix", "--json", str(out), "--chart", str(png)]) == 0
    rows = json.loads(out.read_text())["matrix"]
    assert [r["servers"] for r in rows] == sorted(r["servers"] for r in rows) and len(rows) >= 5
    assert all(r["advice"] for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- alert rules

SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
    "summary": ("_sum", "_count", ""),
}
METRIC = re.compile(r"\b((?:calliope|jupyterhub|process)_[a-zA-Z0-9_]+)")


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_cover_the_seed_triggers() -> None:
    found = rules()
    assert all({"alert", "expr", "for", "labels", "annotations"} <= set(rule) for rule in found)
    exprs = " ".join(rule["expr"] for rule in found)
    for trigger in ("process_cpu_seconds_total", "calliope_sweep_duration_seconds_sum", "calliope_ecs_throttles_total"):
        assert trigger in exprs, f"seed trigger over {trigger} missing"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_rule_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    exported = {f.name + s for f in REGISTRY.collect() for s in SUFFIXES.get(f.type, ("",))}
    names = METRIC.findall(rule["expr"])
    assert names and set(names) <= exported, f"{rule['alert']}: not exported: {set(names) - exported}"


def test_the_thresholds_are_the_plans() -> None:
    """The rules' numbers are the planner's: its CPU target and free memory, and the read headroom its matrix
    warns at, of ecsfacts' cluster-read quota."""
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}
    inputs = PlanInputs(1)

    def threshold(alert: str) -> float:
        return float(re.findall(r">\s*([0-9.]+)", by_name[alert])[-1])

    assert threshold("CalliopeHubCpuHigh") == pytest.approx(inputs.target_cpu_pct / 100)
    assert "0.65 * 2 *" in by_name["CalliopeHubMemoryHigh"] and pytest.approx(1 - inputs.memory_free_pct / 100) == 0.65
    read = AWS_QUOTAS["cluster-read"].rate * (1 - MIN_READ_HEADROOM)
    assert threshold("CalliopeReadQuotaHeadroomLow") == pytest.approx(read)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
@pytest.mark.parametrize("command", [["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]])
def test_promtool_accepts_the_rules_and_their_unit_tests(command: list[str]) -> None:
    """check: the rules parse; test: each fires past its threshold and stays quiet below it."""
    result = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
