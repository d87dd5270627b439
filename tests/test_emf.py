"""CloudWatch EMF lines follow the documented specification (checked rule by rule here).

Spec: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
The end-to-end half (lines written by a real hub's spawns and sweeps) is in tests/test_metrics.py.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from traitlets.config import Config

from calliope_hub.hub.config import CloudWatchEmf
from calliope_hub.observability.emf import EmfWriter

#: MetricDatum units CloudWatch accepts.
UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


def assert_valid_emf(line: str) -> dict[str, Any]:
    """Every MUST of the EMF specification's root, metadata and directive rules."""
    record = json.loads(line)
    assert isinstance(record, dict) and "\n" not in line.rstrip("\n")
    meta = record["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_500_000_000_000  # epoch ms
    directives = meta["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert 1 <= len(directive["Namespace"]) <= 255
        assert isinstance(directive["Dimensions"], list)
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for key in dimension_set:
                assert isinstance(record[key], str)  # a dimension is a string member of the root
        assert 1 <= len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert 1 <= len(metric["Name"]) <= 255 and metric.get("Unit", "None") in UNITS
            value = record[metric["Name"]]  # a metric is a number member of the root
            assert isinstance(value, int | float) and not isinstance(value, bool)
    return record


def test_the_seeds_two_records_are_valid_emf() -> None:
    stream = io.StringIO()
    writer = EmfWriter(stream, "CalliopeHub", wall_clock=lambda: 1_760_000_000.25)
    writer.spawn_duration("lab", 12.5)
    writer.poll(0.031, 2500)
    spawn, poll = map(assert_valid_emf, stream.getvalue().splitlines())

    assert spawn["_aws"]["Timestamp"] == 1_760_000_000_250
    assert spawn["_aws"]["CloudWatchMetrics"] == [
        {
            "Namespace": "CalliopeHub",
            "Dimensions": [["ServiceType"]],
            "Metrics": [{"Name": "SpawnDuration", "Unit": "Seconds"}],
        }
    ]
    assert (spawn["ServiceType"], spawn["SpawnDuration"]) == ("lab", 12.5)
    assert poll["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "PollDuration", "Unit": "Seconds"},
        {"Name": "TaskCount", "Unit": "Count"},
    ]
    assert (poll["Operation"], poll["PollDuration"], poll["TaskCount"]) == ("Poll", 0.031, 2500)


@pytest.mark.parametrize("namespace", ["", "x" * 256, "Calliope\nHub", "Calliope*Hub"])
def test_a_namespace_cloudwatch_would_refuse_is_a_config_error(namespace: str) -> None:
    with pytest.raises(ValueError, match=r"CloudWatchEmf\.namespace"):
        CloudWatchEmf(config=Config({"CloudWatchEmf": {"namespace": namespace}}))
