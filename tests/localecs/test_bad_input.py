"""Bad input gets the AWS error code ECS would give, a clear message, never a 500, and loses no task."""

from __future__ import annotations

import json
import math
import socket
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
        family="lab",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
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
    assert (status, body["__type"]) == (400, "SerializationException")
    assert body["message"] == "tasks must be an array, not a string."
    status, body = call(
        local_ecs.endpoint_url,
        "RunTask",
        {"taskDefinition": "lab", "networkConfiguration": NETWORK, "overrides": {"cpu": 256, "memory": 512}},
    )
    assert (status, body["__type"]) == (400, "SerializationException")
    assert body["message"] == "overrides.cpu must be a string, not a number."


def test_too_many_arns(ecs, running):
    code, message = error_code(lambda: ecs.describe_tasks(tasks=[running] * 101))
    assert code == "InvalidParameterException" and "100" in message


def test_bad_cpu_memory_pair(ecs, running):
    code, message = error_code(
        lambda: ecs.register_task_definition(
            family="huge",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="256",
            memory="8192",
            containerDefinitions=[{"name": "x", "image": "x"}],
        )
    )
    assert code == "ClientException" and "256 CPU, 8192 memory" in message
    code, message = error_code(
        lambda: ecs.run_task(
            taskDefinition="lab", networkConfiguration=NETWORK, overrides={"cpu": "1024", "memory": "1024"}
        )
    )
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
        code, message = error_code(lambda: ecs.run_task(**params))  # noqa: B023 - called at once
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


def test_each_reported_500_is_now_a_clear_400(local_ecs, running):
    """The malformed requests that earned 500s in the probe of issue 9 (item 7)."""
    url = local_ecs.endpoint_url
    deep = ("[" * 5000 + "]" * 5000).encode()
    for operation in OPERATIONS:  # deep nesting, on every operation
        status, body = raw(url, TARGET_PREFIX + operation, b'{"tags": ' + deep + b"}")
        assert (status, body["__type"]) == (400, "SerializationException"), operation
        assert "nested deeper than 32 levels" in body["message"]
    status, body = raw(url, TARGET_PREFIX + "ListTasks", b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}")
    assert status == 400 and "nested deeper than 32" in body["message"]  # deep, yet under the recursion limit
    for not_a_list in (7, {"name": "lab"}, "lab"):
        status, body = call(
            url,
            "RunTask",
            {"taskDefinition": "lab", "networkConfiguration": NETWORK, "overrides": {"containerOverrides": not_a_list}},
        )
        assert (status, body["__type"]) == (400, "SerializationException")
        assert body["message"].startswith("overrides.containerOverrides must be an array")
    status, body = call(
        url,
        "RunTask",
        {
            "taskDefinition": "lab",
            "networkConfiguration": NETWORK,
            "overrides": {"cpu": "9" * 400, "memory": "9" * 400},
        },
    )
    assert (status, body["__type"]) == (400, "InvalidParameterException") and "Invalid cpu value" in body["message"]
    assert len(body["message"]) < 120  # the 400 digits are not echoed back
    status, body = raw(url, TARGET_PREFIX + "RunTask", b'{"taskDefinition": "lab", "count": 1' + b"0" * 400 + b"}")
    assert (status, body["__type"]) == (400, "SerializationException") and "19 digits" in body["message"]
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        status, body = raw(url, TARGET_PREFIX + "RunTask", b'{"taskDefinition": "lab", "count": ' + literal + b"}")
        assert (status, body["__type"]) == (400, "SerializationException"), literal
    status, body = call(
        url,
        "RegisterTaskDefinition",
        {"family": "x", "containerDefinitions": [{"name": "x", "image": "x", "cpu": 2**40}]},
    )
    assert body["message"] == (
        "containerDefinitions[0].cpu must be an integer from -2147483648 to 2147483647, not a number."
    )
    status, body = call(url, "DescribeTaskDefinition", {"taskDefinition": "lab:" + "\u00b2"})
    assert (status, body["__type"]) == (400, "ClientException")
    assert ecs_tasks(url) == [running]


def ecs_tasks(url: str) -> list[str]:
    return call(url, "ListTasks", {})[1]["taskArns"]


def _post_headers(url: str, length: int, extra: str = "") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        (
            f"POST / HTTP/1.1\r\nHost: {host}\r\nX-Amz-Target: {TARGET_PREFIX}ListTasks\r\n"
            f"Content-Type: application/x-amz-json-1.1\r\nContent-Length: {length}\r\n{extra}\r\n"
        ).encode()
    )
    return sock


def test_an_oversized_body_is_refused_before_it_is_read(local_ecs, running):
    # 17 MiB announced, 1 KiB sent: the answer comes at once, so nothing waited for (or stored) the rest
    with _post_headers(local_ecs.endpoint_url, 17 * 1024**2) as sock:
        sock.sendall(b"{" + b" " * 1024)
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413 ")
    assert '"__type": "RequestEntityTooLargeException"' in answer and "1048576-byte limit" in answer
    # a whole body just over the limit, through an ordinary client
    status, body = call(local_ecs.endpoint_url, "ListTasks", {"family": "x" * (1024**2 + 1)})
    assert (status, body["__type"]) == (413, "RequestEntityTooLargeException")
    assert ecs_tasks(local_ecs.endpoint_url) == [running]


