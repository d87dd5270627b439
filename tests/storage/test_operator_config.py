"""An operator's own jupyterhub_config.py gives each user an EFS home (issue 12: a plain install works).

Everything the other hub tests get from the local-stack helpers is written here by hand, as an
operator would: the README's "Running it on AWS" snippet, read from the README, with only the
endpoint pointed at local ECS and the catalog path at a directory holding one service file whose
storage block names the operator's own file system; and stock `jupyterhub -f` rather than our
`calliope-jupyterhub`. The operator made the cluster and the file system beforehand; nothing
else is prepared. The first spawn must create the user's access point and register a task
definition that mounts it.
"""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path
from typing import Any

import boto3

from calliope_hub.catalog import BUILTIN_DIRECTORY
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_ready

README = Path(__file__).resolve().parents[2] / "README.md"
STORAGE = """
storage:
  type: efs
  file_system_id: {file_system}
  uid: 1000
  gid: 100
  root_path: /home/{{username}}
  mount_path: /home/jovyan
"""


class StockJupyterHub(HubProcess):
    """`jupyterhub -f jupyterhub_config.py`: the command an operator who never read our docs runs."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jupyterhub", "-f", str(self.config_path)]


def readme_snippet() -> str:
    """The jupyterhub_config.py block under the README's "Running it on AWS", as operators copy it."""
    text = README.read_text()
    start = text.index("```python\n", text.index("## Running it on AWS")) + len("```python\n")
    return text[start : text.index("\n```", start)]


def setting(config: str, name: str) -> str:
    """The string value `c.<name> = "..."` in `config` (what the test expects the hub to use)."""
    match = re.search(rf"^c\.{re.escape(name)} = [\"']([^\"']*)[\"']", config, re.MULTILINE)
    assert match, f"the README's snippet no longer sets c.{name}"
    return match.group(1)


def with_setting(config: str, name: str, value: str) -> str:
    """`config` with its one `c.<name> = ...` line set to `value`."""
    config, count = re.subn(rf"^c\.{re.escape(name)} = .*$", f"c.{name} = {value!r}", config, flags=re.MULTILINE)
    assert count == 1, f"the README's snippet no longer sets c.{name}"
    return config


def operator_config(endpoint: str, catalog: Path) -> str:
    """The README's snippet with local ECS standing in for AWS and the operator's catalog; and a login."""
    config = with_setting(readme_snippet(), "ECSSpawner.endpoint_url", endpoint)
    config = with_setting(config, "ECSSpawner.catalog_path", str(catalog))
    # Theirs would be OAuth or the like; the snippet leaves it to them (PAM would need OS users).
    return config + '\nc.JupyterHub.authenticator_class = "dummy"\n'


def lab_with_home(catalog: Path, file_system: str) -> None:
    """The operator's catalog: the built-in Lab service file, its storage block naming their file system."""
    text = (BUILTIN_DIRECTORY / "lab.yaml").read_text()
    catalog.mkdir()
    (catalog / "lab.yaml").write_text(text[: text.index("\nstorage:")] + STORAGE.format(file_system=file_system))


async def test_a_plain_operator_config_spawns_lab_with_an_efs_home(local_ecs_factory: Any, tmp_path: Path) -> None:
    require_proxy()
    snippet = readme_snippet()
    region, cluster, hub_id = (setting(snippet, f"ECSSpawner.{name}") for name in ("region", "cluster", "hub_id"))
    local = local_ecs_factory(region=region)
    aws = {name: boto3.client(name, endpoint_url=local.endpoint_url, region_name=region) for name in ("ecs", "efs")}
    aws["ecs"].create_cluster(clusterName=cluster)  # the operator's, made before the hub ever ran
    file_system = aws["efs"].create_file_system(CreationToken="operator-homes")["FileSystemId"]
    lab_with_home(tmp_path / "services", file_system)
    token = secrets.token_hex(16)
    config = operator_config(local.endpoint_url, tmp_path / "services") + api_token_config(token)

    async with StockJupyterHub(config) as hub, HubApi(hub.url, token) as admin:
        assert (await admin.request("POST", "/users/alice")).status == 201
        assert (await admin.request("POST", "/users/alice/server", {"user_options": {}})).status in (201, 202)
        await eventually(lambda: server_ready(admin, "alice"), 60, "alice's Lab ready")
        (arn,) = aws["ecs"].list_tasks(cluster=cluster)["taskArns"]
        (task,) = aws["ecs"].describe_tasks(cluster=cluster, tasks=[arn])["tasks"]

    (point,) = aws["efs"].describe_access_points(FileSystemId=file_system)["AccessPoints"]
    tags = {tag["Key"]: tag["Value"] for tag in point["Tags"]}
    assert (tags["calliope:user"], tags["calliope:hub"]) == ("alice", hub_id)
    assert point["PosixUser"] == {"Uid": 1000, "Gid": 100}
    assert point["RootDirectory"]["Path"] == "/home/alice"
    assert local.stats()["calls"]["CreateAccessPoint"]["ok"] == 1, "one access point, made by the first spawn"

    definition = aws["ecs"].describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    (volume,) = definition["volumes"]
    assert volume["efsVolumeConfiguration"] == {
        "fileSystemId": file_system,
        "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": point["AccessPointId"], "iam": "ENABLED"},
    }
    (container,) = definition["containerDefinitions"]
    mount = {"sourceVolume": volume["name"], "containerPath": "/home/jovyan", "readOnly": False}
    assert container["mountPoints"] == [mount] and container["workingDirectory"] == "/home/jovyan"
