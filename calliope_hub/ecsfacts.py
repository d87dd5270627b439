"""Facts about ECS and AWS that the hub and local ECS both rely on, each written once.

Local ECS imports nothing else from calliope_hub (the ECS wire protocol is the only link
between the two), so whatever both sides must agree on lives here: the task lifecycle, the
API limits, the `startedBy` alphabet, the Fargate size table, the quotas with the token
bucket that models them, and the shape of an EventBridge "ECS Task State Change" event.
When two copies of a fact drift, the hub and its test double disagree about AWS and the
tests stop meaning anything; hence one module of plain data and pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# ---------------------------------------------------------------- JSON a stranger may send

#: the deepest nesting of arrays and objects taken (no ECS request or event needs more than 8,
#: and Python's decoder would otherwise recurse until it fails).
MAX_JSON_DEPTH = 32
#: integers longer than this are not JSON that AWS takes (its numbers are at most 64-bit).
MAX_JSON_INT_DIGITS = 19


class JsonBoundsError(ValueError):
    """Not JSON, or JSON beyond the bounds above; the message says which, for a 400."""


def _no_constant(name: str) -> Any:
    raise JsonBoundsError(f"{name} is not a JSON number.")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise JsonBoundsError(f"the number {text[:40]} is out of range.")
    return number


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise JsonBoundsError(f"the integer {text[:40]}... has more than {MAX_JSON_INT_DIGITS} digits.")
    return int(text)


def bounded_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON with no NaN/Infinity, no integer past 19 digits and no nesting past `max_depth`.

    Both local ECS's intake and the hub's events endpoint take strangers' bodies through
    this, so neither can be made to recurse, overflow a float or hold a non-finite number.
    """
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise JsonBoundsError(f"nested deeper than {max_depth} levels.") from None
    except JsonBoundsError:
        raise
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JsonBoundsError(str(error)) from None
    opened = raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    if opened > max_depth and _depth_exceeds(value, max_depth):
        raise JsonBoundsError(f"nested deeper than {max_depth} levels.")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# ---------------------------------------------------------------- tasks and API limits

#: ECS's task lifecycle, in order.
LIFECYCLE = (
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
)
#: DescribeTasks takes at most this many ARNs a call.
DESCRIBE_LIMIT = 100
#: ListTasks answers at most this many ARNs a page (its maxResults).
LIST_PAGE_LIMIT = 100
#: RunTask's startedBy: at most 128 characters of [A-Za-z0-9-_/].
MAX_STARTED_BY = 128
STARTED_BY_PATTERN = re.compile(r"^[A-Za-z0-9_/-]{1,128}$")
_NOT_STARTED_BY = re.compile(r"[^A-Za-z0-9_/-]")


def started_by(hub_id: str) -> str:
    """The startedBy every task of hub `hub_id` carries: calliope-hub/<hub_id> in ECS's alphabet.

    Other characters become "-" and the result is cut at 128, so "prod.hub" is found as
    calliope-hub/prod-hub by every ListTasks that looks for this hub's tasks.
    """
    if not hub_id:
        raise ValueError("hub_id must not be empty: it scopes startedBy")
    return _NOT_STARTED_BY.sub("-", f"calliope-hub/{hub_id}")[:MAX_STARTED_BY]


# ---------------------------------------------------------------- Fargate sizes

#: Fargate's valid task memory (MiB) for each task cpu (units), from the AWS docs.
FARGATE_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}


def is_fargate_size(cpu: int, memory: int) -> bool:
    """Whether (cpu units, memory MiB) is a task size Fargate runs."""
    return memory in FARGATE_MEMORY.get(cpu, ())


# ---------------------------------------------------------------- quotas


@dataclass(frozen=True)
class Quota:
    """A token bucket's shape: `burst` tokens at most, refilled at `rate` per second."""

    burst: float
    rate: float


