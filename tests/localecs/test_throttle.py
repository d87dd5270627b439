"""Quotas: a burst of 100 DescribeTasks, refilled at 20/s, and botocore's standard retries get through."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from calliope_hub.ecsfacts import AWS_QUOTAS, Quota
from calliope_hub.localecs.config import parse_throttle


def test_burst_then_throttled_then_refilled(local_ecs_factory):
    handle = local_ecs_factory(throttle="aws")
    ecs = boto3.client("ecs", endpoint_url=handle.endpoint_url, config=Config(retries={"total_max_attempts": 1}))
    outcomes = []
    started = time.monotonic()
    for _ in range(150):
        try:
            ecs.list_tasks()
            outcomes.append("ok")
        except ClientError as error:
            assert error.response["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            outcomes.append("throttled")
    elapsed = time.monotonic() - started
    ok = outcomes.count("ok")
    # the burst, plus what 20/s refilled while the calls ran
    assert 100 <= ok <= 100 + 20 * elapsed + 2
    assert outcomes[:100] == ["ok"] * 100 and "throttled" in outcomes
    time.sleep(0.5)  # ~10 tokens come back
    refilled = 0
    for _ in range(30):
        try:
            ecs.list_tasks()
            refilled += 1
        except ClientError:
            break
    assert 5 <= refilled <= 20
    calls = handle.stats()["calls"]["ListTasks"]
    assert calls["ok"] == ok + refilled
    assert calls["throttled"] == 150 - ok + 1 and calls["error"] == 0


def test_standard_retries_get_through_forced_throttling(local_ecs):
    ecs = boto3.client(
        "ecs", endpoint_url=local_ecs.endpoint_url, config=Config(retries={"mode": "standard", "max_attempts": 10})
    )
    assert local_ecs.request("POST", "/_localecs/faults/throttle", {"seconds": 0.3})[0] == 200
    answer = ecs.describe_tasks(tasks=["0" * 32])
    assert answer["failures"][0]["reason"] == "MISSING"
    assert answer["ResponseMetadata"]["RetryAttempts"] >= 1
    calls = local_ecs.stats()["calls"]["DescribeTasks"]
    assert calls["throttled"] == answer["ResponseMetadata"]["RetryAttempts"] and calls["ok"] == 1


def test_throttle_specs():
    assert parse_throttle("off") is None
    assert parse_throttle("aws") == AWS_QUOTAS
    custom = parse_throttle("read=10:5,fargate=2:1")
    assert custom["cluster-read"] == Quota(10, 5) and custom["fargate-run-task"] == Quota(2, 1)
    assert custom["cluster-modify"] == AWS_QUOTAS["cluster-modify"]
    for bad in ("fast", "read=10", "read=a:b", "write=1:1", "read=0:1"):
        with pytest.raises(ValueError, match="throttle"):
            parse_throttle(bad)
