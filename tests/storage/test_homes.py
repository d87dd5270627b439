"""Per-user EFS homes (issue 12 items 2-3): the catalog's storage block and the access points the hub makes.

Contract: `Homes` against local ECS's EFS and against moto's (moto implements CreateAccessPoint,
DeleteAccessPoint and ClientToken idempotency); the limit and a missing file system against local
ECS only, where `--efs-access-point-limit` makes the limit reachable.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from calliope_hub.catalog import BUILTIN_DIRECTORY, CatalogConfigError, load_service
from calliope_hub.catalog.models import Storage
from calliope_hub.ecs.api import EcsTarget, aws_client
from calliope_hub.ecs.storage import Homes, StorageError, escape_username, home_path, shard
from calliope_hub.ecs.taskdefs import with_home

STORAGE = {"type": "efs", "file_system_id": "auto", "uid": 1000, "gid": 100, "mount_path": "/home/jovyan"}


@pytest.fixture(params=["local", "moto"])
def implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def endpoint(implementation: str, request: pytest.FixtureRequest, local_ecs_factory: Any) -> str:
    if implementation == "moto":
        return str(request.getfixturevalue("moto_ecs"))
    return str(local_ecs_factory().endpoint_url)


@pytest.fixture
async def homes(endpoint: str) -> AsyncIterator[Homes]:
    async with aws_client("efs", EcsTarget("us-east-1", endpoint)) as client:
        yield Homes(client, "hub-1")


def efs(endpoint: str) -> Any:
    return boto3.client("efs", endpoint_url=endpoint, region_name="us-east-1")


async def test_one_access_point_per_user_tagged_and_reused(homes: Homes, endpoint: str, implementation: str) -> None:
    storage = Storage.model_validate(STORAGE)
    alice = await homes.ensure(storage, "alice")
    if implementation == "local":  # moto ignores ClientToken: a second call makes a second one
        assert await homes.ensure(storage, "alice") == alice, "the same ClientToken gives the same access point"
    bob = await homes.ensure(storage, "bob")
    assert bob.access_point_id != alice.access_point_id and bob.file_system_id == alice.file_system_id
    point = efs(endpoint).describe_access_points(AccessPointId=alice.access_point_id)["AccessPoints"][0]
    assert point["PosixUser"] == {"Uid": 1000, "Gid": 100}
    assert point["RootDirectory"]["Path"] == "/home/alice"
    assert point["RootDirectory"]["CreationInfo"] == {"OwnerUid": 1000, "OwnerGid": 100, "Permissions": "0750"}
    assert {t["Key"]: t["Value"] for t in point["Tags"]} == {"calliope:hub": "hub-1", "calliope:user": "alice"}
    await homes.delete(bob.access_point_id)
    await homes.delete(bob.access_point_id)  # already gone: not an error
    left = {
        p["AccessPointId"]
        for p in efs(endpoint).describe_access_points(FileSystemId=alice.file_system_id)["AccessPoints"]
    }
    # moto is one server per session: other tests' access points may share its auto file system
    assert alice.access_point_id in left and bob.access_point_id not in left


async def test_the_limit_and_a_missing_file_system_are_clear_errors(local_ecs_factory: Any) -> None:
    endpoint = local_ecs_factory(efs_access_point_limit=1).endpoint_url
    async with aws_client("efs", EcsTarget("us-east-1", endpoint)) as client:
        homes = Homes(client, "hub-1")
        carol = await homes.ensure(Storage.model_validate(STORAGE), "carol")
        with pytest.raises(StorageError, match="access point limit reached") as full:
            await homes.ensure(Storage.model_validate(STORAGE), "alice")
        assert (full.value.code, full.value.transient, full.value.throttled) == (
            "AccessPointLimitExceeded",
            False,
            False,
        )
        missing = Storage.model_validate({**STORAGE, "file_system_id": "fs-0123456789abcdef0"})
        with pytest.raises(StorageError, match="fs-0123456789abcdef0 does not exist"):
            await homes.ensure(missing, "alice")
    left = efs(endpoint).describe_access_points()["AccessPoints"]
    assert [p["AccessPointId"] for p in left] == [carol.access_point_id], "nothing half-created"


async def test_a_throttled_create_is_a_transient_error_that_names_the_throttle(local_ecs_factory: Any) -> None:
    """What the launch's retry reads: EFS's ThrottlingException (here local ECS's fault) may pass later."""
    local = local_ecs_factory()
    async with aws_client("efs", EcsTarget("us-east-1", local.endpoint_url), max_attempts=1) as client:
        homes = Homes(client, "hub-1")
        storage = Storage.model_validate(STORAGE)
        await homes.ensure(storage, "carol")  # the auto file system exists before the throttle
        assert local.request("POST", "/_localecs/faults/throttle", {"seconds": 5})[0] == 200
        with pytest.raises(StorageError, match=r"^CreateAccessPoint: ThrottlingException") as throttled:
            await homes.ensure(storage, "alice")
    error = throttled.value
    assert (error.code, error.transient, error.throttled) == ("ThrottlingException", True, True)


def test_names_are_escaped_into_one_path_component_and_shards_are_stable() -> None:
    storage = Storage.model_validate(STORAGE)
    assert home_path(storage, "ada.lovelace") == "/home/ada_2Elovelace"
    assert escape_username("..") == "_2E_2E" and escape_username("a/b") == "a_2Fb"
    assert escape_username("a_2F") != escape_username("a/"), "injective"
    systems = ("fs-00000001", "fs-00000002", "fs-00000003")
    placed = {user: shard(systems, user) for user in (f"user{i}" for i in range(300))}
    assert placed == {user: shard(systems, user) for user in placed}
    assert set(placed.values()) == set(systems), "users spread over every file system"


def test_a_home_in_the_definition_is_encrypted_iam_authorized_and_the_working_directory() -> None:
    base = {"family": "f", "containerDefinitions": [{"name": "notebook", "image": "x"}]}
    request = with_home(base, "/home/jovyan", "fs-00000001", "fsap-0000000000000001")
    (volume,) = request["volumes"]
    assert volume["efsVolumeConfiguration"] == {
        "fileSystemId": "fs-00000001",
        "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": "fsap-0000000000000001", "iam": "ENABLED"},
    }
    container = request["containerDefinitions"][0]
    assert container["mountPoints"] == [{"sourceVolume": "home", "containerPath": "/home/jovyan", "readOnly": False}]
    assert container["workingDirectory"] == "/home/jovyan"
    assert "volumes" not in base and "mountPoints" not in base["containerDefinitions"][0]


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ("  file_system_id: fs-12", "storage.file_system_id", "not an EFS file system ID"),
        ("  uid: -1", "storage.uid", "greater than or equal to 0"),
        ("  root_path: /home/{user}", "storage.root_path", "must contain {username}"),
        ("  root_path: /a/b/c/d/{username}", "storage.root_path", "at most 4 directories"),
        ("  type: s3", "storage.type", "'efs'"),
    ],
)
def test_a_bad_storage_block_is_refused_naming_file_line_and_field(
    tmp_path: Path, line: str, field: str, words: str
) -> None:
    path = tmp_path / "lab.yaml"
    shutil.copy(Path(BUILTIN_DIRECTORY) / "lab.yaml", path)
    text = path.read_text()
    key = line.split(":")[0]
    lines = text.splitlines()
    index = next(i for i, old in enumerate(lines) if old.startswith(key + ":") and i > text.count("\n") - 10)
    lines[index] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CatalogConfigError) as refused:
        load_service(path)
    message = str(refused.value)
    assert str(path) in message and f"line {index + 1}: {field}" in message and words in message, message
