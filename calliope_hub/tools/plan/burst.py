"""A class-start burst: how soon its last user is served, and which quota sets the pace.

RunTask allows 20 launches a second, but a cold spawn first makes calls with far smaller
quotas: it writes the server's token to Parameter Store (PutParameter: 3/s, 10/s with higher
throughput); a service with per-user storage registers each new user's task definition
(RegisterTaskDefinition: 1/s) and creates their access point; a service without it runs in a
shared slot definition, which is free again only once its token is deleted (DeleteParameters)
after the task left PENDING, or else a new slot is registered (calliope_hub.ecs.slots).

The hub keeps each call under its quota with a token bucket (a burst, then a rate), so a
step's bucket lets B spawns through in (B - burst) / rate seconds and the slowest step paces
the whole burst. The buckets are the hub's own: ECS's and SSM's quotas from ecsfacts at the
hub's share, built by the function the hub builds its clients' buckets with
(ecsfacts.client_quotas), so a changed quota or share changes the plan with no copy to update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from calliope_hub.ecsfacts import AWS_QUOTAS, CATEGORIES, SSM_QUOTA_CATEGORIES, Quota, client_quotas
from calliope_hub.tools.plan.inputs import TOLERANCE, PlanInputs

#: users of a burst arrive over this many seconds (the burst is given as users per minute)
ARRIVAL_S = 60.0
#: room over a predicted need when it becomes a setting: the planner's prediction tolerance
HEADROOM = 1 + TOLERANCE
#: JupyterHub's defaults for the two settings a burst may need raised
JUPYTERHUB_SPAWN_LIMIT = 100
JUPYTERHUB_START_TIMEOUT = 60


def hub_buckets(higher_throughput: bool) -> dict[str, Quota]:
    """Quota category -> the bucket the hub keeps: ECS's at the hub's share, SSM's as its client builds
    them, and CreateAccessPoint's whole (assumed) quota, as calliope_hub.ecs.storage.Homes keeps it."""
    return {
        **client_quotas(),
        **client_quotas(SSM_QUOTA_CATEGORIES, ssm_higher_throughput=higher_throughput),
        "efs-access-point-create": AWS_QUOTAS["efs-access-point-create"],
    }


def through_bucket(calls: float, bucket: Quota) -> float:
    """Seconds until `calls` calls have passed a full token bucket."""
    return max(0.0, calls - bucket.burst) / bucket.rate


def through_slots(spawns: float, slots: float, grow: Quota, clear: Quota, hold: float) -> float:
    """Seconds until `spawns` slot leases were granted: `slots` registered before, more registered at `grow`'s
    pace, and each lease freed by a delete at `clear`'s pace once its task has held it `hold` seconds."""
    before_clears = slots + grow.burst + grow.rate * hold
    if spawns <= before_clears:
        return through_bucket(spawns - slots, grow)
    return hold + max(0.0, spawns - before_clears - clear.burst) / (grow.rate + clear.rate)


@dataclass(frozen=True)
class Burst:
    """`spawns` cold spawns asked for at once: the seconds each step needs to pass all of them."""

    spawns: float
    higher_throughput: bool
    steps_s: dict[str, float]
    #: c.JupyterHub.concurrent_spawn_limit the plan sets for it (spawn_limit)
    spawn_limit: int = JUPYTERHUB_SPAWN_LIMIT

    @property
    def paced_by(self) -> str:
        return max(self.steps_s, key=lambda step: self.steps_s[step])

    @property
    def seconds(self) -> float:
        """From the first spawn until the last one's task was launched."""
        return self.steps_s[self.paced_by]

    @property
    def per_second(self) -> float:
        """Spawns a second, as bench counts them when it asks for them all at once."""
        return self.spawns / self.seconds if self.seconds > 0 else math.inf


def quota_steps(inputs: PlanInputs, spawns: float, spawn_s: float, higher_throughput: bool) -> dict[str, float]:
    """Seconds `spawns` cold spawns need at each step the hub and AWS's quotas impose.

    `spawn_s` is the hub's own time per spawn (fitted). A slot's lease is held for the cold start: an upper
    bound on the time its task spends PENDING, where ECS reads the token (the image pull is part of it).
    """
    buckets = hub_buckets(higher_throughput)
    steps = {
        "hub": spawns * spawn_s,
        "RunTask": max(through_bucket(spawns, buckets[c]) for c in ("fargate-run-task", "cluster-modify")),
        "PutParameter": through_bucket(spawns, buckets["ssm-put-parameter"]),
    }
    if inputs.storage:
        new_users = spawns * inputs.new_user_share
        steps["RegisterTaskDefinition"] = through_bucket(new_users, buckets["task-definition-modify"])
        steps["CreateAccessPoint"] = through_bucket(new_users, buckets["efs-access-point-create"])
    else:
        grow, clear = buckets["task-definition-modify"], buckets["ssm-delete-parameter"]
        # a slot definition frees as its token is deleted (DeleteParameters), or another is registered
        steps["slot definitions"] = through_slots(spawns, inputs.slots, grow, clear, inputs.cold_start_s)
    return steps


