"""Percentile summaries shared by the loadtest and the bench.

Our claims are tail latencies (P95/P99/max), never means: a mean hides the spawns that
users actually complain about. Both tools summarise samples the same way through
:class:`Percentiles`, so their JSON is comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, by nearest rank.

    Nearest rank always answers with a value that was observed, so a P99 over 20 samples
    is the slowest sample rather than an interpolation between two real ones.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Percentiles:
    """P50/P95/P99/max of a sample; all None when nothing was measured."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Percentiles:
        ordered = sorted(values)
        if not ordered:
            return cls(count=0, p50=None, p95=None, p99=None, max=None)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )

    def to_json(self, ndigits: int = 4) -> dict[str, float | int | None]:
        """A JSON-ready dict, rounded so reports stay readable."""
        return {
            key: (round(value, ndigits) if isinstance(value, float) else value) for key, value in asdict(self).items()
        }
