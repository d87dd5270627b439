"""Predict one deployment from the fitted coefficients, ECS's documented quotas and the inputs.

What is fitted (calibrate.py) is measured on our bench; what follows from the design is
computed, not fitted: the watcher makes ceil(N/100) DescribeTasks per sweep and the orphan
sweep ceil(N/100) ListTasks per interval; a burst makes one RunTask per server. The rest
(cold start, prices, health checks) is an input with its source (inputs.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from calliope_hub.ecsfacts import CATEGORIES, DESCRIBE_LIMIT, LIST_PAGE_LIMIT, account_quota
from calliope_hub.tools.plan.burst import (
    ARRIVAL_S,
    JUPYTERHUB_START_TIMEOUT,
    Burst,
    burst_with,
    plan_burst,
    ready_s,
    start_timeout,
)
from calliope_hub.tools.plan.burst import calls_per_min as burst_calls
from calliope_hub.tools.plan.calibrate import predict_target
from calliope_hub.tools.plan.inputs import SERVER_SIZES, PlanInputs, Prices, fargate_task_size

#: the measured median from an ECS event to the hub showing the server stopped (docs/benchmarks/detection.json).
EVENT_DETECT_S = 0.26
#: JupyterHub's SQLAlchemy pool per hub process (pool_size 5 + max_overflow 10) plus the orphan sweeper's lock session.
DB_CONNECTIONS_PER_HUB = 16
#: (max activity writes/s, RDS class): rule of thumb, not measured; the hub's tables are a few KiB per user.
DATABASE_CLASSES = ((20.0, "db.t4g.small"), (100.0, "db.t4g.medium"), (math.inf, "db.r6g.large"))
#: The restart, spawn and sweep figures were measured with a whole core free for the hub process.
MIN_HUB_VCPU = 1.0
#: GiB of gp3 storage priced for the hub database (its tables are tens of MiB at 10,000 servers).
RDS_STORAGE_GIB = 20
#: EFS access points per file system (AWS default; older docs say 1,000): one per user with storage on.
EFS_ACCESS_POINTS = 10_000
#: ECS Task State Change events one task emits from PROVISIONING to STOPPED (one per lifecycle step).
EVENTS_PER_TASK = 8
#: Parameter Store API interactions one start makes: the hub's PutParameter and DeleteParameters, and the
#: GetParameters ECS makes to resolve the token; billed only with higher throughput on (prices.json).
SSM_INTERACTIONS_PER_START = 3


def ecs_calls_per_min(inputs: PlanInputs, burst: Burst) -> dict[str, float]:
    """AWS calls per minute by operation: the steady reads, and the burst's calls while it lasts (burst.py)."""
    pages = math.ceil(inputs.servers / DESCRIBE_LIMIT)
    calls = {
        "DescribeTasks": pages * 60.0 / inputs.sweep_interval,
        "ListTasks": math.ceil(inputs.servers / LIST_PAGE_LIMIT) * 60.0 / inputs.orphan_interval,
        **burst_calls(inputs, burst),
    }
    return {op: round(value, 2) for op, value in calls.items()}


#: quota_headroom key -> its quota category in ecsfacts.AWS_QUOTAS (ecsfacts.CATEGORIES: which calls draw on it)
HEADROOM_OF = {
    "read": "cluster-read",
    "modify": "cluster-modify",
    "fargate_launch": "fargate-run-task",
    "task_definitions": "task-definition-modify",
    "ssm_put": "ssm-put-parameter",
    "ssm_delete": "ssm-delete-parameter",
    "efs_create": "efs-access-point-create",
}


def quota_headroom(inputs: PlanInputs, calls: dict[str, float], higher_throughput: bool) -> dict[str, float]:
    """Share of each quota left over (1 = unused, below 0 = over) at the busiest minute: AWS's rates, and
    EFS access points per file system. The hub keeps itself to CLIENT_QUOTA_SHARE, so a step that paces a
    burst shows 1 - that share."""
    headroom = {}
    for key, category in HEADROOM_OF.items():
        operations = [op for op in calls if category in CATEGORIES.get(op, ())]
        if operations:
            per_s = sum(calls[op] for op in operations) / 60.0
            account = account_quota(category, ssm_higher_throughput=higher_throughput).rate
            headroom[key] = round(1 - per_s / account, 4)
    if inputs.storage:
        headroom["efs_access_points"] = round(1 - inputs.servers / EFS_ACCESS_POINTS, 4)
    return headroom


