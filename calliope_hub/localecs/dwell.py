"""How long a task dwells in a lifecycle state: the `--sim-timing` seconds, each +- a jitter.

Sim mode times everything with it. Process mode does too when asked (`process_timing`), for the
states the control plane holds a task in around its processes (PROVISIONING, PENDING before they
start, ACTIVATING, DEACTIVATING, DEPROVISIONING), so a Fargate-like cold start and stop can be
watched with real servers; STOPPING stays the processes' own exit after SIGTERM.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Dwell:
    """Seconds per state (0 for a state not named), drawn +- `jitter` as a fraction."""

    seconds: Mapping[str, float]
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def __call__(self, status: str) -> float:
        return self.jittered(self.seconds.get(status, 0.0))

    def jittered(self, seconds: float) -> float:
        return max(0.0, seconds * (1 + self.rng.uniform(-self.jitter, self.jitter)))
