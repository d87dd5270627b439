"""Fit the planner's coefficients to bench JSON, and read and write the coefficients file.

Each target is a linear model over features bench records for every run: hub CPU over
servers, tasks swept per second and hub REST requests per second (per-server, per-sweep and
per-post costs; runs at two poll intervals tell the first two apart),
RSS, restart, sweep and per-spawn time over the number of servers. Only batched runs count:
that is the product; naive runs measure the stock pattern it replaces. The fit is ordinary
least squares (weighted by window length) on a handful of runs, so it is solved here in plain Python (no numpy in the
hub's dependencies), and every observation is kept with its residual so a reader can judge it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from calliope_hub.ecsfacts import DESCRIBE_LIMIT, client_quotas
from calliope_hub.tools.bench.report import pick
from calliope_hub.tools.plan.inputs import TOLERANCE, PlanError

#: target -> (features, unit, what it predicts). "const" is the intercept.
TARGETS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "cpu_pct": (
        ("const", "servers", "sweep_tasks_per_s", "requests_per_s"),
        "% of one core",
        "hub CPU: idle window (status tracking) and loaded window (+ activity posts and API requests)",
    ),
    "rss_mib": (("const", "servers"), "MiB", "hub resident memory at the end of the loaded window"),
    "restart_s": (("const", "servers"), "s", "kill -9 of hub and proxy until every server answers ready"),
    "sweep_s": (("const", "servers"), "s", "one TaskWatcher sweep over every task"),
    # Only a mean: spawn rate is wall time and swings with the machine's load more than with N
    # (3.6 to 8.9 spawns/s across our runs), so a slope fitted to it would extrapolate noise.
    "spawn_s": (("const",), "s", "hub time per spawn at 50 in flight (1 / spawns per second)"),
    "proxy_cpu_pct": (("const", "requests_per_s"), "% of one core", "configurable-http-proxy CPU, loaded window"),
}

PACKAGED = "coefficients.json"


@dataclass(frozen=True)
class Observation:
    target: str
    source: str
    servers: int
    label: str
    x: dict[str, float]
    y: float
    weight: float = 1.0


class NotBenchFile(PlanError):
    """JSON of another kind (no "runs"), such as docs/benchmarks' other results: skipped by a fit over a folder."""


