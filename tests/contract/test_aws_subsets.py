"""The SSM Parameter Store and EFS calls the hub makes, through real boto3, against local ECS and moto.

Both implementations answer on one endpoint, as local ECS does. Where moto (5.x) does not
implement what AWS does, the case is `local_ecs_only` and says what moto lacks; it still
runs against local ECS.
"""

from __future__ import annotations

import itertools

import boto3
import pytest
from botocore.exceptions import ClientError

_names = itertools.count()
CREATION = {"OwnerUid": 1000, "OwnerGid": 100, "Permissions": "750"}


@pytest.fixture
def ssm(ecs_endpoint: str):
    return boto3.client("ssm", endpoint_url=ecs_endpoint, region_name="us-east-1")


@pytest.fixture
def efs(ecs_endpoint: str):
    return boto3.client("efs", endpoint_url=ecs_endpoint, region_name="us-east-1")


@pytest.fixture
def file_system(efs) -> str:
    return efs.create_file_system(CreationToken=f"homes-{next(_names)}")["FileSystemId"]


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value.response["Error"]["Code"]


def new_access_point(efs, system: str, user: str) -> dict:
    return efs.create_access_point(
        ClientToken=f"{user}-{next(_names)}",
        FileSystemId=system,
        PosixUser={"Uid": 1000, "Gid": 100},
        RootDirectory={"Path": f"/home/{user}", "CreationInfo": CREATION},
        Tags=[{"Key": "calliope:user", "Value": user}, {"Key": "calliope:hub", "Value": "contract"}],
    )


# ---------------------------------------------------------------- SSM


def test_a_server_parameter_is_created_rotated_and_deleted(ssm):
    name = f"/calliope/contract/user{next(_names)}/server"
    created = ssm.put_parameter(
        Name=name, Value="token-1", Type="SecureString", Tags=[{"Key": "calliope:hub", "Value": "contract"}]
    )
    assert created["Version"] == 1
    assert code_of(ssm.put_parameter, Name=name, Value="token-2", Type="SecureString") == "ParameterAlreadyExists"
    assert ssm.put_parameter(Name=name, Value="token-2", Type="SecureString", Overwrite=True)["Version"] == 2
    ssm.delete_parameter(Name=name)
    assert code_of(ssm.delete_parameter, Name=name) == "ParameterNotFound"


def test_delete_parameters_reports_what_was_not_there(ssm):
    names = [f"/calliope/contract/bulk{next(_names)}/{n}" for n in range(3)]
    for name in names[:2]:
        ssm.put_parameter(Name=name, Value="v", Type="String")
    answer = ssm.delete_parameters(Names=names)
    assert sorted(answer["DeletedParameters"]) == sorted(names[:2])
    assert answer["InvalidParameters"] == names[2:]


def test_a_string_parameter_reads_back_by_name_and_arn(ssm):
    name = f"/calliope/contract/plain{next(_names)}"
    ssm.put_parameter(Name=name, Value="visible", Type="String")
    parameter = ssm.get_parameter(Name=name)["Parameter"]
    assert (parameter["Value"], parameter["Type"], parameter["Version"]) == ("visible", "String", 1)
    assert parameter["ARN"].endswith(f":parameter{name}")
    missing = f"/calliope/contract/missing{next(_names)}"
    answer = ssm.get_parameters(Names=[name, missing])
    assert [p["Name"] for p in answer["Parameters"]] == [name] and answer["InvalidParameters"] == [missing]


@pytest.mark.local_ecs_only(reason="moto hands SecureString values to any caller; local ECS refuses by design")
def test_secure_string_values_are_not_readable_through_the_api(ssm):
    name = f"/calliope/contract/secret{next(_names)}"
    ssm.put_parameter(Name=name, Value="never-shown", Type="SecureString")
    assert code_of(ssm.get_parameter, Name=name, WithDecryption=True) == "AccessDeniedException"


