"""`plan --chart`: the seeds' scaling chart redrawn from measurements, their formulas beside ours.

matplotlib is imported here only, and only when a chart is asked for (the `bench` extra).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from calliope_hub.ecsfacts import AWS_QUOTAS
from calliope_hub.tools.plan.inputs import PlanError, PlanInputs, Prices
from calliope_hub.tools.plan.model import hub_figures, plan

#: N axis of the chart.
SERVERS = (100, 250, 500, 1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000)


def seed_formulas(servers: int, poll_interval: float) -> dict[str, float]:
    """Seed 001's linear formulas: vCPU = N x 0.1 s / poll, memory = 1 GB + N x 1 MB, hubs = N / 300."""
    return {
        "cpu_pct": servers * 0.1 / poll_interval * 100,
        "memory_mib": (1 + servers * 0.001) * 1024,
        "reads_per_s": servers / poll_interval,  # one DescribeTasks per server per poll, as the stock spawners do
        "hubs": math.ceil(servers / 300),
    }


def series(inputs: PlanInputs, coefficients: dict[str, dict[str, float]], prices: Prices) -> dict[str, list[float]]:
    """Ours (one hub carrying all N, so the fit reads as a line) and the seeds' figures at every N."""
    out: dict[str, list[float]] = {k: [] for k in ("idle", "loaded", "rss", "reads", "restart", "hubs")}
    seeds: dict[str, list[float]] = {k: [] for k in ("cpu_pct", "memory_mib", "reads_per_s", "hubs")}
    for n in SERVERS:
        at_n = replace(inputs, servers=n)
        hub, result = hub_figures(at_n, coefficients), plan(at_n, coefficients, prices)
        calls = result["ecs_calls_per_min"]
        out["idle"].append(hub["cpu_pct_idle"])
        out["loaded"].append(hub["cpu_pct_loaded"])
        out["rss"].append(hub["rss_mib"])
        out["reads"].append((calls["DescribeTasks"] + calls["ListTasks"]) / 60)
        out["restart"].append(hub["restart_s"])
        out["hubs"].append(result["hub"]["count"])
        for key, value in seed_formulas(n, inputs.poll_interval).items():
            seeds[key].append(value)
    return {**out, **{f"seed_{k}": v for k, v in seeds.items()}}


def save_chart(path: Path, inputs: PlanInputs, coefficients: dict[str, dict[str, float]], prices: Prices,
               measured: list[dict[str, Any]]) -> None:  # fmt: skip
    """Panels against N (log): CPU, memory, ECS reads with the quota, restart, hubs; seeds dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlanError("--chart needs matplotlib: pip install 'calliope-hub[bench]'") from None
    s = series(inputs, coefficients, prices)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    cpu, mem, reads, restart, hubs, spare = axes.flat
    fig.delaxes(spare)
    cpu.plot(SERVERS, s["loaded"], "-o", label="ours, one hub, loaded (fit)")
    cpu.plot(SERVERS, s["idle"], "-o", label="ours, idle (fit)")
    cpu.plot(SERVERS, s["seed_cpu_pct"], "--", color="grey", label="seed: N x 0.1 s / poll")
    cpu.axhline(inputs.target_cpu_pct, color="red", lw=1, label=f"target {inputs.target_cpu_pct:g} % of a core")
    _points(cpu, measured, "cpu_loaded", "cpu_idle")
    cpu.set(ylabel="hub CPU, % of one core", yscale="log")
    mem.plot(SERVERS, s["rss"], "-o", label="ours, RSS (fit)")
    mem.plot(SERVERS, s["seed_memory_mib"], "--", color="grey", label="seed: 1 GB + N x 1 MB")
    _points(mem, measured, "rss_mib")
    mem.set(ylabel="hub memory, MiB", yscale="log")
    reads.plot(SERVERS, s["reads"], "-o", label="ours: ceil(N/100) per sweep + orphan scan")
    reads.plot(SERVERS, s["seed_reads_per_s"], "--", color="grey", label="stock: one per server per poll")
    reads.axhline(AWS_QUOTAS["cluster-read"].rate, color="red", lw=1, label="cluster-read quota 20/s")
    reads.set(ylabel="ECS read calls / s", yscale="log")
    restart.plot(SERVERS, s["restart"], "-o", label="ours, one hub, restart s (fit)")
    _points(restart, measured, "restart_s")
    restart.set(ylabel="restart to every server ready, s")
    hubs.step(SERVERS, s["hubs"], "-o", where="mid", label=f"ours: loaded CPU / {inputs.target_cpu_pct:g} % of a core")
    hubs.step(SERVERS, s["seed_hubs"], "--", color="grey", where="mid", label="seed: N / 300 (4 vCPU hubs)")
    hubs.set(ylabel="active hubs", yscale="log")
    for ax in (cpu, mem, reads, restart, hubs):
        ax.set(xscale="log", xlabel="servers (N)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    events = "events on" if inputs.events else f"poll {inputs.poll_interval:g} s"
    fig.suptitle(f"Calliope Hub capacity: fitted to bench (points), {events}, activity {inputs.activity_interval:g} s")
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise PlanError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _points(ax: Any, measured: list[dict[str, Any]], *keys: str) -> None:
    """Measured bench points (from calibration files) on a panel."""
    for key in keys:
        xs = [m["servers"] for m in measured if m.get(key) is not None]
        ys = [m[key] for m in measured if m.get(key) is not None]
        if xs:
            ax.scatter(xs, ys, marker="x", s=60, zorder=5, label=f"bench: {key}")