def observations(path: Path, exclude_servers: frozenset[int] = frozenset()) -> list[Observation]:
    """Every usable observation in one bench JSON file; PlanError when it is not one."""
    try:
        document = json.loads(path.read_text())
        if isinstance(document, dict) and "runs" not in document:
            raise NotBenchFile(f"skipped {path.name}: no bench runs")
        config = dict(document.get("config") or {})
        idle_window = float(config.get("idle_window", 60.0))  # bench's default
        return [
            obs
            for run in document["runs"]
            if _usable(run, exclude_servers)
            for obs in _run_observations(path.name, run, idle_window, _quota_paced(run, config))
        ]
    except PlanError:
        raise
    except OSError as exc:
        raise PlanError(f"calibration file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"calibration file {path} is not bench JSON ({type(exc).__name__}: {exc})") from None


def _usable(run: dict[str, Any], exclude_servers: frozenset[int]) -> bool:
    return run.get("mode") == "batched" and not run.get("error") and int(run["servers"]) not in exclude_servers


def _quota_paced(run: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether AWS's quotas, not the hub, paced the run's spawns: then its spawn rate measures the quotas (which
    burst.py predicts from ecsfacts) and says nothing of the hub's own time per spawn. So paced: a run naming its
    service (bench records it since every spawn writes its token to Parameter Store), and one within TOLERANCE
    of the hub's RegisterTaskDefinition pace (before slot definitions, every spawn registered its own)."""
    if config.get("service"):
        return True
    rate = pick(run, ("spawn", "per_second"))
    registrations = client_quotas()["task-definition-modify"].rate
    return isinstance(rate, (int, float)) and abs(rate / registrations - 1) <= TOLERANCE


def _run_observations(name: str, run: dict[str, Any], idle_window: float, quota_paced: bool) -> list[Observation]:
    """One bench run -> observations; a figure the run lacks (older bench, cut short) is skipped."""
    servers, steady = float(run["servers"]), run["steady"]
    tasks = float(pick(steady, ("tasks", "RUNNING")) or servers)
    window = float(steady["window_s"])
    requests = (float(steady.get("activity_posts") or 0) + float(pick(steady, ("api_ms", "count")) or 0)) / window
    sweep_rate = _swept_per_s(steady, tasks, float(run["poll_interval_s"]))
    source = f"{name} N={int(servers)}"
    restarted = float(pick(run, ("restart", "expected")) or servers)
    # (target, window label, features, figure, weight): a window's mean weighs by its length, because
    # JupyterHub's and the orphan sweep's 300 s tasks fall into a short window or miss it.
    found: list[tuple[str, str, dict[str, float], Any, float]] = [
        ("cpu_pct", "idle", {"servers": tasks, "sweep_tasks_per_s": sweep_rate, "requests_per_s": 0.0},
         steady.get("hub_cpu_idle_pct"), idle_window),
        ("cpu_pct", "loaded", {"servers": tasks, "sweep_tasks_per_s": sweep_rate, "requests_per_s": requests},
         steady.get("hub_cpu_pct"), window),
        ("rss_mib", "", {"servers": tasks}, steady.get("hub_rss_mib"), 1.0),
        ("restart_s", "", {"servers": restarted}, pick(run, ("restart", "seconds")), 1.0),
        ("sweep_s", "", {"servers": tasks}, steady.get("sweep_s_mean"), window),
        ("spawn_s", "", {"servers": servers}, None if quota_paced else _inverse(pick(run, ("spawn", "per_second"))),
         1.0),
        ("proxy_cpu_pct", "", {"requests_per_s": requests}, steady.get("proxy_cpu_pct"), window),
    ]  # fmt: skip
    return [
        Observation(target, f"{source} {label}".strip(), int(servers), label, {"const": 1.0, **x}, float(y), weight)
        for target, label, x, y, weight in found
        if isinstance(y, (int, float))
    ]


def _swept_per_s(steady: dict[str, Any], tasks: float, poll_interval: float) -> float:
    """Tasks described per second: as local ECS counted the DescribeTasks (a sweep overruns a short poll),
    else N / poll interval."""
    calls = pick(steady, ("ecs_calls_per_min", "DescribeTasks"))
    if isinstance(calls, (int, float)) and calls > 0:
        return float(calls) / 60 / math.ceil(tasks / DESCRIBE_LIMIT) * tasks
    return tasks / poll_interval


def _inverse(value: Any) -> float | None:
    return 1.0 / value if isinstance(value, (int, float)) and value > 0 else None


def solve_least_squares(rows: list[list[float]], ys: list[float], weights: list[float]) -> list[float]:
    """Weighted least squares through the normal equations, with partial pivoting."""
    k = len(rows[0])
    a = [
        [sum(w * r[i] * r[j] for r, w in zip(rows, weights, strict=True)) for j in range(k)]
        + [sum(w * r[i] * y for r, y, w in zip(rows, ys, weights, strict=True))]
        for i in range(k)
    ]
    scale = max(abs(a[i][i]) for i in range(k)) or 1.0
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12 * scale:
            raise PlanError("the runs cannot separate these coefficients: add a run at another N or poll interval")
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(k):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [vr - factor * vc for vr, vc in zip(a[r], a[col], strict=True)]
    return [a[i][k] / a[i][i] for i in range(k)]


def fit_target(target: str, obs: list[Observation]) -> dict[str, Any]:
    """Coefficients of one target, and every observation with its fitted value and residual."""
    features, unit, what = TARGETS[target]
    mine = [o for o in obs if o.target == target]
    if len(mine) < len(features):
        raise PlanError(f"{target}: {len(mine)} observations cannot fit {len(features)} coefficients: add bench runs")
    values = solve_least_squares(
        [[o.x[f] for f in features] for o in mine], [o.y for o in mine], [o.weight for o in mine]
    )
    coefficients = dict(zip(features, values, strict=True))
    rows = []
    for o in mine:
        fitted = predict_target(coefficients, o.x)
        rows.append({"source": o.source, "servers": o.servers, "window": o.label, "weight": o.weight, "x": o.x,
                     "observed": o.y, "fitted": round(fitted, 4), "residual": round(o.y - fitted, 4)})  # fmt: skip
    return {"unit": unit, "what": what, "coefficients": coefficients, "observations": rows}


def predict_target(coefficients: dict[str, float], x: dict[str, float]) -> float:
    return sum(value * (1.0 if name == "const" else x[name]) for name, value in coefficients.items())


def calibrate(paths: list[Path], exclude_servers: frozenset[int] = frozenset()) -> dict[str, Any]:
    """The coefficients document for these bench files."""
    if not paths:
        raise PlanError("--calibrate needs at least one bench JSON file")
    obs: list[Observation] = []
    fitted, skipped = [], []
    for path in paths:
        try:
            obs += observations(path, exclude_servers)
            fitted.append(path.name)
        except NotBenchFile as exc:
            skipped.append(str(exc))
    if not fitted:
        raise PlanError(f"no bench JSON among the calibration files: {'; '.join(skipped)}")
    return {
        "about": "Fitted by `calliope-hub plan --calibrate` from the bench runs below; see docs/capacity.md.",
        "fitted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": fitted,
        "skipped": skipped,
        "excluded_servers": sorted(exclude_servers),
        "targets": {target: fit_target(target, obs) for target in TARGETS},
    }


def load_document(path: Path | None = None) -> dict[str, Any]:
    """The coefficients document from `path` or the packaged file; PlanError when it is not one."""
    where = path or PACKAGED
    try:
        text = path.read_text() if path else resources.files(__package__).joinpath(PACKAGED).read_text()
        document = dict(json.loads(text))
        coefficients_of(document)  # every coefficient of every target is there and a number
        return document
    except OSError as exc:
        raise PlanError(f"coefficients file {where}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"coefficients file {where} is malformed ({type(exc).__name__}: {exc})") from None


def coefficients_of(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    """target -> feature -> coefficient, from a (validated) coefficients document."""
    return {t: {f: float(document["targets"][t]["coefficients"][f]) for f in TARGETS[t][0]} for t in TARGETS}


def measured_points(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The bench figures a document was fitted to, as chart points (servers, one figure each)."""
    keys = {("cpu_pct", "idle"): "cpu_idle", ("cpu_pct", "loaded"): "cpu_loaded", ("rss_mib", ""): "rss_mib",
            ("restart_s", ""): "restart_s"}  # fmt: skip
    points = []
    for target, fit in document["targets"].items():
        for row in fit["observations"]:
            key = keys.get((target, row.get("window", "")))
            if key and "servers" in row:
                points.append({"servers": row["servers"], key: row["observed"]})
    return points


def default_output() -> Path:
    """Where the packaged coefficients live in this (editable) install."""
    return Path(str(resources.files(__package__).joinpath(PACKAGED)))
