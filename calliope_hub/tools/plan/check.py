"""`plan --check BENCH_JSON`: a plan's predictions against a bench run at the same N.

This is the planner's acceptance test (docs/capacity.md): calibrate without one N, predict it, run bench there, and
every figure below must land within TOLERANCE of its prediction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from calliope_hub.tools.bench.report import pick
from calliope_hub.tools.plan.inputs import PlanError

TOLERANCE = 0.20

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
    """The batched run at `servers` in a bench JSON file."""
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"bench file {path}: cannot read its runs ({exc})") from None
    for run in runs:
        if isinstance(run, dict) and run.get("mode") == "batched" and run.get("servers") == servers:
            return dict(run)
    raise PlanError(f"bench file {path} has no batched run at {servers} servers")


def compare(result: dict[str, Any], run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure: predicted, measured, relative error and whether it is within TOLERANCE."""
    rows = []
    for name, (planned, measured) in FIGURES.items():
        predicted, actual = pick(result, planned), pick(run, measured) or 0.0
        error = (actual - predicted) / predicted if predicted else None
        rows.append({"figure": name, "predicted": predicted, "measured": actual,
                     "error": None if error is None else round(error, 4),
                     "within": error is not None and abs(error) <= TOLERANCE})  # fmt: skip
    return rows


def render(rows: list[dict[str, Any]], source: str) -> Table:
    table = Table(title=f"Prediction against {source} (tolerance ±{TOLERANCE:.0%})", title_justify="left")
    for column in ("figure", "predicted", "measured", "error", "within"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        error = "—" if row["error"] is None else f"{row['error']:+.0%}"
        table.add_row(row["figure"], f"{row['predicted']:.3g}", f"{row['measured']:.3g}", error,
                      "yes" if row["within"] else "NO")  # fmt: skip
    return table
