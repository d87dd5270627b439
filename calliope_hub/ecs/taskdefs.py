"""Task definitions the catalog owns: registered when their content changes, and never otherwise.

RegisterTaskDefinition has the tightest quota of any call the hub makes (a burst of 20, then
1 a second, per account and Region: calliope_hub.ecsfacts), and ECS refuses concurrent
registrations of one family. So every definition is keyed by a hash of its content (image,
command, port, health check, cpu/memory, volumes, roles, log configuration, `secrets`
references: the whole request but its tags), carried on the definition as the tag
`calliope:spec-hash`:

- an unchanged catalog registers nothing: the hash is in this process's cache, or, after a
  restart, found again on the family's newest revisions (ListTaskDefinitions +
  DescribeTaskDefinition with TAGS, read calls);
- a changed catalog registers exactly one new revision per family, once per process (one
  lock per family, so concurrent spawns share it).

Each server gets its own family (`server_definition`), because its container's `secrets`
name that server's own parameter (calliope_hub.ecs.secrets) and ECS cannot override
`secrets` or volumes in RunTask. The parameter's name is stable, so a server's definition
changes only when the catalog or the hub's roles do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..catalog import Catalog, encode_tag_value
from .api import EcsApi
from .slots import SlotPool

log = logging.getLogger(__name__)

HASH_TAG = "calliope:spec-hash"
#: ECS: a family is 1-255 letters, digits, hyphens and underscores.
MAX_FAMILY = 255
#: Revisions of a family searched for a hash after a restart; older ones are registered again.
SEARCH_DEPTH = 5
_NOT_FAMILY = re.compile(r"[^A-Za-z0-9_-]")


def uses_local_commands(task_commands: str, endpoint_url: str) -> bool:
    """`c.ECSSpawner.task_commands`: 'auto' means a loopback endpoint is local ECS, which runs the local command."""
    if task_commands != "auto":
        return task_commands == "local"
    return urlsplit(endpoint_url).hostname in ("127.0.0.1", "localhost", "::1")


def spec_hash(request: Mapping[str, Any]) -> str:
    """A hash of everything ECS would run from `request` (tags are labels, not content)."""
    content = {key: value for key, value in request.items() if key != "tags"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def server_family(base_family: str, hub_id: str, user: str, server: str) -> str:
    """`<service family>-<hub>-<user>-<server>-<hash>` in ECS's family alphabet.

    Readable parts are cut and stripped of other characters; the hash of the exact triple
    keeps two users whose names differ only there apart.
    """
    digest = hashlib.sha256(json.dumps([hub_id, user, server]).encode()).hexdigest()[:10]
    parts = [_NOT_FAMILY.sub("_", part)[:40] for part in (hub_id, user, server or "default")]
    return f"{base_family[: MAX_FAMILY - 140]}-{'-'.join(parts)}-{digest}"


def slot_family(base_family: str, hub_id: str, size: str, index: int) -> str:
    """`<service family>-<hub>-slots-<size>-<k>-<hash>` (calliope_hub.ecs.slots), in ECS's family alphabet.

    The hash of the exact (hub, size, k) keeps hubs whose names differ only in dropped
    characters apart, as it does for server families.
    """
    digest = hashlib.sha256(json.dumps(["slots", hub_id, size, index]).encode()).hexdigest()[:10]
    hub, size_part = (_NOT_FAMILY.sub("_", part)[:40] for part in (hub_id, size))
    return f"{base_family[: MAX_FAMILY - 120]}-{hub}-slots-{size_part}-{index}-{digest}"


@dataclass(frozen=True)
class ServerLabels:
    """Who a per-server definition belongs to, as tags (the hash tag is added on registration)."""

    hub_id: str
    user: str
    server: str

    def tags(self) -> list[dict[str, str]]:
        return [
            {"key": "calliope:hub", "value": encode_tag_value(self.hub_id)},
            {"key": "calliope:user", "value": encode_tag_value(self.user)},
            {"key": "calliope:server", "value": encode_tag_value(self.server)},
        ]


def server_definition(
    base: Mapping[str, Any],
    family: str,
    secrets: Sequence[Mapping[str, str]],
    *,
    execution_role_arn: str = "",
    task_role_arn: str = "",
    labels: ServerLabels | None = None,
) -> dict[str, Any]:
    """The catalog's definition for one server: its family, its secrets on the first container, its roles."""
    containers = [dict(container) for container in base["containerDefinitions"]]
    if secrets:
        containers[0]["secrets"] = [dict(secret) for secret in secrets]
    request = with_roles(
        {**base, "family": family, "containerDefinitions": containers}, execution_role_arn, task_role_arn
    )
    if labels is not None:
        request["tags"] = labels.tags()
    return request


