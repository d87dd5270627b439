"""Sim mode: the full lifecycle, versions, addresses, retention, faults and the stub server."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from calliope_hub.localecs.model import LIFECYCLE

NETWORK = {"awsvpcConfiguration": {"subnets": ["subnet-1"]}}


def client(handle, **config):
    config = Config(retries={"total_max_attempts": 1}, **config)
    return boto3.client("ecs", endpoint_url=handle.endpoint_url, config=config)


def prepare(ecs) -> None:
    ecs.register_task_definition(
        family="lab",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "lab",
                "image": "lab",
                "portMappings": [{"containerPort": 8888}],
                "entryPoint": ["python"],
                "command": ["-m", "lab"],
            }
        ],
    )


def start(ecs, count: int = 1, **extra) -> list[str]:
    answer = ecs.run_task(taskDefinition="lab", networkConfiguration=NETWORK, count=count, **extra)
    return [t["taskArn"] for t in answer["tasks"]]


def wait_status(ecs, arn: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = ecs.describe_tasks(tasks=[arn])
        if answer["tasks"] and answer["tasks"][0]["lastStatus"] == status:
            return answer["tasks"][0]
        time.sleep(0.02)
    raise AssertionError(f"{arn} never reached {status}")


def ip_of(task: dict) -> str:
    return task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status


def test_every_transition_bumps_version_once(local_ecs):
    seen: list[tuple[str, int]] = []
    local_ecs.server.plane.listeners.append(lambda task: seen.append((task.last_status, task.version)))
    ecs = client(local_ecs)
    prepare(ecs)
    (arn,) = start(ecs)
    running = wait_status(ecs, arn, "RUNNING")
    ecs.stop_task(task=arn, reason="bye")
    stopped = wait_status(ecs, arn, "STOPPED")
    assert seen == [(status, version) for version, status in enumerate(LIFECYCLE, start=1)]
    assert (running["version"], stopped["version"]) == (4, 8)
    assert stopped["createdAt"] <= stopped["startedAt"] <= stopped["stoppingAt"] <= stopped["stoppedAt"]
    assert stopped["containers"][0]["exitCode"] == 0 and stopped["stopCode"] == "UserInitiated"


def test_stub_answers_on_the_tasks_own_address_while_running(local_ecs):
    ecs = client(local_ecs)
    prepare(ecs)
    arns = start(ecs, count=2)
    tasks = [wait_status(ecs, arn, "RUNNING") for arn in arns]
    assert len({ip_of(t) for t in tasks}) == 2
    for task in tasks:
        assert get(f"http://{ip_of(task)}:8888/user/ada/api") == 200
    ecs.stop_task(task=arns[0])
    wait_status(ecs, arns[0], "STOPPED")
    with pytest.raises(urllib.error.URLError):
        get(f"http://{ip_of(tasks[0])}:8888/")
    assert get(f"http://{ip_of(tasks[1])}:8888/") == 200


def test_container_argv_and_environment_follow_overrides(local_ecs):
    ecs = client(local_ecs)
    ecs.register_task_definition(
        family="env",
        containerDefinitions=[
            {
                "name": "c",
                "image": "i",
                "entryPoint": ["sh", "-c"],
                "command": ["sleep 1"],
                "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            }
        ],
    )
    (arn,) = [
        t["taskArn"]
        for t in ecs.run_task(
            taskDefinition="env",
            overrides={
                "containerOverrides": [
                    {"name": "c", "command": ["echo hi"], "environment": [{"name": "B", "value": "3"}]}
                ]
            },
        )["tasks"]
    ]
    task = local_ecs.server.plane.tasks[arn.rsplit("/", 1)[-1]]
    (container,) = local_ecs.server.plane.launch_spec(task).containers
    assert container.argv == ["sh", "-c", "echo hi"]
    assert container.environment == {"A": "1", "B": "3"}


def test_addresses_are_reused_only_after_stopped(local_ecs_factory):
    handle = local_ecs_factory(cidr="127.21.0.0/30")  # two usable addresses
    ecs = client(handle)
    prepare(ecs)
    first, _second = start(ecs, count=2)
    answer = ecs.run_task(taskDefinition="lab", networkConfiguration=NETWORK)
    assert answer["tasks"] == [] and answer["failures"][0]["reason"] == "RESOURCE:ENI"
    freed = ip_of(wait_status(ecs, first, "RUNNING"))
    ecs.stop_task(task=first)
    wait_status(ecs, first, "STOPPED")
    (third,) = start(ecs)
    assert ip_of(wait_status(ecs, third, "RUNNING")) == freed


def test_stopped_tasks_go_missing_after_retention(local_ecs_factory):
    handle = local_ecs_factory(retention_s=0.3)
    ecs = client(handle)
    prepare(ecs)
    (arn,) = start(ecs)
    ecs.stop_task(task=arn)
    wait_status(ecs, arn, "STOPPED")
    assert ecs.list_tasks(desiredStatus="STOPPED")["taskArns"] == [arn]
    time.sleep(0.4)
    answer = ecs.describe_tasks(tasks=[arn])
    assert answer["tasks"] == [] and answer["failures"] == [{"arn": arn, "reason": "MISSING"}]
    assert ecs.list_tasks(desiredStatus="STOPPED")["taskArns"] == []


def test_failed_starts_and_spontaneous_stops(local_ecs_factory):
    failing = client(local_ecs_factory(sim_fail_fraction=1.0))
    prepare(failing)
    (arn,) = start(failing)
    task = wait_status(failing, arn, "STOPPED")
    assert task["stopCode"] == "TaskFailedToStart" and "CannotPullContainerError" in task["stoppedReason"]
    assert "startedAt" not in task
    flaky = client(local_ecs_factory(sim_stop_rate=3600 * 20))  # ~ every 50 ms
    prepare(flaky)
    (arn,) = start(flaky)
    task = wait_status(flaky, arn, "STOPPED")
    assert task["stopCode"] == "EssentialContainerExited" and task["containers"][0]["exitCode"] == 1


def test_kill_fault_stops_with_the_exit_code(local_ecs):
    ecs = client(local_ecs)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    status, body = local_ecs.kill(arn.rsplit("/", 1)[-1], exit_code=137)
    assert status == 202 and body["taskArn"] == arn
    task = wait_status(ecs, arn, "STOPPED")
    assert task["stopCode"] == "EssentialContainerExited" and task["containers"][0]["exitCode"] == 137
    assert local_ecs.kill(arn.rsplit("/", 1)[-1])[0] == 409


def test_unavailable_faults_then_recovery(local_ecs):
    ecs = client(local_ecs)
    assert local_ecs.request("POST", "/_localecs/faults/unavailable", {"seconds": 0.5, "style": "503"})[0] == 200
    with pytest.raises(ClientError) as raised:
        ecs.list_tasks()
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert local_ecs.stats()["tasks"] == {}  # the side door still answers
    time.sleep(0.6)
    assert ecs.list_tasks()["taskArns"] == []
    fresh = client(local_ecs)  # no pooled connection: the listener itself is closed
    local_ecs.request("POST", "/_localecs/faults/unavailable", {"seconds": 0.5, "style": "refuse"})
    with pytest.raises(EndpointConnectionError):
        fresh.list_tasks()
    time.sleep(0.7)
    assert fresh.list_tasks()["taskArns"] == []


def test_reset_forgets_everything(local_ecs):
    ecs = client(local_ecs)
    prepare(ecs)
    (arn,) = start(ecs)
    wait_status(ecs, arn, "RUNNING")
    assert local_ecs.request("POST", "/_localecs/reset")[0] == 200
    assert ecs.describe_tasks(tasks=[arn])["failures"][0]["reason"] == "MISSING"
    with pytest.raises(ClientError):
        ecs.describe_task_definition(taskDefinition="lab")
    stats = local_ecs.stats()
    assert stats["tasks"] == {} and set(stats["calls"]) == {"DescribeTasks", "DescribeTaskDefinition"}


def test_stats_count_calls_tasks_and_server_time(local_ecs):
    ecs = client(local_ecs)
    prepare(ecs)
    arns = start(ecs, count=3)
    for arn in arns:
        wait_status(ecs, arn, "RUNNING")
    with pytest.raises(ClientError):
        ecs.describe_tasks(cluster="nope", tasks=arns)
    stats = local_ecs.stats()
    assert stats["calls"]["RunTask"] == {"ok": 1, "throttled": 0, "error": 0}
    assert stats["calls"]["DescribeTasks"]["error"] == 1 and stats["calls"]["DescribeTasks"]["ok"] >= 3
    assert stats["tasks"] == {"RUNNING": 3}
    assert stats["server_ms"]["DescribeTasks"]["count"] == sum(stats["calls"]["DescribeTasks"].values())
    assert stats["mode"] == "sim"
