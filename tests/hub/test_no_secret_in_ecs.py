"""No server's token crosses the ECS API, and no local endpoint hands one user another's (issue 9 item 1).

A real JupyterHub spawns a real JupyterLab (Bob) and a Chat stand-in (Alice) through local
ECS in process mode, which answers only calls signed with the hub's access key ID. Each
server gets its token from its task definition's `secrets` (an SSM SecureString): Bob's Lab
from its own definition, Alice's Chat from a slot definition whose parameter is cleared as
soon as her task has read it. So:

- neither DescribeTasks nor DescribeTaskDefinition (nor ListTasks, nor local ECS's stats)
  carries a token, even to a caller holding the hub's key;
- code in Alice's server, which holds her token and environment but not the hub's key, gets
  403 from every ECS, SSM and EFS call, and the hub's API refuses her token for Bob;
- Bob's parameter is gone once his server stopped.

The second test restarts the hub and changes the catalog: local ECS's /_localecs/stats
count exactly one new revision for the change and none for the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.exceptions import ClientError

from calliope_hub.catalog import BUILTIN_DIRECTORY
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import eventually, require_proxy, server_gone, server_ready

HUB_KEY = "AKIDCALLIOPEHUBTEST"
USERS = ("alice", "bob")
#: Alice's Chat has no per-user storage: its token goes through a slot definition's parameter
#: (calliope_hub.ecs.slots); Bob's Lab has an EFS home: his own definition and parameter.
OPTIONS = {"alice": {"service": "chat"}, "bob": {"service": "lab"}}


def aws(service: str, endpoint: str, key: str = HUB_KEY) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key="x"
    )


def server_environments() -> dict[str, dict[str, str]]:
    """JUPYTERHUB_USER -> the environment of that user's server process (local ECS runs in this process)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            environ = child.environ()
        except psutil.Error:
            continue
        if environ.get("JUPYTERHUB_USER") in USERS and "LOCALECS_TASK_IP" in environ:
            found[environ["JUPYTERHUB_USER"]] = environ
    return found


async def _both_servers_environments() -> dict[str, dict[str, str]] | None:
    found = server_environments()
    return found if set(found) == set(USERS) else None


def refused(call: Any, *codes: str) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    code = str(caught.value.response["Error"]["Code"])
    assert code in codes, caught.value.response
    return code


async def test_no_token_in_ecs_answers_and_none_for_another_user(
    local_ecs_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_proxy()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", HUB_KEY)  # the hub (our child) signs with it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    # process mode runs jupyterhub-singleuser from local ECS's PATH
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    local = local_ecs_factory(mode="process", access_key_id=HUB_KEY)
    endpoint = local.endpoint_url
    aws("ecs", endpoint).create_cluster(clusterName="calliope")  # nothing else is prepared: the hub registers
    admin_token = secrets.token_hex(16)
    settings = HubSettings(ecs_endpoint=endpoint, extra=[api_token_config(admin_token)])
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, admin_token) as admin:
        for user in USERS:
            assert (await admin.request("POST", f"/users/{user}")).status == 201
        for user in USERS:
            body = {"user_options": OPTIONS[user]}
            assert (await admin.request("POST", f"/users/{user}/server", body)).status in (201, 202)
        for user in USERS:
            await eventually(lambda user=user: server_ready(admin, user), 90, f"{user}'s server ready")
        environments = await eventually(_both_servers_environments, 10, "both servers' processes")
        tokens = {user: environments[user]["JUPYTERHUB_API_TOKEN"] for user in USERS}
        assert all(len(token) >= 32 for token in tokens.values()), "each Lab got its token from the secret store"
        assert environments["alice"]["JPY_API_TOKEN"] == tokens["alice"]

        _assert_no_token_in_ecs_answers(endpoint, local, list(tokens.values()))
        alice_parameter = _parameter_of(endpoint, "alice")
        assert "/slots/chat/" in alice_parameter
        await eventually(lambda: _parameter_gone(endpoint, alice_parameter), 10, "the slot cleared once ECS read it")
        bob_parameter = _parameter_of(endpoint, "bob")
        _assert_alices_code_is_refused(endpoint, environments["alice"], bob_parameter)
        await _assert_the_hub_refuses_alices_token_for_bob(hub.url, tokens["alice"])

        assert (await admin.request("DELETE", "/users/bob/server")).status in (202, 204)
        await eventually(lambda: server_gone(admin, "bob"), 60, "bob's server stopped")
        await eventually(lambda: _parameter_gone(endpoint, bob_parameter), 10, "bob's parameter deleted")


