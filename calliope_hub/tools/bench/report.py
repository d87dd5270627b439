"""What a bench run hands to people and tools: a table, JSON and a figure.

The JSON's shape is a contract (`{"machine": ..., "runs": [...]}`, one record per mode,
servers and repeat; docs/benchmarks/README.md lists the keys) so other tools can read it;
`summary` adds min/median/max over repeats, which is the noise every published figure carries,
and `ratio_to_floor`: each mode's median over the floor's median at the same N (same run).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich.table import Table

from calliope_hub.tools.loadtest import write_json

#: (label, path into a run record) of every figure the table, summary and plot show.
FIGURES: list[tuple[str, tuple[str, ...]]] = [
    ("spawns/s", ("spawn", "per_second")),
    ("ready p50 s", ("spawn", "ready_s", "p50")),
    ("ready p95 s", ("spawn", "ready_s", "p95")),
    ("ready p99 s", ("spawn", "ready_s", "p99")),
    ("ready max s", ("spawn", "ready_s", "max")),
    ("HTTP 429", ("spawn", "http_429")),
    ("failed", ("spawn", "failed")),
    ("DescribeTasks/min", ("steady", "ecs_calls_per_min", "DescribeTasks")),
    ("DescribeTasks/poll", ("steady", "describe_per_poll")),
    ("throttled/min", ("steady", "throttled_per_min")),
    ("hub CPU %", ("steady", "hub_cpu_pct")),
    ("hub CPU idle %", ("steady", "hub_cpu_idle_pct")),
    ("hub RSS MiB", ("steady", "hub_rss_mib")),
    ("sweep s", ("steady", "sweep_s_mean")),
    ("API p50 ms", ("steady", "api_ms", "p50")),
    ("API p99 ms", ("steady", "api_ms", "p99")),
    ("detect p50 s", ("detect_s", "p50")),
    ("detect max s", ("detect_s", "max")),
    ("restart API s", ("restart", "api_s")),
    ("restart s", ("restart", "seconds")),
    ("lost", ("restart", "lost")),
    ("shutdown block s", ("shutdown_block_s",)),
    # a class start (bench --pool, bench/pool.py)
    ("claimed warm", ("pool", "claimed")),
    ("fell back cold", ("pool", "fallback-empty")),
    ("claims failed", ("pool", "fallback-failed")),
    ("pool fill s", ("fill_s",)),
    ("load 1m at start", ("load_average", "start", "1m")),
    ("load 1m at end", ("load_average", "end", "1m")),
    ("memory used GiB max", ("machine", "memory_used_gib_max")),
    ("CPU busy % mean", ("machine", "cpu_busy_pct_mean")),
]


def pick(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """min/median/max of every figure per (mode, servers) over its repeats."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["mode"], run["servers"]), []).append(run)
    summary: list[dict[str, Any]] = []
    for (mode, servers), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        figures = {}
        for label, path in FIGURES:
            values = [v for v in (pick(run, path) for run in group) if isinstance(v, (int, float))]
            if values:
                figures[label] = {
                    "min": min(values),
                    "median": statistics.median(values),
                    "max": max(values),
                    "n": len(values),
                }
        summary.append({"mode": mode, "servers": servers, "repeats": len(group), "figures": figures})
    floors = {entry["servers"]: entry["figures"] for entry in summary if entry["mode"] == "floor"}
    for entry in summary:
        if entry["mode"] != "floor" and entry["servers"] in floors:
            entry["ratio_to_floor"] = ratios(entry["figures"], floors[entry["servers"]])
    return summary


def ratios(figures: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """median / floor median of every figure both have (a floor of 0 has no ratio)."""
    return {
        label: round(stats["median"] / floor[label]["median"], 3)
        for label, stats in figures.items()
        if label in floor and floor[label]["median"]
    }


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    median = stats["median"]
    text = f"{median:.4g}" if isinstance(median, float) else str(median)
    if stats["n"] > 1 and stats["min"] != stats["max"]:
        text += f" [{stats['min']:.3g}-{stats['max']:.3g}]"
    return text


def _ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def render_table(runs: list[dict[str, Any]], interrupted: bool) -> Table:
    """One column per (mode, servers): medians, with [min-max] when repeats differ."""
    summary = summarise(runs)
    title = "calliope-hub bench" + (" (interrupted: partial results)" if interrupted else "")
    table = Table(title=title)
    table.add_column("figure")
    for group in summary:
        table.add_column(f"{group['mode']} N={group['servers']}", justify="right")
    against_floor = [group for group in summary if group["mode"] == "batched" and "ratio_to_floor" in group]
    for group in against_floor:
        table.add_column(f"batched/floor N={group['servers']}", justify="right")
    for label, _ in FIGURES:
        if not any(label in group["figures"] for group in summary):
            continue  # a figure no run measured (a class start has no restart; a bench without pools no claims)
        cells = [_cell(group["figures"].get(label)) for group in summary]
        cells += [_ratio_cell(group["ratio_to_floor"].get(label)) for group in against_floor]
        table.add_row(label, *cells)
    errors = [f"{run['mode']} N={run['servers']}: {run['error']}" for run in runs if run.get("error")]
    if errors:
        table.caption = "errors: " + "; ".join(errors)
    return table


def save_json(path: Path, document: dict[str, Any]) -> None:
    write_json(path, {**document, "summary": summarise(document["runs"])})


def save_plot(path: Path, runs: list[dict[str, Any]]) -> None:
    """Every figure against N, one line per mode (median, min-max as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(runs)
    modes = sorted({group["mode"] for group in summary})
    columns = 4
    rows = -(-len(FIGURES) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (label, _) in zip(axes.flat, FIGURES, strict=False):
        for mode in modes:
            points = [(g["servers"], g["figures"].get(label)) for g in summary if g["mode"] == mode]
            points = [(n, s) for n, s in points if s]
            if not points:
                continue
            xs = [n for n, _ in points]
            mid = [s["median"] for _, s in points]
            low = [s["median"] - s["min"] for _, s in points]
            high = [s["max"] - s["median"] for _, s in points]
            axis.errorbar(xs, mid, yerr=[low, high], marker="o", capsize=3, label=mode)
        axis.set_title(label)
        axis.set_xlabel("servers")
        axis.grid(alpha=0.3)
        if _positive_spread(axis):
            axis.set_yscale("log")
        if axis.get_lines():
            axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(FIGURES) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _positive_spread(axis: Any) -> bool:
    """Log scale when batched and naive differ by orders of magnitude (calls, CPU)."""
    values = [y for line in axis.get_lines() for y in line.get_ydata() if y is not None]
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) / min(positive) >= 30
