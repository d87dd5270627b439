"""EFS volumes in task definitions: checked as ECS checks them, and mounted in process mode.

RegisterTaskDefinition refuses what ECS refuses (an access point without transit
encryption, a rootDirectory beside an access point, a mount point naming no volume),
before anything is kept. At start, process mode shows each mount as a directory on this
machine, `<data dir>/efs/<file system id>/<root path>`, created as EFS creates an access
point's root directory on first use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from calliope_hub.localecs.efs import ACCESS_POINT_ID, MOUNT_FAILED
from calliope_hub.localecs.model import client_error
from calliope_hub.localecs.runner import Mount, StartFailure

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def check_volumes(body: dict) -> None:
    """RegisterTaskDefinition: volumes and mountPoints as ECS checks them, before anything is kept."""
    volumes = body.get("volumes") or []
    if not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes):
        raise client_error("volumes must be a list of objects.")
    names: set[str] = set()
    for volume in volumes:
        name = volume.get("name")
        if not isinstance(name, str) or not _VOLUME_NAME.match(name) or name in names:
            raise client_error(f"Volume name {name!r} is invalid or repeated.")
        names.add(name)
        if volume.get("efsVolumeConfiguration") is not None:
            _check_efs_volume(name, volume["efsVolumeConfiguration"])
    for container in body.get("containerDefinitions") or []:
        _check_mount_points(container, names)


def _check_efs_volume(name: str, config: Any) -> None:
    label = f"Volume {name!r}: efsVolumeConfiguration"
    if not isinstance(config, dict) or not isinstance(config.get("fileSystemId"), str):
        raise client_error(f"{label} needs a fileSystemId.")
    root = config.get("rootDirectory")
    if root is not None and (not isinstance(root, str) or not root.startswith("/") or ".." in root.split("/")):
        raise client_error(f"{label}.rootDirectory must be an absolute path without '..'.")
    encryption = config.get("transitEncryption", "DISABLED")
    authorization = config.get("authorizationConfig") or {}
    if encryption not in ("ENABLED", "DISABLED") or not isinstance(authorization, dict):
        raise client_error(f"{label}: transitEncryption is ENABLED or DISABLED; authorizationConfig an object.")
    if authorization.get("iam", "DISABLED") not in ("ENABLED", "DISABLED"):
        raise client_error(f"{label}.authorizationConfig.iam is ENABLED or DISABLED.")
    point = authorization.get("accessPointId")
    if point is not None and (not isinstance(point, str) or not ACCESS_POINT_ID.match(point)):
        raise client_error(f"{label}.authorizationConfig.accessPointId {point!r} is not an access point ID.")
    if (point is not None or authorization.get("iam") == "ENABLED") and encryption != "ENABLED":
        raise client_error(
            f"{label}: transit encryption must be enabled when using an EFS access point or IAM authorization."
        )
    if point is not None and root not in (None, "/"):
        raise client_error(
            "Invalid request provided: Create TaskDefinition: When using an EFS access point, the root directory "
            'must either be set to "/" or be omitted.'
        )


def _check_mount_points(container: dict, volumes: set[str]) -> None:
    points = container.get("mountPoints")
    if points is None:
        return
    label = f"Container {container.get('name')!r}: mountPoints"
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise client_error(f"{label} must be a list of objects.")
    for point in points:
        if point.get("sourceVolume") not in volumes:
            raise client_error(f"{label}: sourceVolume {point.get('sourceVolume')!r} is not a volume of this task.")
        path = point.get("containerPath")
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
            raise client_error(f"{label}: containerPath must be an absolute path other than '/'.")
        if not isinstance(point.get("readOnly", False), bool):
            raise client_error(f"{label}: readOnly must be true or false.")


def prepare_directory(data_dir: Path, mount: Mount) -> Path:
    """The directory a mount shows, created as EFS would on first use; StartFailure when it cannot be."""
    system_dir = data_dir / "efs" / mount.file_system_id
    system_dir.mkdir(parents=True, exist_ok=True)
    relative = PurePosixPath(mount.root_path).relative_to("/")
    directory = system_dir.joinpath(*relative.parts)
    if directory.is_dir():
        return directory
    if mount.creation_info is None:
        raise StartFailure(
            f"{MOUNT_FAILED}b'mount.nfs4: mounting {mount.file_system_id}:{mount.root_path} failed, reason given by "
            "server: No such file or directory'"
        )
    mode = int(mount.creation_info["Permissions"], 8)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, mode)
    return directory