def _assert_no_token_in_ecs_answers(endpoint: str, local: Any, tokens: list[str]) -> None:
    """Even the hub's own key reads no token from ECS: overrides and definitions hold none."""
    ecs = aws("ecs", endpoint)
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    assert len(arns) == 2
    answers = [ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])]
    families = {task["taskDefinitionArn"] for task in answers[0]["tasks"]}
    answers += [ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"]) for arn in families]
    answers.append(local.stats())
    text = json.dumps(answers, default=str)
    assert len(families) == 2, "Bob's Lab runs its own definition, Alice's Chat a slot's"
    assert '"secrets"' in text and "valueFrom" in text, "the definitions name the parameters"
    for token in tokens:
        assert token not in text
    for task in answers[0]["tasks"]:
        names = {e["name"] for o in task["overrides"]["containerOverrides"] for e in o.get("environment", [])}
        assert "JUPYTERHUB_USER" in names and not names & {"JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}


def _parameter_of(endpoint: str, user: str) -> str:
    """The parameter the definition of `user`'s task names: a slot's or the server's own."""
    ecs = aws("ecs", endpoint)
    arns = ecs.list_tasks(cluster="calliope")["taskArns"]
    for task in ecs.describe_tasks(cluster="calliope", tasks=arns, include=["TAGS"])["tasks"]:
        if {"key": "calliope:user", "value": user} in task.get("tags", []):
            definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
            return str(definition["containerDefinitions"][0]["secrets"][0]["valueFrom"])
    raise AssertionError(f"no task of {user}'s")


def _assert_alices_code_is_refused(endpoint: str, environment: dict[str, str], bob_parameter: str) -> None:
    """What code in Alice's Lab can reach: local ECS's endpoint, with any key but the hub's."""
    assert not any(HUB_KEY in value for value in environment.values()), "tasks never see the hub's key"
    gate = ("UnrecognizedClientException",)
    for key in ("local", environment["JUPYTERHUB_API_TOKEN"]):
        ecs, ssm, efs = aws("ecs", endpoint, key), aws("ssm", endpoint, key), aws("efs", endpoint, key)
        refused(lambda: ecs.list_tasks(cluster="calliope"), *gate)  # noqa: B023
        refused(lambda: ecs.list_task_definitions(), *gate)  # noqa: B023
        refused(lambda: ssm.get_parameter(Name=bob_parameter, WithDecryption=True), *gate)  # noqa: B023
        refused(lambda: efs.describe_file_systems(), *gate)  # noqa: B023
    # Even with the hub's key a SecureString is never read back: only a task naming it gets it.
    ssm = aws("ssm", endpoint)
    refused(lambda: ssm.get_parameter(Name=bob_parameter, WithDecryption=True), "AccessDeniedException")
    refused(lambda: ssm.get_parameters(Names=[bob_parameter], WithDecryption=True), "AccessDeniedException")


async def _assert_the_hub_refuses_alices_token_for_bob(hub_url: str, alice_token: str) -> None:
    async with HubApi(hub_url, alice_token) as alice:
        me = await alice.request("GET", "/user")
        assert me.status == 200 and me.json()["name"] == "alice"
        for method, path in (("GET", "/users/bob"), ("GET", "/users/bob/tokens"), ("POST", "/users/bob/tokens")):
            answer = await alice.request(method, path, {} if method == "POST" else None)
            assert answer.status in (403, 404), (method, path, answer.status)
            assert "token" not in answer.json() or answer.json().get("token") is None


async def _parameter_gone(endpoint: str, name: str) -> bool:
    ssm = aws("ssm", endpoint)
    try:
        await asyncio.to_thread(ssm.get_parameter, Name=name)
    except ClientError as e:
        return str(e.response["Error"]["Code"]) == "ParameterNotFound"
    return False


async def test_a_catalog_change_registers_one_revision_and_a_restart_none(local_ecs: Any, tmp_path: Path) -> None:
    require_proxy()
    catalog = tmp_path / "services"
    shutil.copytree(BUILTIN_DIRECTORY, catalog)
    aws("ecs", local_ecs.endpoint_url, "local").create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    settings = HubSettings(
        ecs_endpoint=local_ecs.endpoint_url,
        extra=[api_token_config(token), f"c.ECSSpawner.catalog_path = {str(catalog)!r}"],
    )
    hub = HubProcess(render(settings))
    try:
        await _spawn_and_stop(hub, token)
        assert _registrations(local_ecs) == 1
        await _spawn_and_stop(hub, token)  # a restart: same database, new process
        assert _registrations(local_ecs) == 1, "a restarted hub registers nothing"
        lab = catalog / "lab.yaml"
        lab.write_text(lab.read_text().replace("base-notebook:latest", "base-notebook:2026-12-03"))
        await _spawn_and_stop(hub, token)
        assert _registrations(local_ecs) == 2, "one new revision for the change"
    finally:
        await hub.stop()
        hub.cleanup()
    families = aws("ecs", local_ecs.endpoint_url, "local").list_task_definitions()["taskDefinitionArns"]
    assert [arn.rsplit(":", 1)[-1] for arn in families] == ["1", "2"]


async def _spawn_and_stop(hub: HubProcess, token: str) -> None:
    """One hub life: start the hub, spawn ada's Lab, stop it, stop the hub."""
    await hub.start()
    async with HubApi(hub.url, token) as admin:
        await admin.request("POST", "/users/ada")
        assert (await admin.request("POST", "/users/ada/server", {"user_options": {}})).status in (201, 202)
        await eventually(lambda: server_ready(admin, "ada"), 30, "ada's server ready")
        assert (await admin.request("DELETE", "/users/ada/server")).status in (202, 204)
        await eventually(lambda: server_gone(admin, "ada"), 30, "ada's server stopped")
    await hub.stop()


def _registrations(local_ecs: Any) -> int:
    return int(local_ecs.stats()["calls"].get("RegisterTaskDefinition", {}).get("ok", 0))
