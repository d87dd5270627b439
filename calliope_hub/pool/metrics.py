"""The pool's Prometheus metrics (default registry, served at /hub/metrics); the keeper updates them.

Kept beside the keeper until calliope_hub.observability.metrics takes them (requests.md).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
TIME_TO_READY = Histogram(
    "calliope_time_to_ready_seconds",
    "Time from a spawn's start to its server answering, by service, size and start (warm, cold)",
    ["service", "size", "start"],
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 45, 60, 90, 120, 300),
)