#: category -> quota per account and Region: AWS's documented ECS figures, plus the assumed buckets named below.
AWS_QUOTAS: dict[str, Quota] = {
    "cluster-read": Quota(burst=100, rate=20),
    "cluster-modify": Quota(burst=100, rate=40),
    "fargate-run-task": Quota(burst=20, rate=20),
    # RegisterTaskDefinition: 20 burst, 1/s sustained (the ECS API reference's "Request throttling" page).
    "task-definition-modify": Quota(burst=20, rate=1),
    # CreateAccessPoint: an assumption, NOT an AWS figure. EFS documents no request-rate quota for any action: its
    # quotas page (efs/latest/ug/limits.html) lists resources and throughput only. The one documented throttle
    # (ThrottlingException in botocore's EFS model 2015-02-01, the CreateAccessPoint note, create-access-point.html)
    # answers creates "sent in quick succession" while a file system nears its access-point limit (10,000; the
    # model's ThrottlingException text still says 120). 10 burst, 5/s spreads a wave of first spawns instead.
    "efs-access-point-create": Quota(burst=10, rate=5),
    # SSM PutParameter: the SSM quotas page publishes figures for reads only (40 TPS shared by GetParameter(s)),
    # and its throughput page says only that PutParameter counts against "Parameter Store throughput". AWS Support
    # gave 3 TPS at the standard throughput and 10 TPS with higher throughput (quoted in
    # github-aws-runners/terraform-aws-github-runner#2944). Every spawn writes its token once, so this, not ECS,
    # caps spawns per second: ~2.4/s at the hub's 0.8 share, ~8/s with higher throughput
    # (c.ECSSpawner.ssm_higher_throughput). The burst of 3 is an assumption (a second's worth).
    "ssm-put-parameter": Quota(burst=3, rate=3),
    # SSM DeleteParameter(s): no figure published or quoted anywhere we found; an assumed bucket at the
    # PutParameter rate, so deletes after a burst queue instead of meeting an unknown throttle.
    "ssm-delete-parameter": Quota(burst=3, rate=3),
}

#: The share of each quota a hub's client allows itself. A bucket at exactly the quota is throttled by the least
#: timing skew, and the account's other callers (the console, CI, a second hub) share it.
CLIENT_QUOTA_SHARE = 0.8

#: the quota categories of the calls the hub's ECS client makes (calliope_hub.ecs.api.EcsApi)
ECS_QUOTA_CATEGORIES = ("cluster-read", "cluster-modify", "fargate-run-task", "task-definition-modify")
#: the quota categories of the hub's SSM client (calliope_hub.ecs.secrets.SecretStore)
SSM_QUOTA_CATEGORIES = ("ssm-put-parameter", "ssm-delete-parameter")
#: PutParameter with Parameter Store's higher throughput turned on for the account and Region (see above)
SSM_PUT_HIGHER_THROUGHPUT = Quota(burst=10, rate=10)


def account_quota(category: str, *, ssm_higher_throughput: bool = False) -> Quota:
    """AWS's quota of `category` for the account and Region; PutParameter's is the higher one when the account
    turned on Parameter Store's higher throughput (c.ECSSpawner.ssm_higher_throughput)."""
    if ssm_higher_throughput and category == "ssm-put-parameter":
        return SSM_PUT_HIGHER_THROUGHPUT
    return AWS_QUOTAS[category]


def client_quotas(
    categories: tuple[str, ...] = ECS_QUOTA_CATEGORIES, *, ssm_higher_throughput: bool = False
) -> dict[str, Quota]:
    """The token buckets one of the hub's clients keeps: AWS's quotas of `categories` at CLIENT_QUOTA_SHARE.

    The one place the share is applied, so the hub's clients and the planner (tools/plan/burst.py), which
    predicts their pace, cannot drift apart. A burst never falls below one token, or a bucket could never
    let a call through.
    """
    quotas = {category: account_quota(category, ssm_higher_throughput=ssm_higher_throughput) for category in categories}
    share = CLIENT_QUOTA_SHARE
    return {name: Quota(burst=max(1.0, q.burst * share), rate=q.rate * share) for name, q in quotas.items()}


#: operation -> the categories one call draws a token from.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "DescribeTasks": ("cluster-read",),
    "ListTasks": ("cluster-read",),
    "RunTask": ("cluster-modify", "fargate-run-task"),
    "StopTask": ("cluster-modify",),
    "RegisterTaskDefinition": ("task-definition-modify",),
    "CreateAccessPoint": ("efs-access-point-create",),
    "PutParameter": ("ssm-put-parameter",),
    "DeleteParameter": ("ssm-delete-parameter",),
    "DeleteParameters": ("ssm-delete-parameter",),
}


