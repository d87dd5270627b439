"""A local EFS: file systems and access points, and where a task's EFS volume lives on this machine.

The hub gives each user an access point (a root directory and a POSIX identity inside one
file system) and a task-definition revision whose volume names it. This module keeps the
file systems and access points the EFS API creates (`efs_http` puts them on the wire) and
turns a container's mount points into `Mount`s for the runner (`efsvolumes` checks task
definitions and lays mounts out on disk). A mount is a root path inside a file system, so
two access points with the same root path share their files, as on EFS, and deleting an
access point keeps the files.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calliope_hub.localecs.awsinput import read, read_tags
from calliope_hub.localecs.model import EcsError
from calliope_hub.localecs.runner import Mount, StartFailure

log = logging.getLogger(__name__)

DEFAULT_ACCESS_POINT_LIMIT = 10_000
_FILE_SYSTEM_ID = re.compile(r"^(arn:aws[-a-z]*:elasticfilesystem:[0-9a-z-:]+:file-system/)?(fs-[0-9a-f]{8,40})$")
ACCESS_POINT_ID = re.compile(r"^(arn:aws[-a-z]*:elasticfilesystem:[0-9a-z-:]+:access-point/)?(fsap-[0-9a-f]{8,40})$")
_ROOT_PATH = re.compile(r"^(/|(/(?!\.)+[^$#<>;`|&?{}^*/\n]+){1,4})$")
_PERMISSIONS = re.compile(r"^[0-7]{3,4}$")
_MAX_ID = 4294967295
#: how ECS words a task whose EFS volume cannot be mounted.
MOUNT_FAILED = "ResourceInitializationError: failed to invoke EFS utils commands to set up EFS volumes: stderr: "


class EfsError(EcsError):
    """An EFS error: `ErrorCode` and `Message`, plus the fields its shape adds (e.g. AccessPointId)."""

    def __init__(self, code: str, message: str, status: int, **extra: str):
        super().__init__(code, message, status)
        self.extra = extra


def bad_request(message: str) -> EfsError:
    return EfsError("BadRequest", message, 400)


def _token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"efs:{seq}".encode()).decode()


def _after(token: str | None) -> int:
    if token is None:
        return 0
    try:
        prefix, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if prefix == "efs":
            return int(seq)
    except ValueError:
        pass
    raise bad_request("Invalid pagination token: pass back the one a previous answer gave, unchanged.")


def _page_size(value: Any, name: str) -> int:
    if value is None:
        return 100
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise bad_request(f"{name} must be a positive integer.")
    return size


def _idempotency_token(body: dict, key: str) -> str:
    token = read(body, key, str, bad_request, required=True)
    if not 1 <= len(token) <= 64:
        raise bad_request(f"{key} must be 1-64 characters.")
    return token


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:17]}"


def _u32(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ID:
        raise bad_request(f"{what} must be an integer between 0 and {_MAX_ID}.")
    return value


@dataclass(eq=False)
class FileSystem:
    id: str
    arn: str
    creation_token: str
    created: float
    settings: dict[str, Any]
    tags: dict[str, str]
    seq: int

    def wire(self, owner: str, state: str = "available") -> dict:
        body = {
            "OwnerId": owner,
            "CreationToken": self.creation_token,
            "FileSystemId": self.id,
            "FileSystemArn": self.arn,
            "CreationTime": self.created,
            "LifeCycleState": state,
            "NumberOfMountTargets": 0,
            "SizeInBytes": {"Value": 6144, "ValueInIA": 0, "ValueInStandard": 6144, "ValueInArchive": 0},
            "Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()],
            **self.settings,
        }
        if "Name" in self.tags:
            body["Name"] = self.tags["Name"]
        return body


@dataclass(eq=False)
class AccessPoint:
    id: str
    arn: str
    file_system: FileSystem
    client_token: str
    root_directory: dict[str, Any]
    tags: dict[str, str]
    seq: int
    posix_user: dict[str, Any] | None = None

    def wire(self, owner: str, state: str = "available") -> dict:
        body: dict[str, Any] = {
            "ClientToken": self.client_token,
            "Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()],
            "AccessPointId": self.id,
            "AccessPointArn": self.arn,
            "FileSystemId": self.file_system.id,
            "RootDirectory": self.root_directory,
            "OwnerId": owner,
            "LifeCycleState": state,
        }
        if self.posix_user is not None:
            body["PosixUser"] = self.posix_user
        if "Name" in self.tags:
            body["Name"] = self.tags["Name"]
        return body


@dataclass
class FileSystems:
    """Every file system and access point of one account and Region."""

    region: str
    account: str
    clock: Callable[[], float]
    access_point_limit: int = DEFAULT_ACCESS_POINT_LIMIT
    file_systems: dict[str, FileSystem] = field(default_factory=dict)
    access_points: dict[str, AccessPoint] = field(default_factory=dict)
    #: access points per file system, for the limit.
    counts: dict[str, int] = field(default_factory=dict)
    #: with a data directory: every create and delete appended as a JSON line, read back at start,
    #: so file systems and access points (like their files) outlive local ECS.
    journal: Path | None = None
    _tokens: dict[str, FileSystem | AccessPoint] = field(default_factory=dict)
    _seq: int = 0

    def __post_init__(self) -> None:
        if self.journal is None or not self.journal.exists():
            return
        for number, line in enumerate(self.journal.read_text().splitlines(), 1):
            try:
                self._replay(json.loads(line))
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                log.warning("%s:%d: skipped an unreadable EFS journal line", self.journal, number)

    def _replay(self, record: dict) -> None:
        self._seq = max(self._seq, record.get("seq", 0))
        if record["kind"] == "fs":
            self._add_file_system(
                FileSystem(
                    record["id"],
                    self._arn("file-system", record["id"]),
                    record["token"],
                    record["created"],
                    record["settings"],
                    record["tags"],
                    record["seq"],
                ),
                write=False,
            )
        elif record["kind"] == "ap":
            self._add_access_point(
                AccessPoint(
                    record["id"],
                    self._arn("access-point", record["id"]),
                    self.file_systems[record["fs"]],
                    record["token"],
                    record["root"],
                    record["tags"],
                    record["seq"],
                    record["posix"],
                ),
                write=False,
            )
        else:
            self._remove_access_point(self.access_points[record["id"]], write=False)

    def _write(self, record: dict) -> None:
        if self.journal is not None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal, "a") as journal:
                journal.write(json.dumps(record) + "\n")

    def _add_file_system(self, system: FileSystem, write: bool = True) -> None:
        self.file_systems[system.id] = system
        self.counts[system.id] = 0
        self._tokens["fs:" + system.creation_token] = system
        if write:
            self._write(
                {
                    "kind": "fs",
                    "id": system.id,
                    "token": system.creation_token,
                    "created": system.created,
                    "settings": system.settings,
                    "tags": system.tags,
                    "seq": system.seq,
                }
            )

    def _add_access_point(self, point: AccessPoint, write: bool = True) -> None:
        self.access_points[point.id] = point
        self.counts[point.file_system.id] += 1
        self._tokens["fsap:" + point.client_token] = point
        if write:
            self._write(
                {
                    "kind": "ap",
                    "id": point.id,
                    "fs": point.file_system.id,
                    "token": point.client_token,
                    "root": point.root_directory,
                    "tags": point.tags,
                    "seq": point.seq,
                    "posix": point.posix_user,
                }
            )

    def _remove_access_point(self, point: AccessPoint, write: bool = True) -> None:
        del self.access_points[point.id]
        self._tokens.pop("fsap:" + point.client_token, None)
        self.counts[point.file_system.id] -= 1
        if write:
            self._write({"kind": "rm", "id": point.id})

    def _arn(self, kind: str, ident: str) -> str:
        return f"arn:aws:elasticfilesystem:{self.region}:{self.account}:{kind}/{ident}"

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def file_system(self, ref: Any) -> FileSystem:
        match = _FILE_SYSTEM_ID.match(ref) if isinstance(ref, str) else None
        if match is None:
            raise bad_request(f"FileSystemId {ref!r} is not a file system ID (fs-...) or ARN.")
        found = self.file_systems.get(match.group(2))
        if found is None:
            raise EfsError("FileSystemNotFound", f"File system '{match.group(2)}' does not exist.", 404)
        return found

    def access_point(self, ref: Any) -> AccessPoint:
        match = ACCESS_POINT_ID.match(ref) if isinstance(ref, str) else None
        if match is None:
            raise bad_request(f"AccessPointId {ref!r} is not an access point ID (fsap-...) or ARN.")
        found = self.access_points.get(match.group(2))
        if found is None:
            raise EfsError("AccessPointNotFound", f"Access point '{match.group(2)}' does not exist.", 404)
        return found

    # ------------------------------------------------------------ file systems

    def create_file_system(self, body: dict) -> dict:
        token = _idempotency_token(body, "CreationToken")
        settings = {
            "PerformanceMode": read(body, "PerformanceMode", str, bad_request) or "generalPurpose",
            "ThroughputMode": read(body, "ThroughputMode", str, bad_request) or "bursting",
            "Encrypted": bool(read(body, "Encrypted", bool, bad_request)),
        }
        if settings["PerformanceMode"] not in ("generalPurpose", "maxIO"):
            raise bad_request("PerformanceMode must be generalPurpose or maxIO.")
        if settings["ThroughputMode"] not in ("bursting", "provisioned", "elastic"):
            raise bad_request("ThroughputMode must be bursting, provisioned or elastic.")
        if settings["ThroughputMode"] == "provisioned":
            settings["ProvisionedThroughputInMibps"] = body.get("ProvisionedThroughputInMibps")
            if not isinstance(settings["ProvisionedThroughputInMibps"], (int, float)):
                raise bad_request("ThroughputMode provisioned needs ProvisionedThroughputInMibps.")
        tags = read_tags(body.get("Tags"), bad_request)
        earlier = self._tokens.get("fs:" + token)
        if earlier is not None:
            raise EfsError(
                "FileSystemAlreadyExists",
                f"File system with creation token {token!r} already exists.",
                409,
                FileSystemId=earlier.id,
            )
        ident = _new_id("fs")
        system = FileSystem(ident, self._arn("file-system", ident), token, self.clock(), settings, tags, self._next())
        self._add_file_system(system)
        return system.wire(self.account, "creating")

    def describe_file_systems(self, query: dict) -> dict:
        ident, token = query.get("FileSystemId"), query.get("CreationToken")
        if ident is not None and token is not None:
            raise bad_request("Request cannot contain both a file system ID and a creation token.")
        size, after = _page_size(query.get("MaxItems"), "MaxItems"), _after(query.get("Marker"))
        if ident is not None:
            candidates = [self.file_system(ident)]
        else:
            candidates = [fs for fs in self.file_systems.values() if token is None or fs.creation_token == token]
        answer = self._page(candidates, size, after, "FileSystems", "NextMarker")
        if query.get("Marker") is not None:
            answer["Marker"] = query["Marker"]
        return answer

    # ------------------------------------------------------------ access points

    def create_access_point(self, body: dict) -> dict:
        token = _idempotency_token(body, "ClientToken")
        system = self.file_system(read(body, "FileSystemId", str, bad_request, required=True))
        posix = _posix_user(body.get("PosixUser"))
        root = _root_directory(body.get("RootDirectory"))
        tags = read_tags(body.get("Tags"), bad_request)
        earlier = self._tokens.get("fsap:" + token)
        if earlier is not None:
            raise EfsError(
                "AccessPointAlreadyExists",
                f"Access point with client token {token!r} already exists.",
                409,
                AccessPointId=earlier.id,
            )
        if self.counts[system.id] >= self.access_point_limit:
            raise EfsError(
                "AccessPointLimitExceeded",
                f"You have reached the maximum number of access points ({self.access_point_limit}) for file system "
                f"{system.id}. Delete an access point and try again.",
                403,
            )
        ident = _new_id("fsap")
        point = AccessPoint(ident, self._arn("access-point", ident), system, token, root, tags, self._next(), posix)
        self._add_access_point(point)
        return point.wire(self.account, "creating")

    def describe_access_points(self, query: dict) -> dict:
        point_ref, system_ref = query.get("AccessPointId"), query.get("FileSystemId")
        if point_ref is not None and system_ref is not None:
            raise bad_request("Specify either an AccessPointId or a FileSystemId, not both.")
        size, after = _page_size(query.get("MaxResults"), "MaxResults"), _after(query.get("NextToken"))
        if point_ref is not None:
            candidates = [self.access_point(point_ref)]
        else:
            system = self.file_system(system_ref) if system_ref is not None else None
            candidates = [p for p in self.access_points.values() if system is None or p.file_system is system]
        return self._page(candidates, size, after, "AccessPoints", "NextToken")

    def _page(self, items: list[Any], size: int, after: int, key: str, next_key: str) -> dict:
        """Up to `size` of `items` created after sequence number `after`, and the token for the rest."""
        page = [item for item in items if item.seq > after][: size + 1]
        answer: dict = {key: [item.wire(self.account) for item in page[:size]]}
        if len(page) > size:
            answer[next_key] = _token(page[size - 1].seq)
        return answer

    def delete_access_point(self, ref: str) -> None:
        """Forget the access point; its files stay, as EFS keeps them in the file system."""
        self._remove_access_point(self.access_point(ref))

    # ------------------------------------------------------------ tasks

    def mounts(self, definition: dict, container: dict) -> tuple[Mount, ...]:
        """The container's EFS mount points, resolved now; StartFailure as ECS words a failed mount."""
        volumes = {v["name"]: v for v in definition.get("volumes") or []}
        found = []
        for point in container.get("mountPoints") or []:
            config = volumes.get(point["sourceVolume"], {}).get("efsVolumeConfiguration")
            if config is not None:
                found.append(self._mount(point, config))
        return tuple(found)

    def _mount(self, point: dict, config: dict) -> Mount:
        system = self.file_systems.get(config["fileSystemId"].rsplit("/", 1)[-1])
        if system is None:
            raise StartFailure(
                f'{MOUNT_FAILED}Failed to resolve "{config["fileSystemId"]}.efs.{self.region}.amazonaws.com" - '
                "check that your file system ID is correct, and ensure that the VPC has an EFS mount target for "
                "this file system ID."
            )
        root, creation = config.get("rootDirectory") or "/", None
        access_point_id = (config.get("authorizationConfig") or {}).get("accessPointId")
        if access_point_id is not None:
            access = self.access_points.get(access_point_id.rsplit("/", 1)[-1])
            if access is None or access.file_system is not system:
                raise StartFailure(
                    f"{MOUNT_FAILED}b'mount.nfs4: access denied by server while mounting 127.0.0.1:/' "
                    f"(access point {access_point_id} of {system.id} does not exist)"
                )
            root, creation = access.root_directory.get("Path", "/"), access.root_directory.get("CreationInfo")
        return Mount(point["containerPath"], system.id, root, creation, bool(point.get("readOnly", False)))