def spawn_limit(inputs: PlanInputs, launched_s: float) -> int:
    """concurrent_spawn_limit: every spawn between its user's arrival and its server's answer holds one.

    At the quota's pace r, the most pending is at the last arrival: those still queued plus those in their
    cold start, B - r * (arrivals - cold start), and never fewer than one cold start of arrivals.
    """
    users = inputs.burst_per_min
    pace = users / max(launched_s, ARRIVAL_S)
    pending = max(users / ARRIVAL_S * inputs.cold_start_s, users - pace * max(0.0, ARRIVAL_S - inputs.cold_start_s))
    return max(JUPYTERHUB_SPAWN_LIMIT, math.ceil(min(users, pending * HEADROOM)))


def start_timeout(inputs: PlanInputs, launched_s: float) -> int:
    """Spawner.start_timeout: the last user queues (launch - arrival) before their task's cold start."""
    longest = max(0.0, launched_s - ARRIVAL_S) + inputs.cold_start_s
    return max(JUPYTERHUB_START_TIMEOUT, math.ceil(longest * HEADROOM))


def burst_with(inputs: PlanInputs, spawns: float, spawn_s: float, higher_throughput: bool) -> Burst:
    """The quota steps, and JupyterHub's own: its spawn limit over the cold start (set as spawn_limit says)."""
    steps = quota_steps(inputs, spawns, spawn_s, higher_throughput)
    limit = spawn_limit(inputs, max(steps.values()))
    steps["spawn limit"] = spawns * inputs.cold_start_s / limit
    return Burst(spawns, higher_throughput, steps, limit)


def plan_burst(inputs: PlanInputs, spawn_s: float) -> Burst:
    """The burst of `burst_per_min` users: higher throughput as asked, else on only where the burst needs it."""
    users = inputs.burst_per_min
    if inputs.ssm_higher_throughput is not None:
        return burst_with(inputs, users, spawn_s, inputs.ssm_higher_throughput)
    standard, higher = (burst_with(inputs, users, spawn_s, on) for on in (False, True))
    # worth asking AWS for (and paying for) only when it serves the burst sooner by more than the model's error
    sooner = ready_s(inputs, higher) * HEADROOM < ready_s(inputs, standard)
    return higher if sooner else standard


def ready_s(inputs: PlanInputs, burst: Burst) -> float:
    """Seconds from a class start until the last user's server is ready (0 without a burst)."""
    if burst.spawns <= 0:
        return 0.0
    return round(max(ARRIVAL_S, burst.seconds) + inputs.cold_start_s, 1)


def slots_registered(inputs: PlanInputs, burst: Burst) -> float:
    """Slot definitions the burst registers: leases no earlier slot or timely delete could free."""
    if inputs.storage:
        return 0.0
    clear = hub_buckets(burst.higher_throughput)["ssm-delete-parameter"]
    clearing = burst.seconds - inputs.cold_start_s
    cleared = clear.burst + clear.rate * clearing if clearing > 0 else 0.0
    return max(0.0, burst.spawns - inputs.slots - cleared)


def calls_per_min(inputs: PlanInputs, burst: Burst) -> dict[str, float]:
    """Calls a minute by operation while the burst lasts, as the hub's buckets pace them. StopTask (and with
    storage, the delete of a server's own parameter) come at the class end, as many within a minute."""
    users, new = burst.spawns, burst.spawns * inputs.new_user_share
    during = max(ARRIVAL_S, burst.seconds)
    #: operation -> (calls, seconds they are asked over)
    asked = {"RunTask": (users, during), "PutParameter": (users, during), "StopTask": (users, ARRIVAL_S)}
    if inputs.storage:  # per new user: a definition revision (its volume names the access point), an access point
        asked |= {"DeleteParameters": (users, ARRIVAL_S), "RegisterTaskDefinition": (new, during),
                  "CreateAccessPoint": (new, during)}  # fmt: skip
    else:  # a slot's token once its task left PENDING; a slot registered for each lease nothing freed
        asked |= {
            "DeleteParameters": (users, during),
            "RegisterTaskDefinition": (slots_registered(inputs, burst), during),
        }
    buckets = hub_buckets(burst.higher_throughput)
    return {operation: 60 * paced(calls, seconds, [buckets[c] for c in CATEGORIES[operation]])
            for operation, (calls, seconds) in asked.items()}  # fmt: skip


def paced(calls: float, seconds: float, buckets: list[Quota]) -> float:
    """Calls a second when `calls` are asked over `seconds` through the hub's `buckets`: at most the slowest
    bucket's rate. A bucket's first burst is left out: AWS's bucket for the same quota holds a larger one."""
    if calls <= 0:
        return 0.0
    spread = max(seconds, *(through_bucket(calls, bucket) for bucket in buckets))
    return min(calls / spread, *(bucket.rate for bucket in buckets))
