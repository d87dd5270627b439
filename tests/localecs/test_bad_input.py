"""Bad input gets the AWS error code ECS would give, a clear message, never a 500, and loses no task."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calliope_hub.localecs.operations import OPERATIONS
from calliope_hub.localecs.server import TARGET_PREFIX

NETWORK = {"awsvpcConfiguration": {"subnets": ["subnet-1"]}}


def raw(endpoint: str, target: str | None, body: bytes) -> tuple[int, dict]:
    """One ECS request below botocore, so nothing is validated on the client side."""
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    request = urllib.request.Request(endpoint + "/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def call(endpoint: str, operation: str, params: dict) -> tuple[int, dict]:
    return raw(endpoint, TARGET_PREFIX + operation, json.dumps(params).encode())


@pytest.fixture
def ecs(local_ecs):
    return boto3.client("ecs", endpoint_url=local_ecs.endpoint_url, config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture
def running(ecs) -> str:
    """A task started before the bad input arrives: it must survive all of it."""
    ecs.register_task_definition(
        family="lab", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="512",
        containerDefinitions=[{"name": "lab", "image": "lab"}],
    )
    return ecs.run_task(taskDefinition="lab", networkConfiguration=NETWORK)["tasks"][0]["taskArn"]


def error_code(call_) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call_()
    return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]


def test_malformed_json_and_unknown_operation(local_ecs):
    status, body = raw(local_ecs.endpoint_url, TARGET_PREFIX + "ListTasks", b"{not json")
    assert status == 400 and body["__type"] == "SerializationException" and "Malformed JSON" in body["message"]
    status, body = raw(local_ecs.endpoint_url, TARGET_PREFIX + "LaunchRocket", b"{}")
    assert status == 400 and body["__type"] == "UnknownOperationException" and "LaunchRocket" in body["message"]
    status, body = raw(local_ecs.endpoint_url, None, b"{}")
    assert status == 400 and body["__type"] == "UnknownOperationException"
    status, body = raw(local_ecs.endpoint_url, TARGET_PREFIX + "DescribeTasks", b"[1, 2]")
    assert status == 400 and body["__type"] == "SerializationException"


def test_missing_and_mistyped_fields(local_ecs, running):
    status, body = call(local_ecs.endpoint_url, "RunTask", {})
    assert (status, body["__type"]) == (400, "InvalidParameterException")
    assert "taskDefinition" in body["message"]
    status, body = call(local_ecs.endpoint_url, "DescribeTasks", {"tasks": "not-a-list"})
    assert (status, body["__type"]) == (400, "InvalidParameterException") and "tasks" in body["message"]
    status, body = call(local_ecs.endpoint_url, "RunTask", {"taskDefinition": "lab", "networkConfiguration": NETWORK,
                                                            "overrides": {"cpu": 256, "memory": 512}})
    assert (status, body["__type"]) == (400, "InvalidParameterException") and "string" in body["message"]


def test_too_many_arns(ecs, running):
    code, message = error_code(lambda: ecs.describe_tasks(tasks=[running] * 101))
    assert code == "InvalidParameterException" and "100" in message


def test_bad_cpu_memory_pair(ecs, running):
    code, message = error_code(lambda: ecs.register_task_definition(
        family="huge", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="8192",
        containerDefinitions=[{"name": "x", "image": "x"}],
    ))
    assert code == "ClientException" and "256 CPU, 8192 memory" in message
    code, message = error_code(lambda: ecs.run_task(
        taskDefinition="lab", networkConfiguration=NETWORK, overrides={"cpu": "1024", "memory": "1024"}
    ))
    assert code == "InvalidParameterException" and "Fargate" in message


def test_run_task_rules(ecs, running):
    cases = [
        ({"count": 11}, "count"),
        ({"clientToken": "t" * 65}, "clientToken"),
        ({"launchType": "FARGATE", "capacityProviderStrategy": [{"capacityProvider": "FARGATE"}]}, "both"),
        ({"networkConfiguration": {}}, "Network Configuration"),
        ({"tags": [{"key": f"k{i}", "value": "v"} for i in range(51)]}, "50"),
        ({"startedBy": "no spaces allowed"}, "startedBy"),
        ({"startedBy": "x" * 129}, "startedBy"),
    ]
    for change, words in cases:
        params = {"taskDefinition": "lab", "networkConfiguration": NETWORK, **change}
        code, message = error_code(lambda: ecs.run_task(**params))
        assert code == "InvalidParameterException" and words in message, (change, message)
    assert ecs.list_tasks()["taskArns"] == [running]


def test_unknown_cluster_and_task(ecs, running):
    code, message = error_code(lambda: ecs.list_tasks(cluster="nowhere"))
    assert (code, message) == ("ClusterNotFoundException", "Cluster not found.")
    code, _ = error_code(lambda: ecs.stop_task(task="0" * 32))
    assert code == "InvalidParameterException"
    code, _ = error_code(lambda: ecs.describe_task_definition(taskDefinition="never"))
    assert code == "ClientException"


def test_side_door_refuses_bad_bodies(local_ecs, running):
    assert local_ecs.request("POST", "/_localecs/faults/throttle", {"seconds": -1})[0] == 400
    assert local_ecs.request("POST", "/_localecs/faults/unavailable", {"seconds": 1, "style": "x"})[0] == 400
    assert local_ecs.request("POST", "/_localecs/tasks/nope/kill", {})[0] == 404
    assert local_ecs.kill(running.rsplit("/", 1)[-1], exit_code="x")[0] == 400  # type: ignore[arg-type]


#: keys that reach deep into requests, so fuzzed bodies get past the first checks.
_NESTED = st.sampled_from([
    "awsvpcConfiguration", "subnets", "containerOverrides", "name", "command", "entryPoint", "environment",
    "value", "key", "capacityProvider", "image", "containerPort", "portMappings", "healthCheck", "cpu", "memory",
])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8)
    | st.sampled_from(["lab", "FARGATE", "TAGS", "256", "512", "awsvpc", "arn:aws:ecs:us-east-1:000000000000:cluster/default"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NESTED | st.text(max_size=4), inner, max_size=4),
    max_leaves=16,
)
_keys = st.sampled_from([
    "cluster", "taskDefinition", "count", "tasks", "include", "tags", "overrides", "clientToken", "startedBy",
    "launchType", "capacityProviderStrategy", "networkConfiguration", "family", "containerDefinitions", "cpu",
    "memory", "requiresCompatibilities", "networkMode", "resourceArn", "tagKeys", "maxResults", "nextToken",
    "desiredStatus", "task", "reason", "clusters", "clusterName", "familyPrefix", "status", "sort",
])


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(operation=st.sampled_from(sorted(OPERATIONS)), params=st.dictionaries(_keys, _json, max_size=6))
def test_no_input_earns_a_500(local_ecs, operation, params):
    # one server serves every example: that is why the function-scoped fixture check is off
    if not local_ecs.stats()["calls"].get("RegisterTaskDefinition"):  # so RunTask gets past the lookup
        call(local_ecs.endpoint_url, "RegisterTaskDefinition", {
            "family": "lab", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": "256",
            "memory": "512", "containerDefinitions": [{"name": "lab", "image": "lab"}],
        })
    status, body = call(local_ecs.endpoint_url, operation, params)
    assert status in (200, 400), (operation, params, body)
    if status == 400:
        assert body["__type"] and body["message"]

