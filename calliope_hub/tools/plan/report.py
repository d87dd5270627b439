"""The plan for people: rich tables that read on an 80-column terminal, the fit's residuals,
and the decision matrix by scale band (each row a plan, so its advice follows the measurements).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from calliope_hub.ecsfacts import CATEGORIES, account_quota
from calliope_hub.tools.plan.burst import HEADROOM
from calliope_hub.tools.plan.inputs import INPUT_SOURCES, PlanInputs, Prices
from calliope_hub.tools.plan.model import EFS_ACCESS_POINTS, HEADROOM_OF, plan

#: scale bands of the decision matrix (servers).
BANDS = (100, 500, 1000, 2000, 3000, 5000, 10000, 20000)
#: cluster-read quota left below which the matrix asks for fewer reads (docs/alerts' CalliopeReadQuotaHeadroomLow)
MIN_READ_HEADROOM = 0.3
#: longest outage (restart) an operator accepts before a hot standby is worth it; an input of the matrix.
MAX_OUTAGE_S = 60.0

#: what lifts each quota step that may pace a burst (docs/benchmarks/storage-1000.md)
LIFTS = {
    "PutParameter": "SSM higher throughput: {ready_s_other_throughput:.0f} s",
    "slot definitions": "keep the slot pool",
    "RegisterTaskDefinition": "first sessions off-peak",
    "CreateAccessPoint": "first sessions off-peak",
    "RunTask": "a higher launch quota",
}

#: the calls counted over the sweeps' steady minute; every other is counted while a burst of starts or stops lasts
STEADY = ("DescribeTasks", "ListTasks")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if 0 < i < len(columns) - 1 else "left", overflow="fold")
    return table


def render_plan(result: dict[str, Any], inputs: PlanInputs) -> Group:
    """Every section of one plan."""
    hub, db = result["hub"], result["database"]
    head = Text(
        f"Plan for {inputs.servers:,} servers: poll {inputs.poll_interval:g} s, events "
        f"{'on' if inputs.events else 'off'}, activity {inputs.activity_interval:g} s, burst "
        f"{inputs.burst_per_min:g}/min, storage {'on' if inputs.storage else 'off'}, cold start "
        f"{inputs.cold_start_s:g} s, {inputs.region}",
        style="bold",
    )
    sizing = _table("Hub and database", "figure", "value", "note")
    sizing.add_row("hubs (active + standby)", f"{hub['count']} + {int(hub['standby'])}", "one core each at most")
    sizing.add_row("hub task", f"{hub['vcpu']:g} vCPU {hub['memory_gib']:g} GiB", "Fargate size, with headroom")
    sizing.add_row("hub CPU idle / loaded", f"{hub['cpu_pct_idle']:.1f} / {hub['cpu_pct_loaded']:.1f} %",
                   f"of one core; {hub['requests_per_s']:g} req/s")  # fmt: skip
    sizing.add_row("hub RSS", f"{hub['rss_mib']:.0f} MiB", f"proxy CPU {hub['proxy_cpu_pct']:.1f} %")
    connections = f"{db['connections']} connection{'s' if db['connections'] != 1 else ''}"
    sizing.add_row("database", db["class"], f"{connections}, {db['writes_per_s']:g} writes/s")
    calls = render_calls(result, inputs)
    times = _table("Times", "event", "seconds", "how")
    times.add_row("restart (all servers ready)", f"{result['restart_s']:.0f}", "fitted from bench")
    times.add_row("failover", f"{result['failover_s']:.0f}", "health check + start + restart")
    burst = result["burst"]
    times.add_row(
        "burst served (last ready)",
        f"{result['burst_ready_s']:.0f}",
        f"{burst['paced_by']} at {burst['spawns_per_s']:g}/s",
    )
    times.add_row(
        "dead server noticed", f"{result['detect_typical_s']:.3g} / {result['detect_s']:.3g}", "typical / worst"
    )
    cost = _table("Cost per month (USD)", "line", "USD", "basis")
    basis = {"hub": "Fargate hub tasks", "database": db["class"], "efs": f"{inputs.efs_gib_per_user:g} GiB/user",
             "api_calls": "ECS free; SQS, SSM higher throughput", "nat": f"{inputs.azs} NAT + image pulls",
             "user_servers": ", ".join(inputs.size_mix), "total": ""}  # fmt: skip
    for line, usd in result["cost_per_month"].items():
        cost.add_row(line, f"{usd:,.0f}", basis.get(line, ""))
    config = Text("jupyterhub_config.py\n", style="bold") + Text("\n".join(result["config"]))
    return Group(head, sizing, calls, times, cost, config)


def render_calls(result: dict[str, Any], inputs: PlanInputs) -> Table:
    """Each call a minute, against the quota it leaves least of (RunTask draws on two)."""
    table = _table("AWS API calls a minute", "operation", "counted", "per min", "quota", "left")
    headroom, higher = result["quota_headroom"], result["burst"]["ssm_higher_throughput"]
    key_of = {category: key for key, category in HEADROOM_OF.items()}
    for op, per_min in result["ecs_calls_per_min"].items():
        key = min((key_of[c] for c in CATEGORIES[op]), key=lambda k: headroom[k])
        stops = op == "StopTask" or (op == "DeleteParameters" and inputs.storage)  # a server's own, at its stop
        when = "steady" if op in STEADY else "class end" if stops else "burst"
        quota = f"{key.replace('_', ' ')} {account_quota(HEADROOM_OF[key], ssm_higher_throughput=higher).rate:g}/s"
        table.add_row(op, when, f"{per_min:,.1f}", quota, f"{headroom[key]:.0%}")
    if "efs_access_points" in headroom:
        table.add_row("EFS access points", "total", f"{inputs.servers:,}", f"{EFS_ACCESS_POINTS:,} per FS",
                      f"{headroom['efs_access_points']:.0%}")  # fmt: skip
    return table


def render_inputs() -> Table:
    """The inputs this machine cannot measure, with their sources."""
    table = _table("Inputs (not measured here)", "input", "source")
    for name, source in INPUT_SOURCES.items():
        table.add_row(name, source)
    return table


def render_fit(document: dict[str, Any]) -> Group:
    """Each target's coefficients and every observation with its residual."""
    parts: list[Any] = []
    for target, fit in document["targets"].items():
        terms = ", ".join(f"{name} {value:.4g}" for name, value in fit["coefficients"].items())
        table = _table(f"{target} ({fit['unit']}): {terms}", "run", "observed", "fitted", "residual")
        for row in fit["observations"]:
            share = row["residual"] / row["observed"] if row["observed"] else 0.0
            table.add_row(row["source"], f"{row['observed']:.3g}", f"{row['fitted']:.3g}",
                          f"{row['residual']:+.3g} ({share:+.0%})")  # fmt: skip
        parts.append(table)
    parts.extend(Text(line) for line in document.get("skipped", []))
    return Group(*parts)