@dataclass
class TokenBucket:
    """A token bucket with an injectable clock, so tests never sleep.

    The hub's client keeps itself under the quota with the same model local ECS uses to
    enforce it, so both sides agree on what "Rate exceeded" means.
    """

    quota: Quota
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    _stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.quota.burst
        self._stamp = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.quota.burst, self.tokens + (now - self._stamp) * self.quota.rate)
        self._stamp = now

    def try_take(self, n: float = 1) -> bool:
        """Take `n` tokens if they are there; never waits."""
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def delay_for(self, n: float = 1) -> float:
        """Seconds until `n` tokens will be there (0 when they are there now)."""
        self._refill()
        missing = n - self.tokens
        return 0.0 if missing <= 0 else missing / self.quota.rate


class QuotaBuckets:
    """One bucket per category; an operation takes a token from each of its categories."""

    def __init__(self, quotas: dict[str, Quota], clock: Callable[[], float] = time.monotonic):
        self.buckets = {name: TokenBucket(q, clock) for name, q in quotas.items()}

    def _for(self, operation: str) -> list[TokenBucket]:
        return [self.buckets[c] for c in CATEGORIES.get(operation, ()) if c in self.buckets]

    def try_take(self, operation: str) -> bool:
        """Take one token for `operation` from every bucket it draws on, or none at all."""
        buckets = self._for(operation)
        if any(b.delay_for() > 0 for b in buckets):
            return False
        for b in buckets:
            b.try_take()
        return True

    def delay_for(self, operation: str) -> float:
        """Seconds until `operation` could take its tokens."""
        return max((b.delay_for() for b in self._for(operation)), default=0.0)


# ---------------------------------------------------------------- EventBridge events

SOURCE = "aws.ecs"
DETAIL_TYPE = "ECS Task State Change"
#: Task fields (at any depth) that DescribeTasks gives as epoch numbers and events as ISO strings.
TIMESTAMP_FIELDS = frozenset({
    "createdAt", "startedAt", "stoppingAt", "stoppedAt", "pullStartedAt", "pullStoppedAt", "connectivityAt",
    "executionStoppedAt", "updatedAt", "lastStartedAt",
})  # fmt: skip


def iso_timestamp(epoch: float, *, milliseconds: bool = True) -> str:
    """EventBridge's form: 2020-01-23T17:57:34.402Z in detail, 2020-01-23T17:57:58Z for `time`."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds" if milliseconds else "seconds").replace("+00:00", "Z")


def task_state_change_event(
    task: dict[str, Any], *, region: str | None = None, account: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """A DescribeTasks task (epoch numbers or botocore datetimes) as EventBridge delivers it.

    Local ECS publishes its tasks through this and `calliope-hub monitor` the tasks it
    described, so the hub sees one event shape from both. As in real events, timestamps are
    ISO strings with milliseconds and `detail.updatedAt` is the moment of the change (`now`)
    when the task has none. Region and account default to the ones in the task's ARN.
    """
    stamp = time.time() if now is None else now
    detail = _with_iso_timestamps(task)
    detail.setdefault("updatedAt", iso_timestamp(stamp))
    arn = str(task["taskArn"])
    arn_parts = arn.split(":")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPE,
        "source": SOURCE,
        "account": account if account is not None else _arn_part(arn_parts, 4),
        "time": iso_timestamp(stamp, milliseconds=False),
        "region": region if region is not None else _arn_part(arn_parts, 3),
        "resources": [arn],
        "detail": detail,
    }


def _arn_part(parts: list[str], index: int) -> str:
    return parts[index] if len(parts) > 5 else ""


def _with_iso_timestamps(value: Any) -> Any:
    """A deep copy of a JSON-like value with its timestamps as ISO strings."""
    if isinstance(value, dict):
        return {key: _as_event_value(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_iso_timestamps(item) for item in value]
    return value


def _as_event_value(key: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_timestamp(value.timestamp())
    if key in TIMESTAMP_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return iso_timestamp(value)
    return _with_iso_timestamps(value)
