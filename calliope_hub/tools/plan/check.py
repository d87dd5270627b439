"""`plan --check BENCH_JSON`: a plan's predictions against a bench run at the same N.

This is the planner's acceptance test (docs/capacity.md): calibrate without one N, predict it, run bench there, and
every figure below must land within TOLERANCE of its prediction.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table

from calliope_hub.catalog import BUILTIN_DIRECTORY, CatalogError, load_service
from calliope_hub.tools.bench.report import pick
from calliope_hub.tools.plan.burst import Burst, quota_steps
from calliope_hub.tools.plan.calibrate import predict_target
from calliope_hub.tools.plan.inputs import TOLERANCE, PlanError, PlanInputs

#: figure -> (path in the plan, path in a bench run). ECS reads are DescribeTasks + ListTasks.
FIGURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hub CPU idle %": (("hub", "cpu_pct_idle"), ("steady", "hub_cpu_idle_pct")),
    "hub CPU loaded %": (("hub", "cpu_pct_loaded"), ("steady", "hub_cpu_pct")),
    "hub RSS MiB": (("hub", "rss_mib"), ("steady", "hub_rss_mib")),
    "DescribeTasks/min": (("ecs_calls_per_min", "DescribeTasks"), ("steady", "ecs_calls_per_min", "DescribeTasks")),
    "ListTasks/min": (("ecs_calls_per_min", "ListTasks"), ("steady", "ecs_calls_per_min", "ListTasks")),
    "restart s": (("restart_s",), ("restart", "seconds")),
}


def bench_run(path: Path, servers: int) -> dict[str, Any]:
    """The batched run at `servers` in a bench JSON file, with the file's config under "config"."""
    try:
        document = json.loads(path.read_text())
        runs, config = document["runs"], dict(document.get("config") or {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"bench file {path}: cannot read its runs ({exc})") from None
    for run in runs:
        if isinstance(run, dict) and run.get("mode") == "batched" and run.get("servers") == servers:
            return {**run, "config": config}
    raise PlanError(f"bench file {path} has no batched run at {servers} servers")


def compare(
    result: dict[str, Any], run: dict[str, Any], inputs: PlanInputs, coefficients: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """Each figure: predicted, measured, relative error and whether it is within TOLERANCE."""
    pairs = [(name, pick(result, planned), pick(run, measured) or 0.0) for name, (planned, measured) in FIGURES.items()]
    spawns = bench_spawn_rate(run, inputs, coefficients)
    if spawns is not None:
        pairs.append(("spawns/s", spawns, pick(run, ("spawn", "per_second")) or 0.0))
    rows = []
    for name, predicted, actual in pairs:
        error = (actual - predicted) / predicted if predicted else None
        rows.append({"figure": name, "predicted": predicted, "measured": actual,
                     "error": None if error is None else round(error, 4),
                     "within": error is not None and abs(error) <= TOLERANCE})  # fmt: skip
    return rows


def bench_spawn_rate(
    run: dict[str, Any], inputs: PlanInputs, coefficients: dict[str, dict[str, float]]
) -> float | None:
    """The burst model's spawns a second for the run's own spawn phase: all its servers asked for at once,
    its service's storage, its Parameter Store throughput, a fresh slot pool. None for a run from before
    bench recorded its service (and before every spawn wrote its token: its spawns met no such quota).

    A slot's lease lasts until its task has left PENDING: at most the run's median time to ready.
    """
    config, requested = run.get("config") or {}, pick(run, ("spawn", "requested"))
    service = str(config.get("service") or "").split("/")[0]
    if not service or not isinstance(requested, (int, float)) or requested <= 0:
        return None
    try:
        storage = load_service(BUILTIN_DIRECTORY / f"{service}.yaml").storage is not None
    except (OSError, CatalogError) as exc:
        raise PlanError(f"bench run's service {service!r} is not in the built-in catalog ({exc})") from None
    higher = bool(config.get("ssm_higher_throughput"))
    asked = replace(inputs, storage=storage, slots=0.0, new_user_share=1.0, ssm_higher_throughput=higher,
                    cold_start_s=float(pick(run, ("spawn", "ready_s", "p50")) or inputs.cold_start_s))  # fmt: skip
    spawn_s = predict_target(coefficients["spawn_s"], {"servers": float(requested)})
    return round(Burst(requested, higher, quota_steps(asked, requested, spawn_s, higher)).per_second, 3)


def render(rows: list[dict[str, Any]], source: str) -> Table:
    table = Table(title=f"Prediction against {source} (tolerance ±{TOLERANCE:.0%})", title_justify="left")
    for column in ("figure", "predicted", "measured", "error", "within"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        error = "—" if row["error"] is None else f"{row['error']:+.0%}"
        table.add_row(row["figure"], f"{row['predicted']:.3g}", f"{row['measured']:.3g}", error,
                      "yes" if row["within"] else "NO")  # fmt: skip
    return table
