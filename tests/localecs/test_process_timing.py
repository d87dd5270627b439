"""Process mode with a timing (`--mode process --sim-timing fargate`): a cold start and a stop to watch.

The control plane holds a task in PROVISIONING, PENDING (before any process starts), ACTIVATING,
DEACTIVATING and DEPROVISIONING for the timing's seconds; STOPPING is the real process's exit.
Without a timing, process mode starts a task at once, as the rest of the suite relies on.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

import boto3

from calliope_hub.localecs.cli import add_arguments, config_from
from calliope_hub.localecs.model import LIFECYCLE
from tests.localecs.test_sim import NETWORK, ip_of, wait_status
from tests.localecs.test_sim_timing import EARLY, SCALED_FARGATE, record_transitions

HELLO = str(Path(__file__).with_name("hello_task.py"))


def hello_client(handle):
    ecs = boto3.client("ecs", endpoint_url=handle.endpoint_url, region_name="us-east-1")
    ecs.register_task_definition(
        family="hello",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "hello", "image": "hello", "command": [sys.executable, HELLO, "0.0.0.0", "8888"]}
        ],
    )
    return ecs


def answers(url: str, seconds: float = 10.0) -> None:
    """Wait until `url` answers (a process's start is not timed by local ECS)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_process_task_dwells_in_each_state_of_the_timing(local_ecs_factory):
    handle = local_ecs_factory(mode="process", process_timing=True, **SCALED_FARGATE, sim_jitter=0.0)
    seen = record_transitions(handle)
    ecs = hello_client(handle)
    arn = ecs.run_task(taskDefinition="hello", networkConfiguration=NETWORK)["tasks"][0]["taskArn"]
    running = wait_status(ecs, arn, "RUNNING")
    answers(f"http://{ip_of(running)}:8888/")  # its SIGTERM handler is in place before it listens
    assert ecs.stop_task(task=arn, reason="culled")["task"]["lastStatus"] == "DEACTIVATING"
    stopped = wait_status(ecs, arn, "STOPPED")
    assert [status for status, _ in seen] == list(LIFECYCLE)
    held = {status: seen[i + 1][1] - when for i, (status, when) in enumerate(seen[:-1])}
    for status in ("PROVISIONING", "PENDING", "ACTIVATING", "DEACTIVATING", "DEPROVISIONING"):
        assert held[status] >= SCALED_FARGATE[f"sim_{status.lower()}_s"] - EARLY, (status, held[status])
    assert stopped["containers"][0]["exitCode"] == 0, "STOPPING was the process's own exit on SIGTERM"


def test_a_task_stopped_while_pending_never_starts_its_process(local_ecs_factory):
    handle = local_ecs_factory(mode="process", process_timing=True, sim_provisioning_s=0.0, sim_pending_s=30.0)
    ecs = hello_client(handle)
    arn = ecs.run_task(taskDefinition="hello", networkConfiguration=NETWORK)["tasks"][0]["taskArn"]
    wait_status(ecs, arn, "PENDING")
    ecs.stop_task(task=arn)
    stopped = wait_status(ecs, arn, "STOPPED")
    assert stopped["containers"][0].get("exitCode") is None and "startedAt" not in stopped
    assert not list(handle.server.plane.runner.log_dir.glob("*.log")), "no process was ever started"


def test_process_mode_dwells_only_when_a_timing_is_given():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from(parser.parse_args(["--mode", "process", "--sim-timing", "fargate"])).process_timing
    assert config_from(parser.parse_args(["--mode", "process", "--sim-pending", "2"])).process_timing
    assert not config_from(parser.parse_args(["--mode", "process"])).process_timing
    assert config_from(parser.parse_args(["--mode", "process"])).process_dwell()("PENDING") == 0
    assert not config_from(parser.parse_args(["--sim-timing", "fargate"])).process_timing  # sim times itself
