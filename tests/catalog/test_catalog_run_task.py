"""A Choice to the RunTask request: its fields, clientToken, startedBy and tags; also sent for real,
through boto3, to moto's ECS server.
"""

from __future__ import annotations

import json

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calliope_hub.catalog import (
    Catalog,
    CatalogError,
    Placement,
    TaskIdentity,
    decode_tag_value,
    encode_tag_value,
    read_tags,
    run_task_request,
)

REGION = "us-east-1"


def identity_for(choice, attempt: int = 0, user: str = "alice@example.org", server: str = "") -> TaskIdentity:
    return TaskIdentity(
        hub_id="hub-1",
        user=user,
        server_name=server,
        service=choice.service.name,
        size=choice.size_name,
        attempt=attempt,
    )


# --- RunTask requests ---------------------------------------------------------------------------


def test_run_task_request_fields(catalog: Catalog) -> None:
    choice = catalog.choose({"service": "lab", "size": "medium"})
    identity = identity_for(choice, server="gpu work")
    placement = Placement(cluster="c1", subnets=["subnet-1"], security_groups=("sg-1",), assign_public_ip=True)
    request = run_task_request(choice, identity, placement, {"JUPYTERHUB_API_TOKEN": "t"}, ["--debug"])

    assert (request["cluster"], request["taskDefinition"], request["count"]) == ("c1", "calliope-lab", 1)
    assert request["launchType"] == "FARGATE" and "capacityProviderStrategy" not in request
    assert request["networkConfiguration"] == {
        "awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"], "assignPublicIp": "ENABLED"}
    }
    overrides = request["overrides"]
    assert (overrides["cpu"], overrides["memory"]) == ("2048", "8192")
    assert overrides["containerOverrides"] == [
        {
            "name": "notebook",
            "environment": [
                {"name": "JUPYTERHUB_API_TOKEN", "value": "t"},
                {"name": "CALLIOPE_SERVICE", "value": "lab"},
                {"name": "CALLIOPE_SIZE", "value": "medium"},
            ],
            "command": ["jupyterhub-singleuser", "--debug"],
        }
    ]
    assert len(request["tags"]) <= 50
    assert read_tags(request["tags"]) == {
        "hub": "hub-1",
        "user": "alice@example.org",
        "server": "gpu work",
        "service": "lab",
        "size": "medium",
    }
    assert request["startedBy"] == "calliope-hub/hub-1"
    assert (request["enableECSManagedTags"], request["propagateTags"]) == (False, "NONE")
    # Nothing but the catalog decides what runs.
    assert not {"image", "taskRoleArn", "executionRoleArn"} & set(json.dumps(request).split('"'))


def test_client_token_is_stable_per_attempt_and_new_for_the_next(catalog: Catalog) -> None:
    choice = catalog.choose({})
    first, again, retry = identity_for(choice, 0), identity_for(choice, 0), identity_for(choice, 1)
    other_user = identity_for(choice, 0, user="bob")
    assert len(first.client_token) <= 64
    assert first.client_token == again.client_token
    assert len({first.client_token, retry.client_token, other_user.client_token}) == 3


def test_started_by_stays_in_ecs_alphabet_and_length(catalog: Catalog) -> None:
    identity = TaskIdentity(
        hub_id="prod hub.eu:1" + "x" * 200, user="u", server_name="", service="lab", size="small", attempt=0
    )
    assert identity.started_by.startswith("calliope-hub/prod-hub-eu-1x")
    assert len(identity.started_by) == 128
    assert set(identity.started_by) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/")
    with pytest.raises(ValueError, match="hub_id must not be empty"):
        TaskIdentity(hub_id="", user="u", server_name="", service="lab", size="small", attempt=0)
    with pytest.raises(ValueError, match="attempt must be"):
        TaskIdentity(hub_id="h", user="u", server_name="", service="lab", size="small", attempt=-1)


def test_services_with_their_own_entrypoint_get_no_command_and_local_uses_local_command(catalog: Catalog) -> None:
    chat = catalog.choose({"service": "chat"})
    request = run_task_request(chat, identity_for(chat), Placement(cluster="c"), {}, ["--ignored"])
    assert "command" not in request["overrides"]["containerOverrides"][0]
    assert "networkConfiguration" not in request  # no subnets: local ECS needs none
    lab = catalog.choose({})
    local = run_task_request(lab, identity_for(lab), Placement(cluster="c"), {}, ["--x"], local=True)
    assert local["overrides"]["containerOverrides"][0]["command"] == ["jupyterhub-singleuser", "--x"]


