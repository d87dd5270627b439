"""Local ECS's settings: one plain dataclass, shared by the CLI, tests and benchmarks."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from pathlib import Path

from calliope_hub.ecsfacts import AWS_QUOTAS, SSM_PUT_HIGHER_THROUGHPUT, Quota
from calliope_hub.localecs.dwell import Dwell

#: the short names `--throttle` accepts, mapped to the AWS quota categories.
THROTTLE_NAMES = {
    "read": "cluster-read",
    "modify": "cluster-modify",
    "fargate": "fargate-run-task",
    "ssm-put": "ssm-put-parameter",
    "ssm-delete": "ssm-delete-parameter",
}
#: `--throttle` for an account with Parameter Store's higher throughput: AWS's quotas but that PutParameter quota
HIGHER_THROUGHPUT_THROTTLE = f"ssm-put={SSM_PUT_HIGHER_THROUGHPUT.burst:g}:{SSM_PUT_HIGHER_THROUGHPUT.rate:g}"


#: named sim timings (`--sim-timing`). `fargate` is a cold start as Fargate users report it for a notebook
#: image, about 30-60 s to RUNNING (ENI, image pull with no cache, start), and a stop of tens of seconds
#: (ENI detach dominates); `fast` keeps tests quick.
SIM_TIMINGS: dict[str, dict[str, float]] = {
    "fast": {
        "sim_provisioning_s": 0.5,
        "sim_pending_s": 1.0,
        "sim_activating_s": 0.0,
        "sim_deactivating_s": 0.0,
        "sim_stopping_s": 0.0,
        "sim_deprovisioning_s": 0.0,
        "sim_jitter": 0.2,
    },
    "fargate": {
        "sim_provisioning_s": 10.0,
        "sim_pending_s": 30.0,
        "sim_activating_s": 3.0,
        "sim_deactivating_s": 2.0,
        "sim_stopping_s": 5.0,
        "sim_deprovisioning_s": 20.0,
        "sim_jitter": 0.35,
    },
}


def random_cidr() -> str:
    """A /16 of its own inside 127.0.0.0/8 (never 127.0.x.x).

    Several local ECS instances on one machine (a bench beside `make up`) then hand out
    different addresses, so their tasks never fight over the same ip:port.
    """
    return f"127.{random.randint(16, 254)}.0.0/16"


@dataclass
class LocalEcsConfig:
    host: str = "127.0.0.1"
    port: int = 9400
    #: "sim" pretends to run containers; "process" runs each container's command locally.
    mode: str = "sim"
    #: "aws" (ecsfacts.AWS_QUOTAS), "off", or "read=100:20,modify=100:40,fargate=20:20,ssm-put=10:10".
    throttle: str = "aws"
    events_url: str | None = None
    #: ("Name", "value") sent with every event, as an EventBridge API destination does.
    events_header: tuple[str, str] | None = None
    #: test switches for the event sink: fraction of events sent twice; shuffle delivery order.
    event_duplicate: float = 0.0
    event_reorder: bool = False
    #: sim mode: seconds in each state a task passes through, each +- `sim_jitter` as a fraction
    #: (STOPPING is the time a container takes to exit after SIGTERM). The defaults are SIM_TIMINGS["fast"].
    sim_provisioning_s: float = 0.5
    sim_pending_s: float = 1.0
    sim_activating_s: float = 0.0
    sim_deactivating_s: float = 0.0
    sim_stopping_s: float = 0.0
    sim_deprovisioning_s: float = 0.0
    sim_jitter: float = 0.2
    #: process mode: hold tasks for those timings too, around their processes (localecs.dwell);
    #: off, a process starts at once and a stopped task is gone as soon as it exits.
    process_timing: bool = False
    #: sim mode: fraction of tasks that stop with TaskFailedToStart instead of running.
    sim_fail_fraction: float = 0.0
    #: sim mode: spontaneous stops (EssentialContainerExited) per running task per hour.
    sim_stop_rate: float = 0.0
    #: seconds a STOPPED task stays describable before it is MISSING.
    retention_s: float = 3600.0
    #: seconds from SIGTERM to SIGKILL on StopTask (ECS_CONTAINER_STOP_TIMEOUT).
    stop_timeout_s: float = 30.0
    #: where task addresses come from: inside 127.0.0.0/8; 127.0.0.1 is never handed out.
    cidr: str = field(default_factory=random_cidr)
    tls: bool = False
    #: where `tls` keeps its self-signed certificate (a temporary directory when None).
    tls_dir: Path | None = None
    region: str = "us-east-1"
    account: str = "000000000000"
    #: process mode: where EFS access points keep their files (<data_dir>/efs/<fs id>/<path>), so they
    #: outlive local ECS; None means a temporary directory removed when local ECS stops.
    data_dir: Path | None = None
    #: access points per EFS file system, EFS's default quota (AccessPointLimitExceeded past it).
    efs_access_point_limit: int = 10_000
    #: when set, only AWS calls signed with this access key ID are answered (callers.py): the hub's
    #: key, which tasks never see, so no local task can run a task that reads another user's secret.
    access_key_id: str | None = None

    def process_dwell(self) -> Dwell:
        """Process mode's dwell: the sim timings of the states the control plane holds (with `process_timing`)."""
        if not self.process_timing:
            return Dwell({})
        seconds = {
            "PROVISIONING": self.sim_provisioning_s,
            "PENDING": self.sim_pending_s,
            "ACTIVATING": self.sim_activating_s,
            "DEACTIVATING": self.sim_deactivating_s,
            "DEPROVISIONING": self.sim_deprovisioning_s,
        }
        return Dwell(seconds, self.sim_jitter)

    def validate(self) -> None:
        """Refuse settings that cannot work, before anything starts."""
        if self.mode not in ("sim", "process"):
            raise ValueError(f"mode must be 'sim' or 'process', not {self.mode!r}")
        try:
            inside = ipaddress.IPv4Network(self.cidr, strict=False).subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        except ValueError:
            inside = False
        if not inside:
            raise ValueError(f"cidr {self.cidr} must lie inside 127.0.0.0/8 (loopback)")
        durations = {name: value for name, value in vars(self).items() if name in SIM_TIMINGS["fast"]}
        if any(not 0 <= value < 86_400 for value in durations.values()) or self.sim_jitter >= 1:
            raise ValueError(f"sim timings are seconds in [0, 86400) and sim_jitter a fraction below 1: {durations}")
        if not 0 <= self.sim_fail_fraction <= 1 or not 0 <= self.event_duplicate <= 1:
            raise ValueError("sim_fail_fraction and event_duplicate are fractions in [0, 1]")
        if self.efs_access_point_limit < 1:
            raise ValueError(f"efs_access_point_limit must be at least 1, not {self.efs_access_point_limit}")
        parse_throttle(self.throttle)


def parse_throttle(spec: str) -> dict[str, Quota] | None:
    """`--throttle` to quotas: None means off; a custom spec overrides the AWS defaults."""
    if spec == "off":
        return None
    if spec == "aws":
        return dict(AWS_QUOTAS)
    quotas = dict(AWS_QUOTAS)
    for item in spec.split(","):
        name, _, shape = item.partition("=")
        burst, _, rate = shape.partition(":")
        category = THROTTLE_NAMES.get(name.strip())
        try:
            quota = Quota(burst=float(burst), rate=float(rate))
        except ValueError:
            quota = None
        if category is None or quota is None or quota.burst <= 0 or quota.rate <= 0:
            raise ValueError(
                f"bad throttle {item!r}: use aws, off, or name=burst:rate with name one of "
                f"{', '.join(THROTTLE_NAMES)} (e.g. read=100:20,modify=100:40,fargate=20:20)"
            )
        quotas[category] = quota
    return quotas
