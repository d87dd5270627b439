"""What a plan is asked for, and the inputs this machine cannot measure, each with its source.

The fitted coefficients (calibrate.py) cover what bench measures on one machine: hub CPU,
memory, restart and sweep times. Everything else a plan needs, prices, Fargate's cold start,
health-check timing, image size, is an input the operator can override, never a constant
hidden in a formula: the defaults below say where they come from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from calliope_hub.ecsfacts import FARGATE_MEMORY

#: how far a measurement may land from its prediction (issue 14's acceptance: +-20 %)
TOLERANCE = 0.20


class PlanError(ValueError):
    """Bad input to the planner: the command prints it and exits with status 2."""


#: (service, size) -> (cpu units, memory MiB), from the built-in catalog (calliope_hub/services/*.yaml).
SERVER_SIZES: dict[str, tuple[int, int]] = {
    "lab/small": (1024, 2048),
    "lab/medium": (2048, 8192),
    "lab/large": (4096, 16384),
    "chat/small": (512, 1024),
    "chat/medium": (1024, 4096),
    "waiide/small": (512, 1024),
    "waiide/medium": (2048, 8192),
    "waiide/large": (4096, 16384),
}

#: Sources of the defaults below; the report and docs/capacity.md print them.
INPUT_SOURCES: dict[str, str] = {
    "cold_start_s": "DESIGN.md: Fargate has no image cache; 20-90 s to RUNNING for a notebook image, 45 s typical",
    "health_check_s": "ECS container health check defaults: interval 30 s x 3 retries (AWS ECS HealthCheck docs)",
    "api_rps": "bench's loaded window: one GET /hub/api/users/<name> every 0.25 s; set your own UI/API traffic",
    "image_gib": "your image's compressed size (docker manifest inspect), pulled through NAT on every Fargate start",
    "starts_per_server_month": "one server start per working day (22); set from your usage",
    "efs_gib_per_user": "your per-user home directory size",
    "server_hours_month": "730 = every planned server runs all month (an upper bound); culling lowers it",
    "target_cpu_pct": "seed 001 'Target 60-70% CPU utilization': scale before one core passes this",
    "memory_free_pct": "seed 001 'Keep 30-40% memory free'",
    "new_user_share": "your class: 1 = every user of the burst starts for the first time (a term's first session, "
    "the worst case); with --storage only a new user registers a task definition and creates an access point",
    "slots": "slot definitions already registered for the service and size (storage off): 0 = a new deployment or a "
    "changed catalog (the worst case); the pool keeps its largest size across restarts",
}


@dataclass(frozen=True)
class PlanInputs:
    """One planning question. Validated on construction, so the model only sees sane values."""

    servers: int
    poll_interval: float = 30.0
    events: bool = False
    reconcile_interval: float = 300.0
    orphan_interval: float = 300.0
    activity_interval: float = 300.0
    burst_per_min: float = 0.0
    storage: bool = False
    region: str = "us-east-1"
    standby: bool = False
    size_mix: dict[str, float] = field(default_factory=lambda: {"lab/small": 1.0})
    cold_start_s: float = 45.0
    health_check_s: float = 90.0
    api_rps: float = 4.0
    image_gib: float = 1.0
    starts_per_server_month: float = 22.0
    efs_gib_per_user: float = 1.0
    server_hours_month: float = 730.0
    target_cpu_pct: float = 70.0
    memory_free_pct: float = 35.0
    new_user_share: float = 1.0
    slots: float = 0.0
    #: c.ECSSpawner.ssm_higher_throughput; None: the plan turns it on when it serves the burst sooner
    ssm_higher_throughput: bool | None = None
    azs: int = 2

    def __post_init__(self) -> None:
        if self.servers <= 0:
            raise PlanError(f"--servers must be a positive number of servers, not {self.servers}")
        positive = {
            "poll interval": self.poll_interval,
            "reconcile interval": self.reconcile_interval,
            "orphan sweep interval": self.orphan_interval,
            "activity interval": self.activity_interval,
            "cold start": self.cold_start_s,
            "target CPU %": self.target_cpu_pct,
        }
        for name, value in positive.items():
            if not value > 0 or math.isinf(value):
                raise PlanError(f"the {name} must be a finite number above 0, not {value}")
        others = (self.burst_per_min, self.api_rps, self.image_gib, self.efs_gib_per_user, self.health_check_s,
                  self.starts_per_server_month, self.server_hours_month, self.slots)  # fmt: skip
        if any(not 0 <= value < math.inf for value in others):
            raise PlanError("burst, API rate, image and EFS sizes, health check, starts, hours and slots must be >= 0")
        if not 0 <= self.new_user_share <= 1:
            raise PlanError(f"new_user_share must be from 0 to 1, not {self.new_user_share}")
        if not 0 <= self.memory_free_pct < 100:
            raise PlanError(f"memory_free_pct must be from 0 to below 100, not {self.memory_free_pct}")
        unknown = sorted(set(self.size_mix) - set(SERVER_SIZES))
        if unknown or not self.size_mix or any(not share > 0 for share in self.size_mix.values()):
            raise PlanError(f"size mix must name service/size pairs from {sorted(SERVER_SIZES)} with shares > 0")

    @property
    def sweep_interval(self) -> float:
        """Seconds between full DescribeTasks sweeps: the poll interval, or the reconcile with events."""
        return self.reconcile_interval if self.events else self.poll_interval


def parse_size_mix(text: str) -> dict[str, float]:
    """ "lab/small=0.7,chat/small=0.3" -> shares normalised to 1 (a bare name counts 1)."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, share = part.partition("=")
        try:
            shares[name.strip()] = float(share) if share else 1.0
        except ValueError:
            raise PlanError(f"size mix share {share!r} is not a number") from None
    total = sum(shares.values())
    if not shares or not total > 0:
        raise PlanError(f"size mix {text!r} names nothing")
    return {name: share / total for name, share in shares.items()}