def test_an_oversized_chunked_body_is_refused(local_ecs):
    host, port = local_ecs.endpoint_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: {host}\r\nX-Amz-Target: {TARGET_PREFIX}ListTasks\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        try:
            for _ in range(20):  # 1.25 MiB
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the last chunk
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413 ") and "RequestEntityTooLargeException" in answer


def test_side_door_bodies_are_bounded_too(local_ecs, running):
    task_id = running.rsplit("/", 1)[-1]
    for body in (b"[" * 5000, b'{"seconds": NaN}', b'{"seconds": Infinity}', b'{"exitCode": 1' + b"0" * 30 + b"}"):
        for path in ("/_localecs/faults/throttle", "/_localecs/faults/unavailable", f"/_localecs/tasks/{task_id}/kill"):
            request = urllib.request.Request(local_ecs.endpoint_url + path, data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 400 and "error" in json.loads(refused.value.read()), (path, body[:20])
    assert local_ecs.kill(task_id, exit_code=256)[0] == 400
    assert ecs_tasks(local_ecs.endpoint_url) == [running]


#: keys that reach deep into requests, so fuzzed bodies get past the first checks.
_NESTED = st.sampled_from(
    [
        "awsvpcConfiguration",
        "subnets",
        "containerOverrides",
        "name",
        "command",
        "entryPoint",
        "environment",
        "value",
        "key",
        "capacityProvider",
        "image",
        "containerPort",
        "portMappings",
        "healthCheck",
        "cpu",
        "memory",
    ]
)
_numbers = (
    st.integers(-5, 70000)
    | st.sampled_from([10**399, -(10**399), 2**31, 2**63, -(2**63) - 1, 1e308])
    | st.sampled_from([math.nan, math.inf, -math.inf])  # json.dumps writes NaN and Infinity as bare literals
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | _numbers
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "lab",
            "lab:1",
            "FARGATE",
            "EC2",
            "TAGS",
            "256",
            "512",
            "9" * 400,
            "1 vCPU",
            "awsvpc",
            "arn:aws:ecs:us-east-1:000000000000:cluster/default",
        ]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NESTED | st.text(max_size=4), inner, max_size=4),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "cluster",
        "taskDefinition",
        "count",
        "tasks",
        "include",
        "tags",
        "overrides",
        "clientToken",
        "startedBy",
        "launchType",
        "capacityProviderStrategy",
        "networkConfiguration",
        "family",
        "containerDefinitions",
        "cpu",
        "memory",
        "requiresCompatibilities",
        "networkMode",
        "resourceArn",
        "tagKeys",
        "maxResults",
        "nextToken",
        "desiredStatus",
        "task",
        "reason",
        "clusters",
        "clusterName",
        "familyPrefix",
        "status",
        "sort",
    ]
)
#: how a body goes wrong beyond its values: nested deep at one key, padded past the size limit, or cut short.
_shape = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.none(),  # most bodies are well-formed JSON, so values get fuzzed
    st.tuples(st.just("deep"), _keys, st.integers(20, 3000), st.sampled_from(["[", '{"a":'])),
    st.tuples(st.just("huge"), _keys, st.sampled_from([1024**2 - 64, 1024**2 + 1])),
    st.tuples(st.just("cut"), st.integers(1, 60)),
)


def _encode(params: dict, shape: tuple | None) -> bytes:
    body = json.dumps(params)
    if shape is None:
        return body.encode()
    if shape[0] == "cut":
        return body.encode()[: shape[1]]
    key = json.dumps(shape[1])
    if shape[0] == "deep":
        depth, opener = shape[2], shape[3]
        value = opener * depth + "1" + ("]" if opener == "[" else "}") * depth
    else:
        value = json.dumps("x" * shape[2])
    return (body[:-1] + ("," if params else "") + f"{key}: {value}}}").encode()


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(operation=st.sampled_from(sorted(OPERATIONS)), params=st.dictionaries(_keys, _json, max_size=6), shape=_shape)
def test_no_input_earns_a_500(local_ecs, operation, params, shape):
    # one server serves every example: that is why the function-scoped fixture check is off
    if not getattr(local_ecs, "fuzz_ready", False):  # a definition, so RunTask gets past the lookup
        local_ecs.fuzz_ready = True
        call(
            local_ecs.endpoint_url,
            "RegisterTaskDefinition",
            {
                "family": "lab",
                "requiresCompatibilities": ["FARGATE"],
                "networkMode": "awsvpc",
                "cpu": "256",
                "memory": "512",
                "containerDefinitions": [{"name": "lab", "image": "lab"}],
            },
        )
    status, body = raw(local_ecs.endpoint_url, TARGET_PREFIX + operation, _encode(params, shape))
    assert status in (200, 400, 413), (operation, params, shape, body)
    if status != 200:
        assert body["__type"] and body["message"]