def hub_figures(inputs: PlanInputs, coefficients: dict[str, dict[str, float]]) -> dict[str, float]:
    """Fitted hub figures at this N: CPU idle/loaded, RSS, proxy CPU, restart, sweep and spawn time."""
    n = float(inputs.servers)
    sweep_rate = n / inputs.sweep_interval
    requests = n / inputs.activity_interval + inputs.api_rps
    x = {"servers": n, "sweep_tasks_per_s": sweep_rate, "requests_per_s": requests}
    idle = {**x, "requests_per_s": 0.0}
    fitted = {
        "cpu_pct_idle": predict_target(coefficients["cpu_pct"], idle),
        "cpu_pct_loaded": predict_target(coefficients["cpu_pct"], x),
        "rss_mib": predict_target(coefficients["rss_mib"], x),
        "proxy_cpu_pct": predict_target(coefficients["proxy_cpu_pct"], x),
        "restart_s": predict_target(coefficients["restart_s"], x),
        "sweep_s": predict_target(coefficients["sweep_s"], x),
        "spawn_s": max(1e-3, predict_target(coefficients["spawn_s"], x)),
    }
    # a line fitted from 1,000 servers up may cross zero below its data: no figure is negative
    return {**{name: max(0.0, value) for name, value in fitted.items()}, "requests_per_s": requests}


def hubs_needed(inputs: PlanInputs, cpu_pct_loaded: float) -> int:
    """Active hubs: one Python process uses one core, so past the CPU target the load must be split."""
    return max(1, math.ceil(cpu_pct_loaded / inputs.target_cpu_pct))


def detect_s(inputs: PlanInputs, sweep_s: float) -> tuple[float, float]:
    """(typical, worst) seconds until a stopped server is noticed."""
    if inputs.events:
        return EVENT_DETECT_S, inputs.reconcile_interval + sweep_s  # worst: the event is lost, the reconcile finds it
    return inputs.poll_interval / 2 + sweep_s, inputs.poll_interval * 1.1 + sweep_s


def database(inputs: PlanInputs, hubs: int) -> dict[str, Any]:
    """Database engine, class and connections. SQLite only for one hub with no standby."""
    processes = hubs + (1 if inputs.standby else 0)
    writes = inputs.servers / inputs.activity_interval
    if processes == 1:
        return {"engine": "sqlite", "class": "sqlite (hub volume)", "connections": 1, "writes_per_s": round(writes, 2)}
    name = next(cls for limit, cls in DATABASE_CLASSES if writes <= limit)
    return {"engine": "postgresql", "class": name, "connections": processes * DB_CONNECTIONS_PER_HUB,
            "writes_per_s": round(writes, 2)}  # fmt: skip


def api_calls_per_month(
    inputs: PlanInputs, calls: dict[str, float], hours: float, higher_throughput: bool
) -> dict[str, float]:
    """Billable request counts a month: ECS calls, SQS requests when events come through a queue, and
    Parameter Store interactions when its higher throughput is on (then every interaction is billed)."""
    starts = inputs.servers * inputs.starts_per_server_month
    per_start = 2 + (1 if inputs.storage else 0)  # RunTask, StopTask (+ RegisterTaskDefinition)
    steady = (calls["DescribeTasks"] + calls["ListTasks"]) * 60 * hours
    # EventBridge -> SQS: about EVENTS_PER_TASK state changes a task, each a send, a receive and a delete.
    sqs = starts * EVENTS_PER_TASK * 3 if inputs.events else 0.0
    ssm = starts * SSM_INTERACTIONS_PER_START if higher_throughput else 0.0
    return {"ecs": steady + starts * per_start, "sqs": sqs, "ssm": ssm}


def monthly_cost(
    inputs: PlanInputs, prices: Prices, hub_size: tuple[float, float], hubs: int, db: dict[str, Any],
    calls: dict[str, float], higher_throughput: bool,
) -> dict[str, float]:  # fmt: skip
    """USD per month by line."""
    hours = prices.hours_per_month
    requests = api_calls_per_month(inputs, calls, hours, higher_throughput)
    starts = inputs.servers * inputs.starts_per_server_month
    per_server = sum(
        share * prices.fargate_month(SERVER_SIZES[name][0] / 1024, SERVER_SIZES[name][1] / 1024)
        for name, share in inputs.size_mix.items()
    )
    rds = 0.0
    if db["engine"] == "postgresql":
        rds = prices.rds_hour(db["class"]) * hours + RDS_STORAGE_GIB * prices["rds_storage_gib_month"]
    cost = {
        "hub": (hubs + (1 if inputs.standby else 0)) * prices.fargate_month(*hub_size),
        "database": rds,
        "efs": inputs.servers * inputs.efs_gib_per_user * prices["efs_gib_month"] if inputs.storage else 0.0,
        "api_calls": requests["ecs"] / 1e6 * prices["ecs_api_per_million_calls"]
        + requests["sqs"] / 1e6 * prices["sqs_per_million_requests"]
        + requests["ssm"] / 1e4 * prices["ssm_higher_throughput_per_10k_interactions"],
        "nat": inputs.azs * prices["nat_gateway_hour"] * hours
        + starts * inputs.image_gib * prices["nat_gib_processed"],
        "user_servers": per_server * inputs.servers * inputs.server_hours_month / hours,
    }
    cost = {line: round(value, 2) for line, value in cost.items()}
    cost["total"] = round(sum(cost.values()), 2)
    return cost


