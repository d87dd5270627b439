"""Optional CloudWatch Embedded Metric Format lines: the seeds' SpawnDuration and PollDuration/TaskCount.

Prometheus at /hub/metrics is the primary interface. A hub on ECS/Fargate often ships its
logs to CloudWatch Logs anyway, and EMF turns chosen log lines into CloudWatch metrics
without an agent, an exporter or PutMetricData calls (and their quota). Each line is one
JSON object whose `_aws` member follows the documented EMF specification:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

Off by default: `c.CloudWatchEmf.enabled = True` (calliope_hub.hub.config). Lines go to stdout ('-', what the
awslogs driver and FireLens collect) or are appended to a file the CloudWatch agent tails.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any


def emf_record(
    namespace: str,
    metrics: Mapping[str, tuple[float, str]],
    dimensions: Mapping[str, str],
    timestamp_ms: int,
) -> dict[str, Any]:
    """One EMF object: `metrics` maps name -> (value, CloudWatch unit); one dimension set."""
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }


class EmfWriter:
    """Writes one EMF line per observation; a whole line per write, so lines never interleave."""

    def __init__(self, stream: IO[str], namespace: str, wall_clock: Callable[[], float] = time.time):
        self.stream = stream
        self.namespace = namespace
        self._wall_clock = wall_clock
        self._lock = threading.Lock()

    def spawn_duration(self, service_type: str, seconds: float) -> None:
        self._write({"SpawnDuration": (seconds, "Seconds")}, {"ServiceType": service_type})

    def poll(self, seconds: float, task_count: int) -> None:
        self._write({"PollDuration": (seconds, "Seconds"), "TaskCount": (task_count, "Count")}, {"Operation": "Poll"})

    def _write(self, metrics: Mapping[str, tuple[float, str]], dimensions: Mapping[str, str]) -> None:
        record = emf_record(self.namespace, metrics, dimensions, int(self._wall_clock() * 1000))
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()


_writer: EmfWriter | None = None


def install(writer: EmfWriter | None) -> None:
    """Set (or clear, with None) where spawns and sweeps report; the HubRuntime owns the writer."""
    global _writer
    _writer = writer


def spawn_duration(service_type: str, seconds: float) -> None:
    """SpawnDuration by ServiceType, when EMF is on."""
    if _writer is not None:
        _writer.spawn_duration(service_type, seconds)


def poll(seconds: float, task_count: int) -> None:
    """PollDuration and TaskCount of one status sweep, when EMF is on."""
    if _writer is not None:
        _writer.poll(seconds, task_count)