def test_launch_type_and_capacity_provider_strategy_exclude_each_other(catalog: Catalog) -> None:
    strategy = ({"capacityProvider": "FARGATE_SPOT", "weight": 1},)
    with pytest.raises(CatalogError, match="either launch_type or capacity_provider_strategy, not both"):
        Placement(cluster="c", capacity_provider_strategy=strategy)
    with pytest.raises(CatalogError, match="launch_type 'LAMBDA' is not one of"):
        Placement(cluster="c", launch_type="LAMBDA")
    with pytest.raises(CatalogError, match="needs a 'capacityProvider'"):
        Placement(cluster="c", launch_type=None, capacity_provider_strategy=({"weight": 1},))
    choice = catalog.choose({})
    request = run_task_request(
        choice, identity_for(choice), Placement(cluster="c", launch_type=None, capacity_provider_strategy=strategy), {}
    )
    assert "launchType" not in request
    assert request["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]


def test_run_task_request_refuses_inconsistent_or_oversized_input(catalog: Catalog) -> None:
    choice = catalog.choose({})
    wrong = TaskIdentity(hub_id="h", user="u", server_name="", service="chat", size="small", attempt=0)
    with pytest.raises(ValueError, match="the tags would lie"):
        run_task_request(choice, wrong, Placement(cluster="c"), {})
    with pytest.raises(TypeError, match="not one string"):
        run_task_request(choice, identity_for(choice), Placement(cluster="c"), {}, "--debug")
    with pytest.raises(CatalogError, match="ECS allows at most 8192"):
        run_task_request(choice, identity_for(choice), Placement(cluster="c"), {"BIG": "x" * 9000})


@given(st.text(max_size=21))  # 21 four-byte characters escape to 252 characters: never cut
def test_tag_values_read_back_exactly(value: str) -> None:
    assert decode_tag_value(encode_tag_value(value)) == value


@given(st.text(max_size=300))
def test_tag_values_stay_in_ecs_alphabet_and_length(value: str) -> None:
    encoded = encode_tag_value(value)
    assert len(encoded) <= 256
    assert all(ch.isalnum() or ch in " +-=.:/@_" for ch in encoded)


def test_long_tag_values_stay_distinct() -> None:
    a, b = "é" * 200 + "a", "é" * 200 + "b"
    assert encode_tag_value(a) != encode_tag_value(b)
    assert len(encode_tag_value(a)) <= 256


# --- a real RunTask against moto's ECS (tests/conftest.py's moto_ecs) ----------------------------


def aws_client(service: str, endpoint: str):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.mark.parametrize("service", ["lab", "chat"])
def test_real_run_task_against_moto(catalog: Catalog, moto_ecs: str, service: str) -> None:
    ecs, ec2 = aws_client("ecs", moto_ecs), aws_client("ec2", moto_ecs)
    subnet = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][0]
    cluster = f"catalog-{service}"
    ecs.create_cluster(clusterName=cluster)
    ecs.register_task_definition(**catalog.task_definition(service, local=False))
    choice = catalog.choose({"service": service, "size": "medium"})
    identity = identity_for(choice, attempt=3, server="analysis")
    placement = Placement(cluster=cluster, subnets=(subnet["SubnetId"],))

    task = ecs.run_task(**run_task_request(choice, identity, placement, {"A": "1"}, ["--debug"]))["tasks"][0]
    (described,) = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]], include=["TAGS"])["tasks"]

    assert described["startedBy"] == "calliope-hub/hub-1"
    assert read_tags(described["tags"]) == {
        "hub": "hub-1",
        "user": "alice@example.org",
        "server": "analysis",
        "service": service,
        "size": "medium",
    }
    assert described["overrides"]["cpu"] == str(choice.size.cpu)
    assert described["overrides"]["memory"] == str(choice.size.memory)
    assert described["taskDefinitionArn"].split("/")[-1].startswith(choice.service.family + ":")
    listed = ecs.list_tasks(cluster=cluster, startedBy=identity.started_by)["taskArns"]
    assert task["taskArn"] in listed