def _posix_user(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("PosixUser must be an object with Uid and Gid.")
    user: dict[str, Any] = {"Uid": _u32(value.get("Uid"), "PosixUser.Uid")}
    user["Gid"] = _u32(value.get("Gid"), "PosixUser.Gid")
    secondary = value.get("SecondaryGids")
    if secondary is not None:
        if not isinstance(secondary, list) or len(secondary) > 16:
            raise bad_request("PosixUser.SecondaryGids must be a list of at most 16 group IDs.")
        user["SecondaryGids"] = [_u32(gid, "PosixUser.SecondaryGids") for gid in secondary]
    return user


def _root_directory(value: Any) -> dict:
    if value is None:
        return {"Path": "/"}
    if not isinstance(value, dict):
        raise bad_request("RootDirectory must be an object with Path and CreationInfo.")
    path = value.get("Path", "/")
    if not isinstance(path, str) or not 1 <= len(path) <= 100 or not _ROOT_PATH.match(path):
        raise bad_request(f"RootDirectory.Path {path!r} must be '/' or up to 4 absolute path components.")
    root: dict[str, Any] = {"Path": path}
    info = value.get("CreationInfo")
    if info is not None:
        if not isinstance(info, dict):
            raise bad_request("RootDirectory.CreationInfo must be an object.")
        permissions = info.get("Permissions")
        if not isinstance(permissions, str) or not _PERMISSIONS.match(permissions):
            raise bad_request("CreationInfo.Permissions must be an octal mode of 3 or 4 digits, such as '0755'.")
        root["CreationInfo"] = {
            "OwnerUid": _u32(info.get("OwnerUid"), "CreationInfo.OwnerUid"),
            "OwnerGid": _u32(info.get("OwnerGid"), "CreationInfo.OwnerGid"),
            "Permissions": permissions,
        }
    return root
