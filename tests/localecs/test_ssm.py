"""Local ECS's SSM Parameter Store subset through real boto3, and ECS `secrets` resolved from it.

The security promise under test: a SecureString reaches the environment of the task whose
definition names it, and no API answer (ECS, SSM, events, stats) ever carries its value.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calliope_hub.localecs.ssm import OPERATIONS, TARGET_PREFIX

ACCOUNT_ARN = "arn:aws:ssm:us-east-1:000000000000:parameter"
#: writes the secret's value to the file named by OUT, then keeps running, as a server would.
DUMP_ENV = "import os, time; open(os.environ['OUT'], 'w').write(os.environ['TOKEN']); time.sleep(60)"


def clients(endpoint: str) -> tuple:
    return (
        boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1"),
        boto3.client("ecs", endpoint_url=endpoint, region_name="us-east-1"),
    )


def error_code(call, **kwargs) -> str:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response["Error"]["Code"]


def wait_until_settled(ecs, arn: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        task = ecs.describe_tasks(tasks=[arn])["tasks"][0]
        if task["lastStatus"] in ("RUNNING", "STOPPED") or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def register_with_secret(ecs, family: str, value_from: str, out: Path) -> None:
    ecs.register_task_definition(
        family=family,
        containerDefinitions=[
            {
                "name": "lab",
                "image": "quay.io/jupyter/base-notebook",
                "command": [sys.executable, "-c", DUMP_ENV],
                "environment": [{"name": "OUT", "value": str(out)}],
                "secrets": [{"name": "TOKEN", "valueFrom": value_from}],
            }
        ],
    )


def test_parameters_are_written_overwritten_and_deleted(local_ecs):
    ssm, _ = clients(local_ecs.endpoint_url)
    assert ssm.put_parameter(Name="/hub/plain", Value="one", Type="String")["Version"] == 1
    assert error_code(ssm.put_parameter, Name="/hub/plain", Value="two", Type="String") == "ParameterAlreadyExists"
    assert ssm.put_parameter(Name="/hub/plain", Value="two", Overwrite=True)["Version"] == 2
    retyped = dict(Name="/hub/plain", Value="x", Type="SecureString", Overwrite=True)
    assert error_code(ssm.put_parameter, **retyped) == "HierarchyTypeMismatchException"
    parameter = ssm.get_parameter(Name=f"{ACCOUNT_ARN}/hub/plain")["Parameter"]
    assert (parameter["Value"], parameter["Version"], parameter["ARN"]) == ("two", 2, f"{ACCOUNT_ARN}/hub/plain")
    tagged = dict(Name="/hub/plain", Value="x", Overwrite=True, Tags=[{"Key": "calliope:user", "Value": "ada"}])
    assert error_code(ssm.put_parameter, **tagged) == "ValidationException", "tags and overwrite exclude each other"
    ssm.put_parameter(Name="/hub/other", Value="x", Type="String")
    answer = ssm.delete_parameters(Names=["/hub/other", "/hub/never"])
    assert (answer["DeletedParameters"], answer["InvalidParameters"]) == (["/hub/other"], ["/hub/never"])
    ssm.delete_parameter(Name="/hub/plain")
    assert error_code(ssm.delete_parameter, Name="/hub/plain") == "ParameterNotFound"
    assert error_code(ssm.get_parameter, Name="/hub/plain") == "ParameterNotFound"


@pytest.mark.parametrize(
    "fields",
    [
        {"Name": "hub/no-leading-slash", "Type": "String"},
        {"Name": "/aws/reserved", "Type": "String"},
        {"Name": "ssm-reserved", "Type": "String"},
        {"Name": "/has space", "Type": "String"},
        {"Name": "/new/without/type"},
        {"Name": "/bad/type", "Type": "Password"},
        {"Name": "/too/long", "Type": "String", "Value": "x" * 4097},
        {"Name": "/" + "/".join("l" * 16), "Type": "String"},
    ],
)
def test_bad_parameters_are_refused_and_leave_nothing(local_ecs, fields):
    ssm, _ = clients(local_ecs.endpoint_url)
    code = error_code(ssm.put_parameter, **{"Value": "v", **fields})
    assert code in ("ValidationException", "HierarchyLevelLimitExceededException")
    assert local_ecs.call(parameter_count(local_ecs.server)) == 0


async def parameter_count(server) -> int:
    return len(server.plane.parameters.parameters)


def test_secure_strings_are_never_read_back(local_ecs):
    ssm, _ = clients(local_ecs.endpoint_url)
    ssm.put_parameter(Name="/hub/ada/token", Value="s3cret-value", Type="SecureString")
    ssm.put_parameter(Name="/hub/ada/plain", Value="fine", Type="String")
    for decrypt in (True, False):
        assert error_code(ssm.get_parameter, Name="/hub/ada/token", WithDecryption=decrypt) == "AccessDeniedException"
        names = ["/hub/ada/plain", "/hub/ada/token"]
        assert error_code(ssm.get_parameters, Names=names, WithDecryption=decrypt) == "AccessDeniedException"
    assert ssm.get_parameters(Names=["/hub/ada/plain", "/nope"])["InvalidParameters"] == ["/nope"]


def test_a_task_gets_its_secret_and_no_answer_shows_it(local_ecs_factory, tmp_path):
    local = local_ecs_factory(mode="process", stop_timeout_s=2.0)
    ssm, ecs = clients(local.endpoint_url)
    published: list[str] = []

    async def listen() -> None:  # what the event sinks get: every state of every task
        local.server.plane.listeners.append(lambda task: published.append(json.dumps(task.wire(True))))

    local.call(listen())
    ssm.put_parameter(Name="/calliope/hub/ada/server", Value="first-token-1f2e", Type="SecureString")
    register_with_secret(ecs, "lab-ada", f"{ACCOUNT_ARN}/calliope/hub/ada/server", tmp_path / "first")
    first = ecs.run_task(taskDefinition="lab-ada")["tasks"][0]["taskArn"]
    assert wait_until_settled(ecs, first)["lastStatus"] == "RUNNING"

    # the hub rotates the value on every start: the next task sees the new one
    ssm.put_parameter(Name="/calliope/hub/ada/server", Value="second-token-9a8b", Overwrite=True)
    register_with_secret(ecs, "lab-ada", "/calliope/hub/ada/server", tmp_path / "second")
    second = ecs.run_task(taskDefinition="lab-ada")["tasks"][0]["taskArn"]
    assert wait_until_settled(ecs, second)["lastStatus"] == "RUNNING"
    for name, value in (("first", "first-token-1f2e"), ("second", "second-token-9a8b")):
        deadline = time.monotonic() + 10
        while not (tmp_path / name).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / name).read_text() == value

    answers = [
        ecs.describe_tasks(tasks=[first, second], include=["TAGS"]),
        ecs.describe_task_definition(taskDefinition="lab-ada:1"),
        ecs.describe_task_definition(taskDefinition="lab-ada"),
        ecs.list_tasks(),
        ecs.list_task_definitions(),
    ]
    with pytest.raises(ClientError):
        answers.append(ssm.get_parameter(Name="/calliope/hub/ada/server", WithDecryption=True))
    with urllib.request.urlopen(local.endpoint_url + "/_localecs/stats") as stats:
        answers.append(json.loads(stats.read()))
    ecs.stop_task(task=first, reason="test done")
    ecs.stop_task(task=second, reason="test done")
    wait_until_settled(ecs, first)
    text = json.dumps(answers, default=str) + "".join(published)
    assert published and "/calliope/hub/ada/server" in text, "the reference shows, as on AWS"
    assert "first-token" not in text and "second-token" not in text


@pytest.mark.parametrize(
    "value_from, missing",
    [
        ("/calliope/hub/nobody/server", "invalid ssm parameters: /calliope/hub/nobody/server"),
        (f"{ACCOUNT_ARN}/calliope/x", f"invalid ssm parameters: {ACCOUNT_ARN}/calliope/x"),
        ("arn:aws:ssm:eu-west-1:000000000000:parameter/other/region", "invalid ssm parameters: arn:aws:ssm:eu-west-1"),
        ("arn:aws:secretsmanager:us-east-1:000000000000:secret:token", "unable to retrieve secret from asm"),
    ],
)
def test_a_task_whose_secret_is_missing_fails_as_ecs_says(local_ecs, tmp_path, value_from, missing):
    ssm, ecs = clients(local_ecs.endpoint_url)
    ssm.put_parameter(Name="/calliope/x/y", Value="unrelated", Type="SecureString")
    register_with_secret(ecs, "lab", value_from, tmp_path / "out")
    task = wait_until_settled(ecs, ecs.run_task(taskDefinition="lab")["tasks"][0]["taskArn"])
    assert (task["lastStatus"], task["stopCode"]) == ("STOPPED", "TaskFailedToStart")
    prefix = "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed"
    assert task["stoppedReason"].startswith(prefix)
    assert missing in task["stoppedReason"]


@pytest.mark.parametrize(
    "secrets",
    [
        [{"name": "TOKEN", "valueFrom": ""}],
        [{"name": "TOKEN"}],
        [{"name": "", "valueFrom": "/a"}],
        [{"name": "TOKEN", "valueFrom": "/a"}, {"name": "TOKEN", "valueFrom": "/b"}],
    ],
)
def test_register_refuses_malformed_secrets(local_ecs, secrets):
    unchecked = Config(parameter_validation=False)  # send what botocore itself would refuse to send
    ecs = boto3.client("ecs", endpoint_url=local_ecs.endpoint_url, region_name="us-east-1", config=unchecked)
    container = {"name": "lab", "image": "x", "command": ["true"], "secrets": secrets}
    code = error_code(ecs.register_task_definition, family="bad", containerDefinitions=[container])
    assert code in ("ClientException", "SerializationException")
    assert ecs.list_task_definitions()["taskDefinitionArns"] == []


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["/hub/a", "/hub/a/b", f"{ACCOUNT_ARN}/hub/a", "SecureString", "String", "Advanced", "x" * 5000]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["Key", "Value"]), inner, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(
    ["Name", "Names", "Value", "Type", "Overwrite", "Tags", "Tier", "DataType", "Description", "WithDecryption"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(operation=st.sampled_from(sorted(OPERATIONS)), params=st.dictionaries(_fields, _values, max_size=5))
def test_no_ssm_input_earns_a_500(local_ecs, operation, params):
    # one local ECS serves every example (hence the health check off); a SecureString is there to be refused
    request = urllib.request.Request(
        local_ecs.endpoint_url + "/",
        data=json.dumps(params).encode(),
        method="POST",
        headers={"X-Amz-Target": TARGET_PREFIX + operation, "Content-Type": "application/x-amz-json-1.1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        assert error.code == 400, (operation, params)
        assert json.loads(error.read())["__type"]
        return
    assert "never-shown" not in json.dumps(body)
    if operation == "PutParameter" and params.get("Name") == "/hub/a":  # keep a secret in the store
        ssm, _ = clients(local_ecs.endpoint_url)
        ssm.put_parameter(Name="/hub/a", Value="never-shown", Type="SecureString", Overwrite=True)


def test_with_an_access_key_only_the_hub_may_call(local_ecs_factory):
    """No local task (which never gets the hub's key) can run a task that reads another user's secret."""
    local = local_ecs_factory(access_key_id="AKIAHUBONLY")
    hub = boto3.Session(aws_access_key_id="AKIAHUBONLY", aws_secret_access_key="x", region_name="us-east-1")
    notebook = boto3.Session(aws_access_key_id="local", aws_secret_access_key="x", region_name="us-east-1")
    hub.client("ssm", endpoint_url=local.endpoint_url).put_parameter(Name="/hub/bob", Value="t", Type="SecureString")
    register_with_secret(hub.client("ecs", endpoint_url=local.endpoint_url), "lab-bob", "/hub/bob", Path("/dev/null"))
    ecs, ssm, efs = (notebook.client(name, endpoint_url=local.endpoint_url) for name in ("ecs", "ssm", "efs"))
    calls = [
        (ecs.run_task, {"taskDefinition": "lab-bob"}),
        (ecs.describe_task_definition, {"taskDefinition": "lab-bob"}),
        (ssm.delete_parameter, {"Name": "/hub/bob"}),
        (efs.describe_access_points, {}),
    ]
    for call, kwargs in calls:
        assert error_code(call, **kwargs) == "UnrecognizedClientException"
    unsigned = urllib.request.Request(
        local.endpoint_url + "/",
        data=b"{}",
        method="POST",
        headers={"X-Amz-Target": "AmazonEC2ContainerServiceV20141113.ListTasks"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=5)
    assert refused.value.code == 403
    assert local.stats()["calls"].get("RunTask") is None, "refused before any operation ran"
    assert hub.client("ecs", endpoint_url=local.endpoint_url).list_tasks()["taskArns"] == []


def test_a_task_never_inherits_aws_credentials(monkeypatch, tmp_path):
    """The hub's key reaches local ECS's own environment, never a task's."""
    from calliope_hub.localecs.process import container_view
    from calliope_hub.localecs.runner import ContainerSpec

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHUBONLY")
    monkeypatch.setenv("CALLIOPE_LOCAL_ECS_ACCESS_KEY_ID", "AKIAHUBONLY")
    spec = ContainerSpec("lab", "x", ["true"], {"A": "1"}, secrets={"TOKEN": "t"})
    env = container_view(spec, "127.0.0.9", tmp_path).env
    assert {"A": "1", "TOKEN": "t", "LOCALECS_TASK_IP": "127.0.0.9"}.items() <= env.items()
    assert "AKIAHUBONLY" not in json.dumps(env)
