"""Per-user EFS homes through a real JupyterHub (issue 12 items 2-3).

Process mode: Alice writes a file in her Lab through the Jupyter contents API, her server
stops and starts again, and the file is still there; Bob's Lab (his own access point, his own
root) does not show it. A catalog naming a file system that does not exist gives a spawn error
that says so, and leaves no access point and no task behind.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import builtin_catalog_with, eventually, require_proxy, server_gone, server_ready

NOTE = "written by alice, kept on EFS"


def aws(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


async def contents(hub_url: str, token: str, user: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The Jupyter contents API of `user`'s Lab, through the hub's proxy."""
    url = f"{hub_url.rstrip('/')}/user/{user}/api/contents/{path}"
    session = aiohttp.ClientSession(headers={"Authorization": f"token {token}"})
    async with session, session.request(method, url, json=body) as answer:
        return answer.status, await answer.json(content_type=None)


async def start_and_wait(admin: HubApi, user: str) -> None:
    assert (await admin.request("POST", f"/users/{user}/server", {"user_options": {}})).status in (201, 202)
    await eventually(lambda: server_ready(admin, user), 90, f"{user}'s Lab ready")


async def test_a_file_in_alices_home_survives_a_restart_and_bob_cannot_see_it(
    local_ecs_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_proxy()
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    local = local_ecs_factory(mode="process", data_dir=tmp_path / "efs-data")
    aws("ecs", local.endpoint_url).create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    settings = HubSettings(ecs_endpoint=local.endpoint_url, extra=[api_token_config(token)])
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as admin:
        for user in ("alice", "bob"):
            assert (await admin.request("POST", f"/users/{user}")).status == 201
            await start_and_wait(admin, user)
        status, saved = await contents(
            hub.url, token, "alice", "PUT", "notes.txt", {"type": "file", "format": "text", "content": NOTE}
        )
        assert status in (200, 201), saved
        assert (await admin.request("DELETE", "/users/alice/server")).status in (202, 204)
        await eventually(lambda: server_gone(admin, "alice"), 60, "alice's server stopped")
        await start_and_wait(admin, "alice")
        status, read = await contents(hub.url, token, "alice", "GET", "notes.txt")
        assert (status, read["content"]) == (200, NOTE), "the file outlived the task"
        status, listing = await contents(hub.url, token, "bob", "GET", "")
        assert status == 200 and "notes.txt" not in [item["name"] for item in listing["content"]]
        points = aws("efs", local.endpoint_url).describe_access_points()["AccessPoints"]
        owners = {
            tag["Value"]: p["RootDirectory"]["Path"]
            for p in points
            for tag in p["Tags"]
            if tag["Key"] == "calliope:user"
        }
        assert owners == {"alice": "/home/alice", "bob": "/home/bob"}, "one access point each, reused on restart"
        created = local.stats()["calls"].get("CreateAccessPoint", {})
        assert created.get("ok", 0) == 2, f"alice's restart reused the access point in her state: {created}"
        files = [path.relative_to(tmp_path) for path in (tmp_path / "efs-data").rglob("notes.txt")]
        assert len(files) == 1 and files[0].parts[-3:] == ("home", "alice", "notes.txt"), files


async def test_a_missing_file_system_is_a_clear_spawn_error_with_nothing_left_behind(
    local_ecs: Any, tmp_path: Path
) -> None:
    require_proxy()
    catalog = builtin_catalog_with(
        tmp_path / "catalog", "lab.yaml", "file_system_id: auto", "file_system_id: fs-0123456789abcdef0"
    )
    aws("ecs", local_ecs.endpoint_url).create_cluster(clusterName="calliope")
    token = secrets.token_hex(16)
    extra = [api_token_config(token), f"c.ECSSpawner.catalog_path = {str(catalog)!r}"]
    settings = HubSettings(ecs_endpoint=local_ecs.endpoint_url, extra=extra)
    async with HubProcess(render(settings)) as hub, HubApi(hub.url, token) as admin:
        assert (await admin.request("POST", "/users/alice")).status == 201
        url = f"{hub.url.rstrip('/')}/hub/api/users/alice/server"
        session = aiohttp.ClientSession(headers={"Authorization": f"token {token}"})
        async with session, session.post(url, json={"user_options": {}}) as answer:  # once: HubApi retries a 503
            assert answer.status == 503, await answer.text()
            message = (await answer.json())["message"]
        assert "home directory could not be prepared" in message and "fs-0123456789abcdef0 does not exist" in message
        await eventually(lambda: server_gone(admin, "alice"), 30, "alice's failed server cleared")
    assert aws("efs", local_ecs.endpoint_url).describe_access_points()["AccessPoints"] == []
    assert aws("ecs", local_ecs.endpoint_url).list_tasks(cluster="calliope")["taskArns"] == []
