"""One ECS contract, run through real boto3 against local ECS and against moto.

It pins down what the spawner relies on. Cases where moto differs from real ECS are
marked `local_ecs_only` with the reason; they still run against local ECS.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from calliope_hub.ecsfacts import LIFECYCLE

_names = itertools.count()
HUB = "calliope-hub/contract"


@pytest.fixture
def ecs(ecs_endpoint: str, network: dict):
    client = boto3.client(
        "ecs", endpoint_url=ecs_endpoint, region_name="us-east-1", config=Config(retries={"mode": "standard"})
    )
    client.network = network  # what `run` passes as networkConfiguration
    return client


@pytest.fixture
def network(request: pytest.FixtureRequest, ecs_endpoint: str) -> dict:
    """An awsvpc networkConfiguration: moto checks its subnet exists in its EC2; local ECS takes any."""
    subnet, group = "subnet-12345678", "sg-12345678"
    if request.node.callspec.params["ecs_endpoint"] == "moto":
        ec2 = boto3.client("ec2", endpoint_url=ecs_endpoint, region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's ENI needs it
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"sg-{next(_names)}", Description="t", VpcId=vpc)["GroupId"]
    return {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}}


@pytest.fixture
def cluster(ecs) -> str:
    name = f"contract-{next(_names)}"
    ecs.create_cluster(clusterName=name)
    return name


@pytest.fixture
def family(ecs, network: dict) -> str:
    name = f"lab-{next(_names)}"
    ecs.register_task_definition(
        family=name,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": "lab",
                "image": "quay.io/jupyter/base-notebook",
                "portMappings": [{"containerPort": 8888}],
                "command": ["jupyterhub-singleuser", "--ip=0.0.0.0"],
                "essential": True,
                "cpu": 1024,
                "memory": 2048,
            }
        ],
    )
    return name


def run(ecs, cluster: str, family: str, **extra) -> list[dict]:
    params = dict(
        cluster=cluster,
        taskDefinition=family,
        launchType="FARGATE",
        networkConfiguration=ecs.network,
        startedBy=HUB,
        tags=[{"key": "calliope:user", "value": "ada"}, {"key": "calliope:server", "value": ""}],
    )
    params.update(extra)
    answer = ecs.run_task(**params)
    assert answer["failures"] == []
    return answer["tasks"]


def describe(ecs, cluster: str, arns: list[str], **extra) -> dict:
    return ecs.describe_tasks(cluster=cluster, tasks=arns, **extra)


def wait_for(ecs, cluster: str, arn: str, done: Callable[[dict], bool], timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = describe(ecs, cluster, [arn])["tasks"][0]
        if done(task) or time.monotonic() > deadline:
            return task
        time.sleep(0.02)


def eni_ip(task: dict) -> str | None:
    for attachment in task.get("attachments", []):
        if attachment["type"] == "ElasticNetworkInterface":
            details = {d["name"]: d["value"] for d in attachment["details"]}
            return details.get("privateIPv4Address")
    return None


# ---------------------------------------------------------------- clusters


def test_cluster_create_describe_delete(ecs):
    name = f"contract-{next(_names)}"
    created = ecs.create_cluster(clusterName=name, tags=[{"key": "team", "value": "hub"}])["cluster"]
    assert created["clusterName"] == name and created["status"] == "ACTIVE"
    assert created["clusterArn"].endswith(f":cluster/{name}")
    described = ecs.describe_clusters(clusters=[name], include=["TAGS"])["clusters"][0]
    assert described["clusterArn"] == created["clusterArn"]
    assert described["tags"] == [{"key": "team", "value": "hub"}]
    assert ecs.delete_cluster(cluster=name)["cluster"]["status"] == "INACTIVE"


def test_unknown_cluster_is_cluster_not_found(ecs, family):
    with pytest.raises(ClientError) as raised:
        ecs.describe_tasks(cluster="no-such-cluster", tasks=["0123456789abcdef0123456789abcdef"])
    assert raised.value.response["Error"]["Code"] == "ClusterNotFoundException"


@pytest.mark.local_ecs_only(reason="moto does not report unknown clusters as MISSING failures")
def test_describe_clusters_reports_missing(ecs, cluster):
    answer = ecs.describe_clusters(clusters=[cluster, "never-made"])
    assert [c["clusterName"] for c in answer["clusters"]] == [cluster]
    assert answer["failures"][0]["reason"] == "MISSING"


# ---------------------------------------------------------------- task definitions


def test_task_definition_register_describe_list_deregister(ecs, family):
    first = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    assert first["family"] == family and first["revision"] == 1 and first["status"] == "ACTIVE"
    assert first["containerDefinitions"][0]["portMappings"][0]["containerPort"] == 8888
    second = ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        cpu="512",
        memory="1024",
        requiresCompatibilities=["FARGATE"],
        containerDefinitions=[{"name": "lab", "image": "img:2"}],
        tags=[{"key": "k", "value": "v"}],
    )
    assert second["taskDefinition"]["revision"] == 2
    assert ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]["revision"] == 2
    tagged = ecs.describe_task_definition(taskDefinition=f"{family}:2", include=["TAGS"])
    assert tagged["tags"] == [{"key": "k", "value": "v"}]
    arns = ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"]
    assert [a.rsplit(":", 1)[-1] for a in arns] == ["1", "2"]
    gone = ecs.deregister_task_definition(taskDefinition=f"{family}:2")["taskDefinition"]
    assert gone["status"] == "INACTIVE"
    assert ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"] == arns[:1]


def test_family_prefix_is_the_whole_family(ecs, family):
    """familyPrefix names one family, whatever its name says: a per-user family such as `lab-N-alice`
    must not turn up in the list for `lab-N`, and a bare prefix lists nothing."""
    ecs.register_task_definition(
        family=f"{family}-alice", containerDefinitions=[{"name": "lab", "image": "img:1", "memory": 512}]
    )
    listed = ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"]
    assert [arn.rsplit("/", 1)[-1] for arn in listed] == [f"{family}:1"]
    alice = ecs.list_task_definitions(familyPrefix=f"{family}-alice")["taskDefinitionArns"]
    assert [arn.rsplit("/", 1)[-1] for arn in alice] == [f"{family}-alice:1"]
    assert ecs.list_task_definitions(familyPrefix=family.rstrip("0123456789"))["taskDefinitionArns"] == []  # "lab-"


# ---------------------------------------------------------------- tasks


def test_run_task_answers_what_the_spawner_reads(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    assert task["taskArn"].startswith("arn:aws:ecs:us-east-1:")
    assert task["desiredStatus"] == "RUNNING"
    assert task["lastStatus"] in LIFECYCLE
    assert task["startedBy"] == HUB
    assert [c["name"] for c in task["containers"]] == ["lab"]
    assert task["taskDefinitionArn"].endswith(f":task-definition/{family}:1")


def test_describe_tasks_with_tags_and_ip(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    task = wait_for(ecs, cluster, task["taskArn"], lambda t: eni_ip(t) is not None)
    assert eni_ip(task)  # moto moves its tasks on by itself, so only local ECS's test checks RUNNING
    described = describe(ecs, cluster, [task["taskArn"]], include=["TAGS"])["tasks"][0]
    assert {t["key"]: t["value"] for t in described["tags"]} == {"calliope:user": "ada", "calliope:server": ""}
    assert described["startedBy"] == HUB


@pytest.mark.local_ecs_only(reason="moto has no version, no container networkInterfaces and no 127.x addresses")
def test_running_task_carries_version_and_its_own_loopback_address(ecs, cluster, family):
    tasks = run(ecs, cluster, family, count=2)
    described = [wait_for(ecs, cluster, t["taskArn"], lambda t: t["lastStatus"] == "RUNNING") for t in tasks]
    addresses = {eni_ip(t) for t in described}
    assert len(addresses) == 2 and "127.0.0.1" not in addresses
    for task in described:
        assert task["version"] >= 4  # PROVISIONING=1, PENDING, ACTIVATING, RUNNING
        assert task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"] == eni_ip(task)
        assert task["startedAt"] >= task["createdAt"]


def test_stop_task_records_reason(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    stopped = ecs.stop_task(cluster=cluster, task=task["taskArn"], reason="user logged out")["task"]
    assert stopped["desiredStatus"] == "STOPPED"
    final = wait_for(ecs, cluster, task["taskArn"], lambda t: t["lastStatus"] == "STOPPED")
    assert final["lastStatus"] == "STOPPED" and final["stoppedReason"] == "user logged out"


@pytest.mark.local_ecs_only(reason="moto sets no stopCode, versions or stop timestamps")
def test_stop_task_walks_the_lifecycle_to_stopped(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    running = wait_for(ecs, cluster, task["taskArn"], lambda t: t["lastStatus"] == "RUNNING")
    ecs.stop_task(cluster=cluster, task=task["taskArn"], reason="culled")
    final = wait_for(ecs, cluster, task["taskArn"], lambda t: t["lastStatus"] == "STOPPED")
    assert final["stopCode"] == "UserInitiated"
    assert final["version"] == running["version"] + 4  # DEACTIVATING, STOPPING, DEPROVISIONING, STOPPED
    assert final["stoppingAt"] <= final["stoppedAt"]


def test_list_tasks_filters(ecs, cluster, family):
    mine = [t["taskArn"] for t in run(ecs, cluster, family, count=2)]
    run(ecs, cluster, family, startedBy="someone-else")
    assert sorted(ecs.list_tasks(cluster=cluster, startedBy=HUB)["taskArns"]) == sorted(mine)
    assert len(ecs.list_tasks(cluster=cluster, family=family)["taskArns"]) == 3
    ecs.stop_task(cluster=cluster, task=mine[0], reason="done")
    wait_for(ecs, cluster, mine[0], lambda t: t["lastStatus"] == "STOPPED")
    assert ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"] == [mine[0]]


def test_task_tags_can_change(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    arn = task["taskArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "calliope:size", "value": "m"}])
    ecs.untag_resource(resourceArn=arn, tagKeys=["calliope:user"])
    tags = {t["key"]: t["value"] for t in ecs.list_tags_for_resource(resourceArn=arn)["tags"]}
    assert tags == {"calliope:server": "", "calliope:size": "m"}


# ---------------------------------------------------------------- where moto falls short


@pytest.mark.local_ecs_only(reason="moto never answers MISSING: unknown tasks are silently left out")
def test_unknown_tasks_are_missing(ecs, cluster, family):
    (task,) = run(ecs, cluster, family)
    unknown = task["taskArn"].rsplit("/", 1)[0] + "/" + "0" * 32
    answer = describe(ecs, cluster, [task["taskArn"], unknown, "f" * 32])
    assert [t["taskArn"] for t in answer["tasks"]] == [task["taskArn"]]
    assert [(f["arn"].rsplit("/", 1)[-1], f["reason"]) for f in answer["failures"]] == [
        ("0" * 32, "MISSING"),
        ("f" * 32, "MISSING"),
    ]


@pytest.mark.local_ecs_only(reason="moto ignores maxResults and nextToken")
def test_list_tasks_pages(ecs, cluster, family):
    started = {t["taskArn"] for _ in range(3) for t in run(ecs, cluster, family, count=10)}
    seen, token, pages = [], None, 0
    while True:
        answer = ecs.list_tasks(cluster=cluster, maxResults=7, **({"nextToken": token} if token else {}))
        seen += answer["taskArns"]
        pages += 1
        token = answer.get("nextToken")
        if not token:
            break
    assert pages == 5 and len(seen) == 30 and set(seen) == started


@pytest.mark.local_ecs_only(reason="moto ignores clientToken")
def test_client_token_makes_run_task_idempotent(ecs, cluster, family):
    first = run(ecs, cluster, family, clientToken="hub1-ada-lab-attempt1")
    again = run(ecs, cluster, family, clientToken="hub1-ada-lab-attempt1")
    assert [t["taskArn"] for t in again] == [t["taskArn"] for t in first]
    assert len(ecs.list_tasks(cluster=cluster)["taskArns"]) == 1


@pytest.mark.local_ecs_only(reason="moto accepts counts over 10 and invalid Fargate sizes")
def test_run_task_refuses_what_ecs_refuses(ecs, cluster, family):
    for bad in ({"count": 11}, {"overrides": {"cpu": "256", "memory": "4096"}}, {"networkConfiguration": {}}):
        with pytest.raises(ClientError) as raised:
            run(ecs, cluster, family, **bad)
        assert raised.value.response["Error"]["Code"] == "InvalidParameterException"
    assert ecs.list_tasks(cluster=cluster)["taskArns"] == []
