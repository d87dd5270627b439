"""What a warm task is to ECS: its pool's task definition and its RunTask request.

The definition is the catalog's, under a family of the pool's own, with one container
secret: the pool key (calliope_hub.pool.secret), which the ECS agent resolves from SSM at
start. Sizes are RunTask overrides, as for any server, but the key is per pool, so the
family is per service and size. Its name ends in `-warm`, which no server's family does
(those end in a hash of ten hex digits), so a pool and a user can never share one.

The task's command is the launcher in front of the service's own; its overrides carry the
nonce (public), the service and size, and nothing secret. Its tags say it belongs to this
hub and is an idle pool task (`calliope:pool=idle`), with no user: the orphan sweep leaves
it alone, and a claim retags it with the user's identity and `calliope:pool=claimed`.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..catalog import Catalog, Choice, Placement
from ..ecs.identity import POOL_DEFINITION, POOL_IDLE, POOL_TAG, TAG_PREFIX, encode_tag_value, started_by
from ..ecs.secrets import escape_name_part
from ..ecs.taskdefs import server_definition
from .config import PoolSpec
from .secret import KEY_VARIABLE, NONCE_VARIABLE

_NOT_FAMILY = re.compile(r"[^A-Za-z0-9_-]")
#: ECS: a family has at most 255 letters, digits, hyphens and underscores
MAX_FAMILY = 255


def pool_family(base_family: str, hub_id: str, size: str) -> str:
    """`<service family>-<hub>-<size>-warm`, in ECS's family alphabet."""
    hub, size_part = (_NOT_FAMILY.sub("_", part)[:60] for part in (hub_id, size))
    return f"{base_family[: MAX_FAMILY - 130]}-{hub}-{size_part}-warm"


def key_parameter(secret_root: str, hub_id: str, pool: PoolSpec) -> str:
    """The SSM parameter of the pool's key: `<root>/<hub>/_pool/<service>/<size>/CALLIOPE_POOL_KEY`.

    `_` is escaped in a user's name part (calliope_hub.ecs.secrets), so no user's prefix is `_pool`; service and
    size are levels of their own, since either may contain '-' (pools a-b/c and a/b-c must not share a key).
    """
    parts = (escape_name_part(hub_id), "_pool", escape_name_part(pool.service), escape_name_part(pool.size))
    return "/".join((secret_root.rstrip("/"), *parts, KEY_VARIABLE))


def pool_definition(
    catalog: Catalog,
    pool: PoolSpec,
    *,
    hub_id: str,
    parameter: str,
    local: bool,
    execution_role_arn: str = "",
    task_role_arn: str = "",
) -> dict[str, Any]:
    """The RegisterTaskDefinition request of a pool: the catalog's, plus the pool key as a container secret."""
    service = catalog.services[pool.service]
    base = catalog.task_definition(pool.service, local=local)
    request = server_definition(
        base,
        pool_family(service.family, hub_id, pool.size),
        [{"name": KEY_VARIABLE, "valueFrom": parameter}],
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
    )
    request["tags"] = [
        {"key": TAG_PREFIX + "hub", "value": encode_tag_value(hub_id)},
        {"key": POOL_TAG, "value": POOL_DEFINITION},
    ]
    return request


def launcher_command(choice: Choice, *, local: bool, entry: str = "") -> list[str]:
    """The launcher, then the service's command: what a warm task runs.

    Locally the launcher runs in this interpreter (process mode runs commands on this host); on ECS
    the image's `python3` runs it, so a pooled image needs this package installed. With `entry`
    (MODULE:FUNCTION), the launcher preloads it and calls it instead of exec'ing the command.
    """
    service = choice.service
    command = service.local.command if local else service.command
    if not command:
        raise ValueError(f"{service.name} has no command to launch")
    python = sys.executable if local else "python3"
    port = str(service.port)
    preload = ["--entry", entry] if entry else []
    return [python, "-m", "calliope_hub.pool.launcher", "--bind", "0.0.0.0", "--port", port, *preload, "--", *command]


def pool_tags(hub_id: str, choice: Choice) -> list[dict[str, str]]:
    """An idle pool task's tags: this hub's, its service and size, no user."""
    values = {"hub": hub_id, "service": choice.service.name, "size": choice.size_name}
    tags = [{"key": TAG_PREFIX + field, "value": encode_tag_value(value)} for field, value in values.items()]
    return [*tags, {"key": POOL_TAG, "value": POOL_IDLE}]


def pool_run_task(
    choice: Choice, placement: Placement, *, hub_id: str, definition: str, nonce: str, local: bool, entry: str = ""
) -> dict[str, Any]:
    """RunTask for one warm task; retries of it carry the same clientToken (from the nonce)."""
    environment = {NONCE_VARIABLE: nonce, "CALLIOPE_SERVICE": choice.service.name, "CALLIOPE_SIZE": choice.size_name}
    container = {
        "name": choice.service.container_name,
        "command": launcher_command(choice, local=local, entry=entry),
        "environment": [{"name": name, "value": value} for name, value in environment.items()],
    }
    return {
        **placement.as_run_task(),
        "taskDefinition": definition,
        "count": 1,
        "overrides": {
            "cpu": str(choice.size.cpu),
            "memory": str(choice.size.memory),
            "containerOverrides": [container],
        },
        "tags": pool_tags(hub_id, choice),
        "startedBy": started_by(hub_id),
        "clientToken": hashlib.sha256(f"{hub_id}\x1fpool\x1f{nonce}".encode()).hexdigest(),
        "enableECSManagedTags": False,
        "propagateTags": "NONE",
    }


def pool_state(tags: Sequence[Mapping[str, str]]) -> str:
    """A described task's `calliope:pool` tag: idle, claimed, or '' for a task no pool started."""
    return next((str(tag.get("value", "")) for tag in tags if tag.get("key") == POOL_TAG), "")


def task_nonce(task: Mapping[str, Any]) -> str:
    """The nonce a described pool task was started with, read from its overrides ('' when none)."""
    for container in (task.get("overrides") or {}).get("containerOverrides") or ():
        for variable in container.get("environment") or ():
            if variable.get("name") == NONCE_VARIABLE:
                return str(variable.get("value", ""))
    return ""