def test_tags_and_overwrite_exclude_each_other(ssm):
    name = f"/calliope/contract/tagged{next(_names)}"
    ssm.put_parameter(Name=name, Value="v", Type="String")
    tags = [{"Key": "calliope:user", "Value": "ada"}]
    assert code_of(ssm.put_parameter, Name=name, Value="w", Overwrite=True, Tags=tags) == "ValidationException"


# ---------------------------------------------------------------- EFS


def test_a_creation_token_makes_one_file_system(efs):
    token = f"homes-{next(_names)}"
    created = efs.create_file_system(CreationToken=token)
    assert code_of(efs.create_file_system, CreationToken=token) == "FileSystemAlreadyExists"
    [found] = efs.describe_file_systems(FileSystemId=created["FileSystemId"])["FileSystems"]
    assert (found["CreationToken"], found["LifeCycleState"]) == (token, "available")
    assert code_of(efs.describe_file_systems, FileSystemId="fs-0123456789abcdef0") == "FileSystemNotFound"


def test_an_access_point_per_user(efs, file_system):
    made = new_access_point(efs, file_system, "ada")
    assert made["FileSystemId"] == file_system and made["PosixUser"] == {"Uid": 1000, "Gid": 100}
    new_access_point(efs, file_system, "bob")
    by_system = efs.describe_access_points(FileSystemId=file_system)["AccessPoints"]
    assert sorted(p["RootDirectory"]["Path"] for p in by_system) == ["/home/ada", "/home/bob"]
    [by_id] = efs.describe_access_points(AccessPointId=made["AccessPointId"])["AccessPoints"]
    assert by_id["RootDirectory"]["CreationInfo"]["Permissions"] == "750"
    assert {t["Key"]: t["Value"] for t in by_id["Tags"]}["calliope:user"] == "ada"
    efs.delete_access_point(AccessPointId=made["AccessPointId"])
    assert code_of(efs.describe_access_points, AccessPointId=made["AccessPointId"]) == "AccessPointNotFound"
    left = efs.describe_access_points(FileSystemId=file_system)["AccessPoints"]
    assert [p["RootDirectory"]["Path"] for p in left] == ["/home/bob"]


@pytest.mark.local_ecs_only(reason="moto ignores ClientToken: a repeated CreateAccessPoint makes a second one")
def test_a_client_token_makes_one_access_point(efs, file_system):
    token = f"ada-{next(_names)}"
    first = efs.create_access_point(ClientToken=token, FileSystemId=file_system)
    with pytest.raises(ClientError) as raised:
        efs.create_access_point(ClientToken=token, FileSystemId=file_system)
    assert raised.value.response["Error"]["Code"] == "AccessPointAlreadyExists"
    assert raised.value.response["AccessPointId"] == first["AccessPointId"]


@pytest.mark.local_ecs_only(reason="moto creates access points on file systems that do not exist")
def test_an_access_point_needs_its_file_system(efs):
    code = code_of(efs.create_access_point, ClientToken="x", FileSystemId="fs-0123456789abcdef0")
    assert code == "FileSystemNotFound"


@pytest.mark.local_ecs_only(reason="moto's DeleteAccessPoint succeeds for an access point that does not exist")
def test_deleting_a_missing_access_point_is_an_error(efs):
    assert code_of(efs.delete_access_point, AccessPointId="fsap-0123456789abcdef0") == "AccessPointNotFound"


@pytest.mark.local_ecs_only(reason="moto's DescribeAccessPoints does not page (MaxResults and NextToken are ignored)")
def test_access_points_page(efs, file_system):
    made = [new_access_point(efs, file_system, f"user{n}")["AccessPointId"] for n in range(3)]
    first = efs.describe_access_points(FileSystemId=file_system, MaxResults=2)
    rest = efs.describe_access_points(FileSystemId=file_system, MaxResults=2, NextToken=first["NextToken"])
    assert [p["AccessPointId"] for p in first["AccessPoints"] + rest["AccessPoints"]] == made
    assert "NextToken" not in rest
