"""Local ECS's EFS subset through a real boto3 `efs` client, and EFS volumes in process mode.

The promise under test: a file a task writes under its EFS mount survives the task; the
next task of the same access point finds it, another user's access point does not.
"""

from __future__ import annotations

import json
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: appends a line to notes.txt in its working directory (the mount), copies it to OUT, then serves.
WRITE_NOTE = (
    "import os, pathlib, time; notes = pathlib.Path('notes.txt'); line = os.environ['LINE'] + '\\n';"
    " notes.write_text(notes.read_text() + line if notes.exists() else line);"
    " pathlib.Path(os.environ['OUT']).write_text('|'.join([os.getcwd(), os.environ['NOTEBOOKS'], notes.read_text()]));"
    " time.sleep(60)"
)
CREATION = {"OwnerUid": 1000, "OwnerGid": 100, "Permissions": "0750"}


def clients(endpoint: str) -> tuple:
    return (
        boto3.client("efs", endpoint_url=endpoint, region_name="us-east-1"),
        boto3.client("ecs", endpoint_url=endpoint, region_name="us-east-1"),
    )


def failure(call, *args, **kwargs) -> dict:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value.response


def access_point(efs, system: str, token: str, path: str) -> str:
    return efs.create_access_point(
        ClientToken=token,
        FileSystemId=system,
        PosixUser={"Uid": 1000, "Gid": 100},
        RootDirectory={"Path": path, "CreationInfo": CREATION},
        Tags=[{"Key": "calliope:user", "Value": token}, {"Key": "Name", "Value": f"home-{token}"}],
    )["AccessPointId"]


def test_file_systems_are_created_once_per_token(local_ecs):
    efs, _ = clients(local_ecs.endpoint_url)
    created = efs.create_file_system(CreationToken="homes", Tags=[{"Key": "Name", "Value": "homes"}])
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (created["LifeCycleState"], created["Name"]) == ("creating", "homes")
    again = failure(efs.create_file_system, CreationToken="homes")
    assert (again["Error"]["Code"], again["FileSystemId"]) == ("FileSystemAlreadyExists", created["FileSystemId"])
    [found] = efs.describe_file_systems(FileSystemId=created["FileSystemId"])["FileSystems"]
    assert (found["LifeCycleState"], found["CreationToken"]) == ("available", "homes")
    assert efs.describe_file_systems(CreationToken="homes")["FileSystems"][0]["FileSystemId"] == found["FileSystemId"]
    for token in ("b", "c"):
        efs.create_file_system(CreationToken=token)
    first = efs.describe_file_systems(MaxItems=2)
    rest = efs.describe_file_systems(MaxItems=2, Marker=first["NextMarker"])
    assert len(first["FileSystems"]) == 2 and len(rest["FileSystems"]) == 1 and "NextMarker" not in rest
    missing = failure(efs.describe_file_systems, FileSystemId="fs-0123456789abcdef0")
    assert (missing["Error"]["Code"], missing["ResponseMetadata"]["HTTPStatusCode"]) == ("FileSystemNotFound", 404)


