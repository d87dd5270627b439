"""Deleting a user deletes their EFS access point when the catalog says so (issue 12, delete_on_user_delete).

A real JupyterHub against local ECS in sim mode (its EFS subset included): Alice and Bob each
get an access point with their first Lab; the hub's REST API deletes both users. With
`delete_on_user_delete: true` in the Lab's storage block Alice's access point goes with her;
the default (false) keeps Bob's when the other catalog deletes him.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import boto3

from calliope_hub.catalog import BUILTIN_DIRECTORY
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from tests.hubtest import builtin_catalog_with, eventually, require_proxy, server_gone, server_ready


def efs_owners(endpoint: str) -> set[str]:
    efs = boto3.client("efs", endpoint_url=endpoint, region_name="us-east-1")
    return {
        tag["Value"]
        for point in efs.describe_access_points()["AccessPoints"]
        for tag in point["Tags"]
        if tag["Key"] == "calliope:user"
    }


async def spawn_stop_delete(hub: HubProcess, token: str, user: str) -> None:
    async with HubApi(hub.url, token) as admin:
        assert (await admin.request("POST", f"/users/{user}")).status == 201
        assert (await admin.request("POST", f"/users/{user}/server", {"user_options": {}})).status in (201, 202)
        await eventually(lambda: server_ready(admin, user), 60, f"{user}'s Lab ready")
        assert (await admin.request("DELETE", f"/users/{user}/server")).status in (202, 204)
        await eventually(lambda: server_gone(admin, user), 60, f"{user}'s server stopped")
        assert (await admin.request("DELETE", f"/users/{user}")).status == 204


async def test_deleting_a_user_deletes_their_access_point_only_when_the_storage_block_says_so(
    local_ecs: Any, tmp_path: Path
) -> None:
    require_proxy()
    deleting = builtin_catalog_with(
        tmp_path / "deleting", "lab.yaml", "delete_on_user_delete: false", "delete_on_user_delete: true"
    )
    boto3.client("ecs", endpoint_url=local_ecs.endpoint_url, region_name="us-east-1").create_cluster(
        clusterName="calliope"
    )
    token = secrets.token_hex(16)
    for user, catalog in (("alice", deleting), ("bob", BUILTIN_DIRECTORY)):
        extra = [api_token_config(token), f"c.ECSSpawner.catalog_path = {str(catalog)!r}"]
        async with HubProcess(render(HubSettings(ecs_endpoint=local_ecs.endpoint_url, extra=extra))) as hub:
            await spawn_stop_delete(hub, token, user)
    assert efs_owners(local_ecs.endpoint_url) == {"bob"}, "alice's access point went with her; bob's stays"
    deleted = local_ecs.stats()["calls"].get("DeleteAccessPoint", {})
    assert deleted.get("ok", 0) == 1, deleted
