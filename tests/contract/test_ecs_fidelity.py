"""More of the ECS contract, found by running the stock spawners against local ECS (issue 12, item 5).

The same fixtures as test_ecs_contract.py: each case runs through real boto3 against local
ECS and against moto, unless marked `local_ecs_only` with the reason moto differs.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.contract.test_ecs_contract import cluster, ecs, family, network, run  # noqa: F401 - fixtures


def refused(call, **params) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call(**params)
    return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]


def test_task_definition_carries_what_ecs_adds_at_registration(ecs, family):
    described = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    assert described["status"] == "ACTIVE" and described["revision"] == 1
    assert described["taskDefinitionArn"].endswith(f":task-definition/{family}:1")
    assert set(described["compatibilities"]) >= {"EC2", "FARGATE"}
    assert described["requiresCompatibilities"] == ["FARGATE"]
    container = described["containerDefinitions"][0]
    assert container["essential"] is True and container["portMappings"][0]["containerPort"] == 8888
    assert described["networkMode"] == "awsvpc"


@pytest.mark.local_ecs_only(reason="moto returns no registeredAt, registeredBy or requiresAttributes")
def test_task_definition_says_who_registered_it_and_what_it_needs(ecs, family):
    described = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    assert described["registeredBy"] == "arn:aws:iam::000000000000:root"
    assert described["registeredAt"].timestamp() > 0  # botocore parses it as a timestamp
    needs = {attribute["name"] for attribute in described["requiresAttributes"]}
    assert "ecs.capability.task-eni" in needs  # awsvpc
    assert (described["volumes"], described["placementConstraints"]) == ([], [])
    container = described["containerDefinitions"][0]
    assert container["portMappings"][0] == {"containerPort": 8888, "hostPort": 8888, "protocol": "tcp"}
    assert (container["environment"], container["mountPoints"], container["volumesFrom"]) == ([], [], [])


def test_compatibilities_follow_the_definition(ecs):
    bridge = ecs.register_task_definition(
        family="fidelity-bridge", containerDefinitions=[{"name": "c", "image": "i", "memory": 512}]
    )["taskDefinition"]
    assert "FARGATE" not in bridge["compatibilities"] and "EC2" in bridge["compatibilities"]


def test_list_clusters_includes_a_new_cluster(ecs, cluster):
    arns = ecs.list_clusters()["clusterArns"]
    assert any(arn.endswith(f":cluster/{cluster}") for arn in arns)


@pytest.mark.local_ecs_only(reason="moto does not page ListClusters")
def test_list_clusters_pages_and_forgets_deleted_ones(ecs):
    names = [f"fidelity-page-{i}" for i in range(3)]
    for name in names:
        ecs.create_cluster(clusterName=name)
    ecs.delete_cluster(cluster=names[0])
    first = ecs.list_clusters(maxResults=2)
    rest = ecs.list_clusters(maxResults=2, nextToken=first["nextToken"])
    seen = [arn.rsplit("/", 1)[-1] for arn in first["clusterArns"] + rest["clusterArns"]]
    assert "nextToken" not in rest and len(seen) == len(set(seen))
    assert set(names[1:]) <= set(seen) and names[0] not in seen


@pytest.mark.local_ecs_only(
    reason="moto starts EC2 tasks of a Fargate-only definition and fails with a 500 "
    "when a cluster has no container instances"
)
def test_run_task_on_ec2_fails_as_ecs_does(ecs, cluster, family):
    code, message = refused(run, ecs=ecs, cluster=cluster, family=family, launchType="EC2")
    assert (code, message) == ("InvalidParameterException", "Task definition does not support launch_type EC2.")
    ecs.register_task_definition(
        family=f"{family}-ec2",
        requiresCompatibilities=["EC2"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "c", "image": "i"}],
    )
    code, message = refused(run, ecs=ecs, cluster=cluster, family=f"{family}-ec2", launchType="EC2")
    assert (code, message) == ("InvalidParameterException", "No Container Instances were found in your cluster.")
    assert ecs.list_tasks(cluster=cluster)["taskArns"] == []
