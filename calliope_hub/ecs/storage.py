"""Per-user EFS homes: one access point per (hub, user), named in that user's task-definition revision.

ECS cannot override volumes in RunTask, so a user's home is an EFS access point whose ID sits
in the `efsVolumeConfiguration` of the user's own task-definition revision (calliope_hub.ecs.taskdefs).
The access point pins the user's POSIX identity and root directory, so a server sees only its
own home even if its code runs as root.

Nothing is left half-created: CreateAccessPoint is idempotent by `ClientToken` (a hash of hub
and user), so a retry, a second server of the same user or a hub that died between the call
and saving the state all get the same access point back (`AccessPointAlreadyExists` carries
its ID). Its tags `calliope:hub` / `calliope:user` name its owner, and the spawner keeps its
ID in state, so a failed spawn after creation leaves an access point the next spawn reuses.

Users are spread over the catalog's file systems by a stable hash of their name (EFS allows
10,000 access points per file system by default). CreateAccessPoint goes through a client
token bucket (calliope_hub.ecsfacts "efs-access-point-create"), at a rate we assume: EFS
publishes none, and documents throttling only for creates in quick succession near that limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..catalog.models import Service, Storage
from ..ecsfacts import AWS_QUOTAS, QuotaBuckets
from .api import THROTTLE_CODES
from .identity import encode_tag_value

#: `file_system_id: auto`: the file system the hub finds, or creates, by this creation token.
AUTO_CREATION_TOKEN = "calliope-hub-homes"
#: EFS: ClientToken is 1-64 characters.
MAX_CLIENT_TOKEN = 64
_PATH_SAFE = re.compile(r"[A-Za-z0-9-]")


class StorageError(Exception):
    """An access point could not be made or removed: "Operation: why", for the user and the log.

    `code` is EFS's error code (a botocore exception's name when EFS never answered) and `throttled`
    reads as EcsApiError's does. `transient` is EFS's own rule, which the launch's retry follows: a
    throttle, an EFS server-side failure or no answer may pass; a full or missing file system will not
    (EFS codes, unlike ECS's, do not end in "Exception", so ECS's rule cannot tell them apart).
    """

    def __init__(self, operation: str, code: str, reason: str, *, transient: bool = False):
        super().__init__(f"{operation}: {reason}")
        self.operation = operation
        self.code = code
        self.transient = transient

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLE_CODES


@dataclass(frozen=True)
class Home:
    """A user's access point and the file system it lives on."""

    access_point_id: str
    file_system_id: str


def escape_username(name: str) -> str:
    """One path component from a user name: letters, digits and '-' kept, anything else _XX per UTF-8 byte.

    Injective ('_' and '.' are escaped too), so no name is '..' and no two users share a home.
    """
    return "".join(ch if _PATH_SAFE.fullmatch(ch) else "".join(f"_{b:02X}" for b in ch.encode()) for ch in name)


def home_path(storage: Storage, username: str) -> str:
    return storage.root_path.format(username=escape_username(username))


def shard(file_system_ids: tuple[str, ...], username: str) -> str:
    """The file system that holds `username`'s home: stable across restarts and hubs (not Python's hash)."""
    digest = hashlib.sha256(username.encode()).digest()
    return file_system_ids[int.from_bytes(digest[:8], "big") % len(file_system_ids)]


def client_token(hub_id: str, username: str, file_system_id: str) -> str:
    """One token per (hub, user, file system): the same access point for every retry and server."""
    digest = hashlib.sha256(json.dumps([hub_id, username, file_system_id]).encode()).hexdigest()
    return f"calliope-{digest}"[:MAX_CLIENT_TOKEN]


def homes_to_delete(services: Iterable[Service], states: Iterable[Mapping[str, Any]]) -> set[str]:
    """The access points a deleted user's servers recorded (their spawner states) that the catalog says to delete.

    A home goes when it is on a file system of a service whose storage says `delete_on_user_delete`;
    with `auto`, the hub's one file system is found at run time, so every recorded home is on it.
    """
    deleting = {
        file_system
        for service in services
        if service.storage is not None and service.storage.delete_on_user_delete
        for file_system in service.storage.file_system_ids
    }
    return {
        state["home_access_point"]
        for state in states
        if state.get("home_access_point") and (state.get("home_file_system") in deleting or "auto" in deleting)
    }