def config_lines(inputs: PlanInputs, db: dict[str, Any], burst: Burst) -> list[str]:
    """The jupyterhub_config.py lines this plan assumes."""
    lines = [
        'c.JupyterHub.spawner_class = "ecs"',
        f"c.Spawner.poll_interval = {inputs.poll_interval:g}",
        f"c.JupyterHub.concurrent_spawn_limit = {burst.spawn_limit}",
        f"c.JupyterHub.last_activity_interval = {max(300, inputs.activity_interval):g}",
        f"c.OrphanSweep.interval = {inputs.orphan_interval:g}",
        "c.JupyterHub.cleanup_servers = False  # a restart keeps every server",
    ]
    timeout = start_timeout(inputs, burst.seconds)
    if timeout > JUPYTERHUB_START_TIMEOUT:  # the last of the burst queues for the quota before its cold start
        lines.append(f"c.Spawner.start_timeout = {timeout}")
    if burst.higher_throughput:  # the account's Parameter Store higher throughput must be on to match
        lines.append("c.ECSSpawner.ssm_higher_throughput = True")
    if inputs.events:
        lines += [
            "c.CalliopeEvents.enabled = True",
            f"c.CalliopeEvents.reconcile_interval = {inputs.reconcile_interval:g}",
        ]
    if db["engine"] == "postgresql":
        lines.append('c.JupyterHub.db_url = "postgresql://hub@<rds-endpoint>:5432/jupyterhub"')
    return lines


def burst_summary(inputs: PlanInputs, burst: Burst, spawn_s: float) -> dict[str, Any]:
    """What serves the burst: its pace, the step that sets it, each step's seconds for the whole burst, and
    the burst served with Parameter Store's other throughput setting."""
    other = burst_with(inputs, burst.spawns, spawn_s, not burst.higher_throughput)
    return {
        "ready_s_other_throughput": ready_s(inputs, other),
        "users_per_min": inputs.burst_per_min,
        "spawns_per_s": round(burst.spawns / max(ARRIVAL_S, burst.seconds), 2),
        "paced_by": "none" if burst.spawns <= 0 else burst.paced_by if burst.seconds > ARRIVAL_S else "arrivals",
        "ssm_higher_throughput": burst.higher_throughput,
        "spawn_limit": burst.spawn_limit,
        "steps_s": {step: round(seconds, 1) for step, seconds in burst.steps_s.items()},
    }


def plan(inputs: PlanInputs, coefficients: dict[str, dict[str, float]], prices: Prices) -> dict[str, Any]:
    """The whole plan, in the JSON shape docs/capacity.md documents (plus a few extra keys).

    With several hubs (users sharded), the hub figures are one hub's, at its share of the servers.
    """
    one_hub = hub_figures(inputs, coefficients)["cpu_pct_loaded"]
    hubs = hubs_needed(inputs, one_hub)
    hub = hub_figures(replace(inputs, servers=math.ceil(inputs.servers / hubs)), coefficients)
    cores = (hub["cpu_pct_loaded"] + hub["proxy_cpu_pct"]) / inputs.target_cpu_pct
    gib = hub["rss_mib"] / 1024 / (1 - inputs.memory_free_pct / 100)
    size = fargate_task_size(max(MIN_HUB_VCPU, cores), gib)
    burst = plan_burst(inputs, hub["spawn_s"])
    calls = ecs_calls_per_min(inputs, burst)
    db = database(inputs, hubs)
    typical, worst = detect_s(inputs, hub["sweep_s"])
    restart = hub["restart_s"]
    failover = inputs.health_check_s + restart + (0.0 if inputs.standby else inputs.cold_start_s)
    return {
        "servers": inputs.servers,
        "hub": {
            "count": hubs,
            "standby": inputs.standby,
            "vcpu": size[0],
            "memory_gib": size[1],
            "cpu_pct_idle": round(hub["cpu_pct_idle"], 2),
            "cpu_pct_loaded": round(hub["cpu_pct_loaded"], 2),
            "rss_mib": round(hub["rss_mib"], 1),
            "proxy_cpu_pct": round(hub["proxy_cpu_pct"], 2),
            "requests_per_s": round(hub["requests_per_s"], 2),
            "cpu_pct_loaded_one_hub": round(one_hub, 2),
        },
        "database": db,
        "ecs_calls_per_min": calls,
        "quota_headroom": quota_headroom(inputs, calls, burst.higher_throughput),
        "restart_s": round(restart, 1),
        "failover_s": round(failover, 1),
        "burst_ready_s": ready_s(inputs, burst),
        "burst": burst_summary(inputs, burst, hub["spawn_s"]),
        "detect_s": round(worst, 1),
        "detect_typical_s": round(typical, 2),
        "sweep_s": round(hub["sweep_s"], 2),
        "cost_per_month": monthly_cost(inputs, prices, size, hubs, db, calls, burst.higher_throughput),
        "config": config_lines(inputs, db, burst),
    }