def test_access_points_are_idempotent_paged_and_deleted(local_ecs):
    efs, _ = clients(local_ecs.endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    made = efs.create_access_point(
        ClientToken="ada",
        FileSystemId=system,
        PosixUser={"Uid": 1000, "Gid": 100, "SecondaryGids": [10]},
        RootDirectory={"Path": "/home/ada", "CreationInfo": CREATION},
        Tags=[{"Key": "Name", "Value": "ada"}],
    )
    assert (made["LifeCycleState"], made["Name"], made["RootDirectory"]["Path"]) == ("creating", "ada", "/home/ada")
    again = failure(efs.create_access_point, ClientToken="ada", FileSystemId=system)
    assert (again["Error"]["Code"], again["AccessPointId"]) == ("AccessPointAlreadyExists", made["AccessPointId"])
    others = [access_point(efs, system, f"user{n}", f"/home/user{n}") for n in range(4)]
    [described] = efs.describe_access_points(AccessPointId=made["AccessPointId"])["AccessPoints"]
    assert described["LifeCycleState"] == "available" and described["PosixUser"]["SecondaryGids"] == [10]
    pages, token = [], None
    while True:
        page = efs.describe_access_points(FileSystemId=system, MaxResults=2, **({"NextToken": token} if token else {}))
        pages.append([p["AccessPointId"] for p in page["AccessPoints"]])
        token = page.get("NextToken")
        if token is None:
            break
    assert pages == [[made["AccessPointId"], others[0]], others[1:3], others[3:]]
    efs.delete_access_point(AccessPointId=others[0])
    assert failure(efs.delete_access_point, AccessPointId=others[0])["Error"]["Code"] == "AccessPointNotFound"
    assert failure(efs.describe_access_points, AccessPointId=others[0])["Error"]["Code"] == "AccessPointNotFound"
    both = failure(efs.describe_access_points, AccessPointId=made["AccessPointId"], FileSystemId=system)
    assert both["Error"]["Code"] == "BadRequest"
    unknown = failure(efs.create_access_point, ClientToken="x", FileSystemId="fs-0123456789abcdef0")
    assert unknown["Error"]["Code"] == "FileSystemNotFound"


@pytest.mark.parametrize(
    "fields",
    [
        {"RootDirectory": {"Path": "/home/../etc"}},
        {"RootDirectory": {"Path": "home/ada"}},
        {"RootDirectory": {"Path": "/a/b/c/d/e"}},
        {"RootDirectory": {"Path": "/home/ada", "CreationInfo": {"OwnerUid": 1, "OwnerGid": 1, "Permissions": "999"}}},
        {"PosixUser": {"Uid": 2**32, "Gid": 1}},
        {"Tags": [{"Key": "aws:reserved", "Value": "x"}]},
    ],
)
def test_bad_access_points_are_refused_and_leave_nothing(local_ecs, fields):
    efs, _ = clients(local_ecs.endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    answer = failure(efs.create_access_point, ClientToken="bad", FileSystemId=system, **fields)
    assert (answer["Error"]["Code"], answer["ResponseMetadata"]["HTTPStatusCode"]) == ("BadRequest", 400)
    assert efs.describe_access_points(FileSystemId=system)["AccessPoints"] == []


def test_the_access_point_limit_is_efs_quota(local_ecs_factory):
    efs, _ = clients(local_ecs_factory(efs_access_point_limit=2).endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    first = access_point(efs, system, "a", "/a")
    access_point(efs, system, "b", "/b")
    full = failure(access_point, efs, system, "c", "/c")
    assert (full["Error"]["Code"], full["ResponseMetadata"]["HTTPStatusCode"]) == ("AccessPointLimitExceeded", 403)
    efs.delete_access_point(AccessPointId=first)
    access_point(efs, system, "c", "/c")


def test_malformed_efs_requests_get_a_4xx(local_ecs):
    for method, path, body in (
        ("POST", "/2015-02-01/access-points", b"{not json"),
        ("POST", "/2015-02-01/access-points", b"[1, 2]"),
        ("POST", "/2015-02-01/file-systems", b'{"CreationToken": 7}'),
        ("PUT", "/2015-02-01/mount-targets", b"{}"),
        ("GET", "/2015-02-01/access-points?MaxResults=zero", None),
    ):
        request = urllib.request.Request(local_ecs.endpoint_url + path, data=body, method=method)
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        assert 400 <= raised.value.code < 500, (method, path)


def efs_task_definition(ecs, family: str, system: str, point: str | None, out: Path, **config) -> None:
    volume = {"fileSystemId": system, "transitEncryption": "ENABLED", **config}
    if point is not None:
        volume["authorizationConfig"] = {"accessPointId": point, "iam": "ENABLED"}
    ecs.register_task_definition(
        family=family,
        volumes=[{"name": "home", "efsVolumeConfiguration": volume}],
        containerDefinitions=[
            {
                "name": "lab",
                "image": "quay.io/jupyter/base-notebook",
                "command": [sys.executable, "-c", WRITE_NOTE],
                "workingDirectory": "/home/jovyan",
                "environment": [
                    {"name": "OUT", "value": str(out)},
                    {"name": "LINE", "value": family},
                    {"name": "NOTEBOOKS", "value": "/home/jovyan/work:/home/jovyanx"},
                ],
                "mountPoints": [{"sourceVolume": "home", "containerPath": "/home/jovyan"}],
            }
        ],
    )


def run_until_written(ecs, family: str, out: Path) -> str:
    arn = ecs.run_task(taskDefinition=family)["tasks"][0]["taskArn"]
    deadline = time.monotonic() + 20
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ecs.stop_task(task=arn, reason="done")
    text = out.read_text()
    out.unlink()
    return text


def test_files_under_the_mount_survive_the_task_and_stay_per_user(local_ecs_factory, tmp_path):
    data = tmp_path / "data"
    efs, ecs = clients(local_ecs_factory(mode="process", stop_timeout_s=2.0, data_dir=data).endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    ada, bob = access_point(efs, system, "ada", "/home/ada"), access_point(efs, system, "bob", "/home/bob")
    efs_task_definition(ecs, "lab-ada", system, ada, tmp_path / "out")
    efs_task_definition(ecs, "lab-bob", system, bob, tmp_path / "out")
    home = data / "efs" / system / "home" / "ada"

    cwd, notebooks, notes = run_until_written(ecs, "lab-ada", tmp_path / "out").split("|")
    assert (Path(cwd), notes) == (home, "lab-ada\n")
    assert notebooks == f"{home}/work:/home/jovyanx", "whole paths under the mount are mapped, others are not"
    assert stat.S_IMODE(home.stat().st_mode) == 0o750, "created with the access point's CreationInfo"
    assert run_until_written(ecs, "lab-ada", tmp_path / "out").split("|")[2] == "lab-ada\nlab-ada\n"
    assert run_until_written(ecs, "lab-bob", tmp_path / "out").split("|")[2] == "lab-bob\n"
    assert (home / "notes.txt").read_text() == "lab-ada\nlab-ada\n"


def test_a_task_whose_volume_cannot_mount_fails_as_ecs_says(local_ecs_factory, tmp_path):
    efs, ecs = clients(local_ecs_factory(mode="process", data_dir=tmp_path / "data").endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    gone = access_point(efs, system, "gone", "/home/gone")
    efs.delete_access_point(AccessPointId=gone)
    efs_task_definition(ecs, "lab-gone", system, gone, tmp_path / "out")
    efs_task_definition(ecs, "lab-no-fs", "fs-0123456789abcdef0", None, tmp_path / "out")
    efs_task_definition(ecs, "lab-no-dir", system, None, tmp_path / "out", rootDirectory="/never/made")
    for family, words in (
        ("lab-gone", "access denied by server"),
        ("lab-no-fs", 'Failed to resolve "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com"'),
        ("lab-no-dir", "No such file or directory"),
    ):
        arn = ecs.run_task(taskDefinition=family)["tasks"][0]["taskArn"]
        deadline = time.monotonic() + 10
        while (task := ecs.describe_tasks(tasks=[arn])["tasks"][0])["lastStatus"] != "STOPPED":
            assert time.monotonic() < deadline, family
            time.sleep(0.05)
        assert task["stopCode"] == "TaskFailedToStart"
        prefix = "ResourceInitializationError: failed to invoke EFS utils commands to set up EFS volumes"
        assert task["stoppedReason"].startswith(prefix) and words in task["stoppedReason"], family


@pytest.mark.parametrize(
    "volume, mount",
    [
        (
            {
                "fileSystemId": "fs-0123456789abcdef0",
                "authorizationConfig": {"accessPointId": "fsap-0123456789abcdef0"},
            },
            "/home/jovyan",
        ),
        (
            {
                "fileSystemId": "fs-0123456789abcdef0",
                "transitEncryption": "ENABLED",
                "rootDirectory": "/x",
                "authorizationConfig": {"accessPointId": "fsap-0123456789abcdef0"},
            },
            "/home/jovyan",
        ),
        ({"fileSystemId": "fs-0123456789abcdef0", "authorizationConfig": {"iam": "ENABLED"}}, "/home/jovyan"),
        ({"fileSystemId": "fs-0123456789abcdef0", "rootDirectory": "/a/../b"}, "/home/jovyan"),
        ({"fileSystemId": "fs-0123456789abcdef0"}, "/"),
        ({"fileSystemId": "fs-0123456789abcdef0"}, "relative/path"),
    ],
)
def test_register_refuses_what_ecs_refuses_in_efs_volumes(local_ecs, volume, mount):
    _, ecs = clients(local_ecs.endpoint_url)
    answer = failure(
        ecs.register_task_definition,
        family="bad",
        volumes=[{"name": "home", "efsVolumeConfiguration": volume}],
        containerDefinitions=[
            {
                "name": "lab",
                "image": "x",
                "command": ["true"],
                "mountPoints": [{"sourceVolume": "home", "containerPath": mount}],
            }
        ],
    )
    assert answer["Error"]["Code"] == "ClientException"
    unknown_volume = failure(
        ecs.register_task_definition,
        family="bad",
        containerDefinitions=[
            {"name": "lab", "image": "x", "mountPoints": [{"sourceVolume": "nope", "containerPath": "/data"}]}
        ],
    )
    assert unknown_volume["Error"]["Code"] == "ClientException"
    assert ecs.list_task_definitions()["taskDefinitionArns"] == []


def test_a_notebook_saved_in_jupyter_server_lands_in_the_users_home(local_ecs_factory, tmp_path):
    """Real jupyter-server in process mode: its root is the EFS home, as Lab's would be on Fargate.

    That the next task of the same access point finds the file is the test above (a fast process).
    """
    local = local_ecs_factory(mode="process", stop_timeout_s=5.0, data_dir=tmp_path / "data")
    efs, ecs = clients(local.endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    home = access_point(efs, system, "ada", "/home/ada")
    ecs.register_task_definition(
        family="lab-ada",
        volumes=[
            {
                "name": "home",
                "efsVolumeConfiguration": {
                    "fileSystemId": system,
                    "transitEncryption": "ENABLED",
                    "authorizationConfig": {"accessPointId": home, "iam": "ENABLED"},
                },
            }
        ],
        containerDefinitions=[
            {
                "name": "lab",
                "image": "quay.io/jupyter/base-notebook",
                "command": [
                    str(Path(sys.executable).with_name("jupyter-server")),
                    "--ServerApp.ip=0.0.0.0",
                    "--ServerApp.port=8888",
                    "--IdentityProvider.token=t0k",
                    "--ServerApp.open_browser=False",
                    "--allow-root",
                ],
                "workingDirectory": "/home/jovyan",
                "environment": [{"name": "JUPYTER_RUNTIME_DIR", "value": "/home/jovyan/.runtime"}],
                "mountPoints": [{"sourceVolume": "home", "containerPath": "/home/jovyan"}],
                "healthCheck": {
                    "command": [
                        "CMD",
                        sys.executable,
                        "-c",
                        "import urllib.request; urllib.request.urlopen('http://0.0.0.0:8888/api')",
                    ],
                    "startPeriod": 30,
                    "interval": 5,
                    "timeout": 2,
                    "retries": 3,
                },
            }
        ],
    )

    arn = ecs.run_task(taskDefinition="lab-ada")["tasks"][0]["taskArn"]
    deadline = time.monotonic() + 60
    while (task := ecs.describe_tasks(tasks=[arn])["tasks"][0])["lastStatus"] not in ("RUNNING", "STOPPED"):
        assert time.monotonic() < deadline, "jupyter-server did not come up"
        time.sleep(0.1)
    log = local.server.plane.runner.log_path(arn.rsplit("/", 1)[-1])
    assert task["lastStatus"] == "RUNNING", log.read_text()[-2000:]
    api = f"http://{task['containers'][0]['networkInterfaces'][0]['privateIpv4Address']}:8888/api/contents/notes.txt"

    def contents(method: str, body: bytes | None = None) -> dict:
        headers = {"Authorization": "token t0k", "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(api, body, headers, method=method), timeout=10) as answer:
            return json.loads(answer.read())

    saved = json.dumps({"type": "file", "format": "text", "content": "written in Lab"}).encode()
    assert contents("PUT", saved)["path"] == "notes.txt"
    assert contents("GET")["content"] == "written in Lab"
    ecs.stop_task(task=arn, reason="user stopped the server")
    while ecs.describe_tasks(tasks=[arn])["tasks"][0]["lastStatus"] != "STOPPED":
        time.sleep(0.1)
    notes = tmp_path / "data" / "efs" / system / "home" / "ada" / "notes.txt"
    assert notes.read_text() == "written in Lab", "the file is in the user's access point, after the task is gone"


def test_with_a_data_dir_file_systems_and_access_points_outlive_local_ecs(local_ecs_factory, tmp_path):
    first = local_ecs_factory(data_dir=tmp_path / "data")
    efs, _ = clients(first.endpoint_url)
    system = efs.create_file_system(CreationToken="homes")["FileSystemId"]
    ada, bob = access_point(efs, system, "ada", "/home/ada"), access_point(efs, system, "bob", "/home/bob")
    efs.delete_access_point(AccessPointId=bob)
    first.stop()
    (tmp_path / "data" / "efs" / "objects.jsonl").open("a").write('{"kind": "ap", "id": "cut sho')  # a crash

    efs, _ = clients(local_ecs_factory(data_dir=tmp_path / "data").endpoint_url)
    [kept] = efs.describe_access_points(FileSystemId=system)["AccessPoints"]
    assert (kept["AccessPointId"], kept["RootDirectory"]["Path"], kept["PosixUser"]) == (
        ada,
        "/home/ada",
        {"Uid": 1000, "Gid": 100},
    )
    assert failure(efs.create_file_system, CreationToken="homes")["FileSystemId"] == system
    assert failure(access_point, efs, system, "ada", "/home/ada")["AccessPointId"] == ada
    later = access_point(efs, system, "cy", "/home/cy")
    assert [p["AccessPointId"] for p in efs.describe_access_points()["AccessPoints"]] == [ada, later]


_members = st.sampled_from(
    [
        "CreationToken",
        "ClientToken",
        "FileSystemId",
        "PosixUser",
        "Uid",
        "Gid",
        "SecondaryGids",
        "RootDirectory",
        "Path",
        "CreationInfo",
        "OwnerUid",
        "OwnerGid",
        "Permissions",
        "Tags",
        "Key",
        "Value",
        "ThroughputMode",
        "ProvisionedThroughputInMibps",
        "PerformanceMode",
        "Encrypted",
    ]
)
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**64)
    | st.text(max_size=6)
    | st.sampled_from(
        [
            "/",
            "/home/ada",
            "/a/../b",
            "0755",
            "999",
            "fs-0123456789abcdef0",
            "fsap-0123456789abcdef0",
            "ENABLED",
            "DISABLED",
            "provisioned",
            "x" * 200,
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_members, inner, max_size=4),
    max_leaves=10,
)
_requests = st.sampled_from(
    [
        ("POST", "/2015-02-01/file-systems"),
        ("GET", "/2015-02-01/file-systems"),
        ("POST", "/2015-02-01/access-points"),
        ("GET", "/2015-02-01/access-points"),
        ("DELETE", "/2015-02-01/access-points/fsap-0123456789abcdef0"),
        ("DELETE", "/2015-02-01/access-points/x/y"),
        ("PATCH", "/2015-02-01/access-points"),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    request=_requests,
    body=st.dictionaries(_members, _values, max_size=5),
    query=st.dictionaries(
        st.sampled_from(
            ["MaxItems", "MaxResults", "Marker", "NextToken", "FileSystemId", "AccessPointId", "CreationToken"]
        ),
        st.text(max_size=30),
        max_size=3,
    ),
)
def test_no_efs_input_earns_a_500(local_ecs, request, body, query):
    # one local ECS serves every example (hence the health check off), so file systems pile up as they would
    method, path = request
    url = local_ecs.endpoint_url + path + ("?" + urllib.parse.urlencode(query) if method == "GET" else "")
    data = json.dumps(body).encode() if method == "POST" else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, method=method), timeout=10) as answer:
            assert answer.status in (200, 201, 204)
    except urllib.error.HTTPError as error:
        assert 400 <= error.code < 500, (request, body, query, error.read())
        assert error.headers["x-amzn-ErrorType"]


_volume = st.fixed_dictionaries(
    {"name": st.sampled_from(["home", "data", "bad name"])},
    optional={
        "efsVolumeConfiguration": st.dictionaries(
            st.sampled_from(["fileSystemId", "rootDirectory", "transitEncryption", "authorizationConfig"]),
            st.sampled_from(["fs-0123456789abcdef0", "/", "/x", "/a/../b", "ENABLED", "DISABLED", "relative"])
            | st.dictionaries(
                st.sampled_from(["accessPointId", "iam"]),
                st.sampled_from(["fsap-0123456789abcdef0", "ENABLED", "nope"]),
                max_size=2,
            ),
            max_size=4,
        ),
    },
)
_mount = st.fixed_dictionaries(
    {},
    optional={
        "sourceVolume": st.sampled_from(["home", "data", "missing"]),
        "containerPath": st.sampled_from(["/home/jovyan", "/", "relative", "/data/x"]),
        "readOnly": st.booleans(),
    },
)


def ecs_call(endpoint: str, operation: str, body: dict) -> tuple[int, dict]:
    """A raw ECS call, so the fuzzer can send what botocore would refuse to serialize."""
    headers = {
        "X-Amz-Target": f"AmazonEC2ContainerServiceV20141113.{operation}",
        "Content-Type": "application/x-amz-json-1.1",
    }
    request = urllib.request.Request(endpoint + "/", json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(volumes=st.lists(_volume, max_size=3), mounts=st.lists(_mount, max_size=3))
def test_any_efs_task_definition_registers_cleanly_or_is_refused(local_ecs, volumes, mounts):
    container = {"name": "lab", "image": "x", "command": ["true"], "mountPoints": mounts}
    definition = {"family": "fuzz", "volumes": volumes, "containerDefinitions": [container]}
    status, answer = ecs_call(local_ecs.endpoint_url, "RegisterTaskDefinition", definition)
    assert status in (200, 400), answer
    if status == 200:  # it runs, or stops TaskFailedToStart with a reason: never a 500
        status, answer = ecs_call(local_ecs.endpoint_url, "RunTask", {"taskDefinition": "fuzz"})
        assert status == 200 and answer["tasks"][0]["lastStatus"] == "PROVISIONING", answer