class Homes:
    """Creates, finds and deletes users' access points through one shared aiobotocore `efs` client."""

    def __init__(self, client: Any, hub_id: str, *, buckets: QuotaBuckets | None = None):
        self._client = client
        self.hub_id = hub_id
        self._buckets = buckets or QuotaBuckets({"efs-access-point-create": AWS_QUOTAS["efs-access-point-create"]})
        self._auto: str | None = None
        self._auto_lock = asyncio.Lock()

    async def ensure(self, storage: Storage, username: str) -> Home:
        """The user's access point, created on first use; an existing one (same ClientToken) is returned."""
        file_system = shard(await self._file_systems(storage), username)
        uid, gid = storage.uid, storage.gid
        request = {
            "ClientToken": client_token(self.hub_id, username, file_system),
            "FileSystemId": file_system,
            "PosixUser": {"Uid": uid, "Gid": gid},
            "RootDirectory": {
                "Path": home_path(storage, username),
                "CreationInfo": {"OwnerUid": uid, "OwnerGid": gid, "Permissions": storage.permissions},
            },
            "Tags": [
                {"Key": "calliope:hub", "Value": encode_tag_value(self.hub_id)},
                {"Key": "calliope:user", "Value": encode_tag_value(username)},
            ],
        }
        while not self._buckets.try_take("CreateAccessPoint"):
            await asyncio.sleep(max(self._buckets.delay_for("CreateAccessPoint"), 0.01))
        try:
            answer = await self._client.create_access_point(**request)
        except ClientError as e:
            existing = e.response.get("AccessPointId")
            if e.response.get("Error", {}).get("Code") == "AccessPointAlreadyExists" and existing:
                return Home(str(existing), file_system)
            raise _storage_error("CreateAccessPoint", e, file_system) from None
        except BotoCoreError as e:
            raise _no_answer("CreateAccessPoint", e) from None
        return Home(str(answer["AccessPointId"]), file_system)

    async def delete(self, access_point_id: str) -> None:
        """Delete a user's access point (its files stay on the file system); one already gone is fine."""
        try:
            await self._client.delete_access_point(AccessPointId=access_point_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "AccessPointNotFound":
                raise _storage_error("DeleteAccessPoint", e, access_point_id) from None
        except BotoCoreError as e:
            raise _no_answer("DeleteAccessPoint", e) from None

    async def _file_systems(self, storage: Storage) -> tuple[str, ...]:
        if storage.file_system_ids != ("auto",):
            return storage.file_system_ids
        async with self._auto_lock:
            if self._auto is None:
                self._auto = await self._find_or_create_auto()
        return (self._auto,)

    async def _find_or_create_auto(self) -> str:
        """CreateFileSystem is idempotent by CreationToken: a second hub or a restart gets the same one."""
        try:
            answer = await self._client.create_file_system(
                CreationToken=AUTO_CREATION_TOKEN, Encrypted=True, Tags=[{"Key": "Name", "Value": "calliope homes"}]
            )
            return str(answer["FileSystemId"])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "FileSystemAlreadyExists":
                raise _storage_error("CreateFileSystem", e, AUTO_CREATION_TOKEN) from None
            # EFS names the existing file system in the error; where an implementation does not, ask for it.
            existing = e.response.get("FileSystemId") or await self._by_creation_token()
            if not existing:
                raise _storage_error("CreateFileSystem", e, AUTO_CREATION_TOKEN) from None
            return str(existing)
        except BotoCoreError as e:
            raise _no_answer("CreateFileSystem", e) from None

    async def _by_creation_token(self) -> str | None:
        """The file system made with AUTO_CREATION_TOKEN, if any."""
        try:
            answer = await self._client.describe_file_systems(CreationToken=AUTO_CREATION_TOKEN)
        except (ClientError, BotoCoreError):
            return None
        systems = answer.get("FileSystems") or []
        return str(systems[0]["FileSystemId"]) if systems else None


def _storage_error(operation: str, error: ClientError, subject: str) -> StorageError:
    """EFS's answer as a sentence a user can act on (or pass to the operator)."""
    code = error.response.get("Error", {}).get("Code", "?")
    message = error.response.get("Error", {}).get("Message", "")
    if code == "AccessPointLimitExceeded":
        text = f"file system {subject} has no room for another home (EFS access point limit reached): ask the operator"
        return StorageError(operation, code, text)
    if code == "FileSystemNotFound":
        return StorageError(operation, code, f"file system {subject} does not exist: the catalog names a wrong ID")
    transient = (
        code in (*THROTTLE_CODES, "InternalServerError")
        or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    )
    return StorageError(operation, code, f"{code}: {message}", transient=transient)


def _no_answer(operation: str, error: BotoCoreError) -> StorageError:
    """EFS never answered (connection, timeout): the same request may well pass later."""
    name = type(error).__name__
    return StorageError(operation, name, f"{name}: {error}", transient=True)