@dataclass(frozen=True)
class Prices:
    """One region's list prices (USD); see prices.json for each figure's source."""

    region: str
    hours_per_month: float
    values: dict[str, Any]

    def __getitem__(self, key: str) -> float:
        return float(self.values[key])

    def rds_hour(self, db_class: str) -> float:
        """USD per hour of one RDS instance of `db_class`."""
        if db_class not in self.values["rds_hour"]:
            raise PlanError(f"prices for {self.region} have no rds_hour for {db_class}, which this plan needs")
        return float(self.values["rds_hour"][db_class])

    def fargate_month(self, vcpu: float, gib: float) -> float:
        """One Fargate task of this size running all month."""
        return (vcpu * self["fargate_vcpu_hour"] + gib * self["fargate_gib_hour"]) * self.hours_per_month


PRICE_KEYS = (
    "fargate_vcpu_hour", "fargate_gib_hour", "rds_storage_gib_month", "efs_gib_month", "nat_gateway_hour",
    "nat_gib_processed", "sqs_per_million_requests", "ecs_api_per_million_calls",
    "ssm_higher_throughput_per_10k_interactions",
)  # fmt: skip


def load_prices(region: str, path: Path | None = None) -> Prices:
    """The region's prices from `path`, or the packaged prices.json; PlanError when unusable."""
    try:
        text = path.read_text() if path else resources.files(__package__).joinpath("prices.json").read_text()
        document = json.loads(text)
        regions = dict(document["regions"])
        hours = document.get("hours_per_month", 730)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"prices file {path}: cannot read it ({exc})") from None
    if region not in regions:
        raise PlanError(f"unknown region {region!r}: the prices file has {sorted(regions)} (add yours with --prices)")
    values = regions[region]
    if not isinstance(values, dict):
        raise PlanError(f"prices for {region} are not a JSON object of prices")
    missing = [key for key in (*PRICE_KEYS, "rds_hour") if key not in values]
    if missing:
        raise PlanError(f"prices for {region} lack {missing}")
    rds = values["rds_hour"]
    bad = [key for key in PRICE_KEYS if not _is_price(values[key])]
    bad += [] if isinstance(rds, dict) and all(_is_price(v) for v in rds.values()) else ["rds_hour"]
    bad += [] if _is_price(hours) and hours > 0 else ["hours_per_month"]
    if bad:
        raise PlanError(f"prices for {region}: {bad} must be numbers >= 0 (rds_hour: an object of class -> USD/hour)")
    return Prices(region, float(hours), values)


def _is_price(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def fargate_task_size(vcpu_needed: float, gib_needed: float) -> tuple[float, float]:
    """The smallest Fargate size (vCPU, GiB) with at least this much of both."""
    for cpu_units, memories in sorted(FARGATE_MEMORY.items()):
        fits = [m for m in memories if m / 1024 >= gib_needed]
        if cpu_units / 1024 >= vcpu_needed and fits:
            return cpu_units / 1024, fits[0] / 1024
    raise PlanError(f"no Fargate task has {vcpu_needed:.2f} vCPU and {gib_needed:.1f} GiB: split across hubs")