def matrix_rows(inputs: PlanInputs, coefficients: dict[str, dict[str, float]], prices: Prices) -> list[dict[str, Any]]:
    """One plan per band, with what to change at that band and why."""
    rows = []
    for servers in BANDS:
        band = replace(inputs, servers=servers)
        result = plan(band, coefficients, prices)
        rows.append({"servers": servers, "plan": result, "advice": advice(band, result)})
    return rows


def advice(inputs: PlanInputs, result: dict[str, Any]) -> list[str]:
    """What to change at this size, each with the figure that asks for it."""
    hub, notes = result["hub"], []
    if hub["count"] > 1:
        notes.append(
            f"{hub['count']} hubs, users sharded: one hub would need {hub['cpu_pct_loaded_one_hub']:.0f} % of a core"
        )
    if result["restart_s"] > MAX_OUTAGE_S:
        notes.append(f"restart {result['restart_s']:.0f} s > {MAX_OUTAGE_S:g} s outage budget: shard users over hubs")
    if not inputs.events and result["sweep_s"] > 0.1 * inputs.poll_interval:
        notes.append(f"events on: a sweep takes {result['sweep_s']:.1f} s of every {inputs.poll_interval:g} s")
    activity_share = 1 - hub["cpu_pct_idle"] / hub["cpu_pct_loaded"] if hub["cpu_pct_loaded"] else 0.0
    if activity_share > 0.5 and hub["cpu_pct_loaded"] > inputs.target_cpu_pct / 2:
        notes.append(f"activity interval 600 s: requests are {activity_share:.0%} of hub CPU")
    if result["quota_headroom"]["read"] < MIN_READ_HEADROOM:
        notes.append(f"events on or a longer poll: cluster-read quota under {MIN_READ_HEADROOM:.0%} free")
    burst = result["burst"]
    if burst["paced_by"] in LIFTS:
        step, lift = burst["paced_by"], LIFTS[burst["paced_by"]].format(**burst)
        useless = step == "PutParameter" and burst["ssm_higher_throughput"]  # already on: AWS allows no more
        if useless or burst["ready_s_other_throughput"] * HEADROOM >= result["burst_ready_s"]:
            others = {name: secs for name, secs in burst["steps_s"].items() if name != step}
            second = max(others, key=lambda name: others[name])
            lift = f"{second} next, {others[second]:.0f} s" if step == "PutParameter" else lift
        notes.append(f"burst {result['burst_ready_s']:.0f} s, paced by {step}: {lift}")
    return notes or ["no change"]


def render_matrix(rows: list[dict[str, Any]]) -> Table:
    title = "Decision matrix (fitted on our bench machine, options as given)"
    table = _table(title, "servers", "hub", "CPU %", "restart", "hub+DB $", "change and why")
    for row in rows:
        result = row["plan"]
        hub = result["hub"]
        table.add_row(f"{row['servers']:,}", f"{hub['count']}x{hub['vcpu']:g}/{hub['memory_gib']:g}",
                      f"{hub['cpu_pct_loaded']:.0f}", f"{result['restart_s']:.0f} s",
                      f"{result['cost_per_month']['hub'] + result['cost_per_month']['database']:,.0f}",
                      "; ".join(row["advice"]))  # fmt: skip
    table.caption = "hub = count x vCPU/GiB per hub; hub+DB $ = USD per month for hub tasks and database"
    table.caption_justify = "left"
    return table


def print_all(console: Console, *renderables: Any) -> None:
    for renderable in renderables:
        console.print(renderable)
