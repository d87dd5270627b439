"""Process mode end to end: real boto3 against local ECS running real local processes.

Two tasks serve on the same port, each on its own address, as awsvpc gives every task its
own interface; StopTask ends one by SIGTERM and the other (which ignores SIGTERM) by
SIGKILL after the stop timeout, and nothing is left behind.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import boto3
import psutil
import pytest

PORT = 8888
STOP_TIMEOUT = 2.0
#: Serves GET on argv[1]:argv[2]; the definition says 0.0.0.0, which local ECS makes the task's address.
HELLO = str(Path(__file__).with_name("hello_task.py"))
HEALTHY = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)"
NETWORK = {"awsvpcConfiguration": {"subnets": ["subnet-local"], "assignPublicIp": "DISABLED"}}


def wait_for(describe, predicate, seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        tasks = describe()
        if predicate(tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.05)


def eni_address(task: dict) -> str:
    [eni] = [a for a in task["attachments"] if a["type"] == "ElasticNetworkInterface"]
    return {d["name"]: d["value"] for d in eni["details"]}["privateIPv4Address"]


def task_processes() -> dict[str, psutil.Process]:
    """This test's descendant processes, by the task address they were given."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            found[child.environ()["LOCALECS_TASK_IP"]] = child
        except (psutil.NoSuchProcess, KeyError):
            continue
    return found


@pytest.fixture
def ecs(local_ecs_factory):
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    local = local_ecs_factory(mode="process", stop_timeout_s=STOP_TIMEOUT)
    yield boto3.client("ecs", endpoint_url=local.endpoint_url, region_name="us-east-1")
    local.stop()
    left = {child.pid for child in psutil.Process().children(recursive=True)} - before
    assert left == set(), "no process outlives local ECS"


def test_tasks_serve_on_their_own_address_and_stop_cleanly(ecs):
    ecs.create_cluster(clusterName="e2e")
    ecs.register_task_definition(
        family="hello",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "web",
                "image": "local/hello:latest",
                "command": [sys.executable, HELLO, "0.0.0.0", str(PORT)],
                "portMappings": [{"containerPort": PORT}],
                "healthCheck": {
                    "command": ["CMD", sys.executable, "-c", HEALTHY, f"http://0.0.0.0:{PORT}/"],
                    "interval": 30,
                    "timeout": 5,
                    "retries": 3,
                    "startPeriod": 20,
                },
            }
        ],
    )
    run = dict(cluster="e2e", taskDefinition="hello", launchType="FARGATE", networkConfiguration=NETWORK)
    polite = ecs.run_task(**run)["tasks"][0]["taskArn"]
    stubborn = ecs.run_task(
        **run,
        overrides={"containerOverrides": [{"name": "web", "environment": [{"name": "ON_TERM", "value": "ignore"}]}]},
    )["tasks"][0]["taskArn"]

    def describe() -> list[dict]:
        return ecs.describe_tasks(cluster="e2e", tasks=[polite, stubborn])["tasks"]

    tasks = wait_for(describe, lambda ts: all(t["lastStatus"] == "RUNNING" for t in ts), 30)
    assert [t["lastStatus"] for t in tasks] == ["RUNNING", "RUNNING"]
    addresses = [eni_address(t) for t in tasks]
    assert len(set(addresses)) == 2 and "127.0.0.1" not in addresses
    for task, address in zip(tasks, addresses, strict=True):
        assert task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"] == address
        with urllib.request.urlopen(f"http://{address}:{PORT}/", timeout=5) as answer:
            assert answer.read().decode() == f"hello from {address}"
    processes = task_processes()
    assert set(processes) == set(addresses)

    ecs.stop_task(cluster="e2e", task=polite, reason="e2e done")
    ecs.stop_task(cluster="e2e", task=stubborn, reason="e2e done")
    tasks = wait_for(describe, lambda ts: all(t["lastStatus"] == "STOPPED" for t in ts), STOP_TIMEOUT + 5)

    assert [t["lastStatus"] for t in tasks] == ["STOPPED", "STOPPED"]
    assert {(t["stopCode"], t["stoppedReason"]) for t in tasks} == {("UserInitiated", "e2e done")}
    assert [t["containers"][0]["exitCode"] for t in tasks] == [0, 137], "SIGTERM honoured; SIGKILL after the timeout"
    for process in processes.values():
        assert not psutil.pid_exists(process.pid), "the process is gone and reaped: no zombie"
