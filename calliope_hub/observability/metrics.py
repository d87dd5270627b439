"""Calliope Hub's Prometheus metrics.

They live in prometheus_client's default registry, which is the one JupyterHub serves at
/hub/metrics, so operators scrape a single endpoint. Every name starts with ``calliope_``.
Each metric has one owner that updates it; the owner is named in its help text's module.
"""

from __future__ import annotations

import math

from prometheus_client import Counter, Gauge, Histogram


def observe_finite(histogram: Histogram, value: float) -> bool:
    """Observe `value` only when it is a finite number: one NaN or infinity in a histogram's
    sum stays there for the life of the process and makes every average from it useless."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    histogram.observe(value)
    return True


# calliope_hub.ecs.api
ECS_API_CALLS = Counter(
    "calliope_ecs_api_calls",
    "AWS API calls made by this process: ECS's, and the SSM, EFS and SQS calls beside them, "
    "by operation and outcome (ok, throttled, error)",
    ["operation", "outcome"],
)
ECS_THROTTLES = Counter(
    "calliope_ecs_throttles",
    "Throttling answers received from ECS, SSM, EFS or SQS, by operation, before botocore's retries",
    ["operation"],
)

# calliope_hub.ecs.status
SWEEP_DURATION = Histogram(
    "calliope_sweep_duration_seconds",
    "Wall time of one TaskWatcher sweep over every watched task",
    ["cluster"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SWEEP_SIZE = Gauge(
    "calliope_sweep_tasks",
    "Tasks described by the last TaskWatcher sweep",
    ["cluster"],
)
WATCHED_TASKS = Gauge(
    "calliope_watched_tasks",
    "Tasks the TaskWatcher tracks, by ECS lastStatus",
    ["cluster", "last_status"],
)

# calliope_hub.events.ingest
EVENTS = Counter(
    "calliope_ecs_events",
    "ECS Task State Change events received, by outcome: hint (a change worth a DescribeTasks soon), "
    "stale (an equal or newer version is known), implausible (a version no ECS answer supports), "
    "ignored (other source, detail-type, cluster or task), confirming (a STOPPED event sent to "
    "DescribeTasks), then confirmed or refuted, unauthorized, invalid, overflow (queue full), "
    "poison (an SQS message dropped after its last try)",
    ["outcome"],
)
EVENT_LAG = Histogram(
    "calliope_ecs_event_lag_seconds",
    "Time from an event's `time` to its application by the TaskWatcher",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

# calliope_hub.spawner
SPAWN_DURATION = Histogram(
    "calliope_spawn_duration_seconds",
    "Time from RunTask to a running task with an address, by service, size and outcome",
    ["service", "size", "outcome"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
TIME_TO_READY = Histogram(
    "calliope_time_to_ready_seconds",
    "Time from a spawn's start to its server answering, by service, size and start (warm, cold)",
    ["service", "size", "start"],
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 45, 60, 90, 120, 300),
)

# calliope_hub.ecs.orphans
ORPHANS = Counter(
    "calliope_orphans",
    "Tasks started by this hub that no spawner owned, by action (found, stopped, adopted)",
    ["action"],
)

# calliope_hub.pool.keeper
POOL_TASKS = Gauge(
    "calliope_pool_tasks",
    "Warm tasks this hub keeps, by pool (SERVICE/SIZE) and state (starting, idle, claiming)",
    ["pool", "state"],
)
POOL_CLAIMS = Counter(
    "calliope_pool_claims",
    "Claims of warm tasks by spawns, by pool and outcome (claimed; refused, unreachable, untagged: failures)",
    ["pool", "outcome"],
)
POOL_FALLBACKS = Counter(
    "calliope_pool_fallbacks",
    "Spawns of a pooled service and size that cold-started instead, by pool and reason (empty, failed)",
    ["pool", "reason"],
)
POOL_LOST = Counter(
    "calliope_pool_lost",
    "Warm tasks that ended before a claim, by pool and reason (stopped, not-ready, recycled, surplus, failed-claim)",
    ["pool", "reason"],
)
