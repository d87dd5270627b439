"""ECS API quotas as token buckets, shared by the hub's client and local ECS's server.

AWS meters ECS calls per account and Region in token buckets shared by every action of a
category. The hub keeps itself under the quota with the same model local ECS uses to
enforce it, so both sides agree on what "Rate exceeded" means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Quota:
    """A token bucket's shape: `burst` tokens at most, refilled at `rate` per second."""

    burst: float
    rate: float


#: category -> quota, as documented by AWS for ECS.
AWS_QUOTAS: dict[str, Quota] = {
    "cluster-read": Quota(burst=100, rate=20),
    "cluster-modify": Quota(burst=100, rate=40),
    "fargate-run-task": Quota(burst=20, rate=20),
}

#: operation -> the categories one call draws a token from.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "DescribeTasks": ("cluster-read",),
    "ListTasks": ("cluster-read",),
    "RunTask": ("cluster-modify", "fargate-run-task"),
    "StopTask": ("cluster-modify",),
}


@dataclass
class TokenBucket:
    """A token bucket with an injectable clock, so tests never sleep."""

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