#: the volume name a user's home has in their task definition
HOME_VOLUME = "home"


def with_home(request: Mapping[str, Any], mount_path: str, file_system_id: str, access_point_id: str) -> dict[str, Any]:
    """A server definition with the user's EFS access point mounted (and the working directory) at `mount_path`.

    Transit encryption and IAM authorization are on, so only the task role may mount it, over TLS.
    """
    containers = [dict(container) for container in request["containerDefinitions"]]
    containers[0]["mountPoints"] = [{"sourceVolume": HOME_VOLUME, "containerPath": mount_path, "readOnly": False}]
    containers[0]["workingDirectory"] = mount_path
    volume = {
        "name": HOME_VOLUME,
        "efsVolumeConfiguration": {
            "fileSystemId": file_system_id,
            "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": access_point_id, "iam": "ENABLED"},
        },
    }
    return {**request, "containerDefinitions": containers, "volumes": [volume]}


def with_roles(base: Mapping[str, Any], execution_role_arn: str, task_role_arn: str) -> dict[str, Any]:
    """A catalog definition with the hub's roles, as `ecs setup` registers it."""
    request = dict(base)
    if execution_role_arn:
        request["executionRoleArn"] = execution_role_arn
    if task_role_arn:
        request["taskRoleArn"] = task_role_arn
    return request


class TaskDefinitions:
    """The hub's registered definitions: hash -> ARN, filled from ECS before anything is registered."""

    def __init__(self, api: EcsApi, *, search_depth: int = SEARCH_DEPTH):
        self.api = api
        self.search_depth = search_depth
        self._arns: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: what ensure() did, for logs and tests: cached | found | registered
        self.outcomes: dict[str, int] = {"cached": 0, "found": 0, "registered": 0}
        #: the slot definitions' leases (calliope_hub.ecs.slots): the hub's one pool, as this is its one registry
        self.slots = SlotPool()

    def remember(self, digest: str, arn: str) -> None:
        """A (hash, ARN) pair the caller knows is registered, e.g. from a server's saved state."""
        self._arns.setdefault(digest, arn)

    async def ensure(self, request: Mapping[str, Any]) -> str:
        """The ARN of an ACTIVE revision with exactly this content, registering one only if none exists."""
        digest = spec_hash(request)
        arn = self._arns.get(digest)
        if arn is not None:
            self.outcomes["cached"] += 1
            return arn
        family = str(request["family"])
        async with self._locks.setdefault(family, asyncio.Lock()):
            arn = self._arns.get(digest)
            if arn is None:
                arn = await self.find(family, digest)
                self.outcomes["found" if arn else "registered"] += 1
                arn = arn or await self._register(request, digest)
                self._arns[digest] = arn
        return arn

    async def find(self, family: str, digest: str) -> str | None:
        """The newest ACTIVE revision of `family` tagged with `digest`, among its newest `search_depth`."""
        arns = await self.api.list_task_definitions(family, max_results=self.search_depth)
        for arn in arns:  # familyPrefix is the whole family (ECS, moto and local ECS alike)
            definition, tags = await self.api.describe_task_definition(arn)
            if definition.get("status") == "ACTIVE" and tags.get(HASH_TAG) == digest:
                return arn
        return None

    async def _register(self, request: Mapping[str, Any], digest: str) -> str:
        tags = [tag for tag in request.get("tags", ()) if tag.get("key") != HASH_TAG]
        answer = await self.api.register_task_definition(
            {**request, "tags": [*tags, {"key": HASH_TAG, "value": digest}]}
        )
        arn = str(answer["taskDefinition"]["taskDefinitionArn"])
        log.info("registered task definition %s (%s %s)", arn, HASH_TAG, digest)
        return arn


async def prepare_cluster(
    api: EcsApi,
    catalog: Catalog,
    cluster: str,
    *,
    local: bool,
    create_cluster: bool = True,
    execution_role_arn: str = "",
    task_role_arn: str = "",
) -> dict[str, str]:
    """Make a cluster ready for the catalog: `calliope-hub up`, `ecs setup`, the bench and tests share it.

    The cluster is created when missing (with `create_cluster`), and each service's catalog
    definition is registered only when its content is not there yet. Returns service -> ARN.
    """
    if create_cluster:
        await api.ensure_cluster(cluster)
    definitions = TaskDefinitions(api)
    return {
        name: await definitions.ensure(
            with_roles(catalog.task_definition(name, local=local), execution_role_arn, task_role_arn)
        )
        for name in catalog.services
    }
