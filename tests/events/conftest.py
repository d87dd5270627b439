"""A recording watcher: what ingestion hands on is all the event tests need of a TaskWatcher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Recorder:
    """A watcher as ingestion sees it: takes an event's task and answers with a fixed outcome."""

    def __init__(self, outcome: str = "hint") -> None:
        self.outcome = outcome
        self.seen: list[str] = []

    def apply_event(self, detail: Mapping[str, Any]) -> str:
        self.seen.append(detail["taskArn"])
        return self.outcome
