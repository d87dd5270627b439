"""The catalog's schema: what a service and a size may say, checked when the catalog loads.

Every limit here is one ECS or Fargate enforces at RunTask time. Checking them at load turns a
spawn that would fail for every user into one clear error for the operator, naming the value.
"""

from __future__ import annotations

import re
import string
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..ecsfacts import FARGATE_MEMORY


class CatalogError(ValueError):
    """A user's choice is not acceptable. The message is written for that user and shown as is."""


class CatalogConfigError(ValueError):
    """The operator's catalog is wrong: the message names the file, the line and the field.

    A separate type from CatalogError on purpose: it carries server paths, so it belongs in
    the hub's log at start, and code that turns CatalogError into a user's 400 never catches it.
    """


#: Names users type in user_options and that appear in tags and form values: no "/" or spaces.
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
#: ECS task definition family and container names: letters, digits, hyphens, underscores.
ECS_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"


def describe_memory_choices(cpu: int) -> str:
    """Fargate's memory choices for `cpu`, short enough for one error line."""
    choices = FARGATE_MEMORY[cpu]
    steps = {b - a for a, b in pairwise(choices)}
    if len(choices) > 4 and len(steps) == 1:
        return f"{choices[0]} to {choices[-1]} MiB in steps of {steps.pop()}"
    return ", ".join(str(m) for m in choices) + " MiB"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Size(_Strict):
    """A Fargate task size; only valid cpu/memory pairs load, so RunTask never rejects one."""

    cpu: int
    memory: int
    display_name: str | None = None

    @model_validator(mode="after")
    def _fargate_pair(self) -> Size:
        if self.cpu not in FARGATE_MEMORY:
            allowed = ", ".join(str(c) for c in FARGATE_MEMORY)
            raise ValueError(f"cpu {self.cpu} is not a Fargate cpu value; allowed: {allowed}")
        if self.memory not in FARGATE_MEMORY[self.cpu]:
            raise ValueError(
                f"cpu {self.cpu} with memory {self.memory} is not a valid Fargate pair; "
                f"for cpu {self.cpu} memory must be {describe_memory_choices(self.cpu)}"
            )
        return self

    @property
    def label(self) -> str:
        """What a user sees for this size: its display name plus vCPU and GiB."""
        vcpu = f"{self.cpu / 1024:g} vCPU"
        memory = f"{self.memory / 1024:g} GiB"
        return f"{self.display_name} ({vcpu}, {memory})" if self.display_name else f"{vcpu}, {memory}"


class HealthCheck(_Strict):
    """The container health check, in seconds, within the ranges ECS accepts."""

    command: list[str] = Field(min_length=2)
    interval: int = Field(ge=5, le=300)
    timeout: int = Field(default=5, ge=2, le=60)
    retries: int = Field(ge=1, le=10)
    start_period: int = Field(ge=0, le=300)

    @field_validator("command")
    @classmethod
    def _command_form(cls, command: list[str]) -> list[str]:
        if command[0] not in ("CMD", "CMD-SHELL"):
            raise ValueError(f"must start with CMD or CMD-SHELL, not {command[0]!r}")
        return command

    def as_ecs(self) -> dict:
        """The container definition's healthCheck, as RegisterTaskDefinition takes it."""
        return {
            "command": list(self.command),
            "interval": self.interval,
            "timeout": self.timeout,
            "retries": self.retries,
            "startPeriod": self.start_period,
        }


class LocalRun(_Strict):
    """What local ECS's process mode runs instead of the image, which may not be public."""

    command: list[str] = Field(min_length=1)
    #: True when the command is a labelled stand-in rather than the real product.
    stand_in: bool


#: EFS file system IDs; `auto` is the file system the hub finds or creates by creation token (docs/catalog.md).
FILE_SYSTEM_PATTERN = r"^(auto|fs-[0-9a-f]{8,40})$"
#: EFS: an access point's root directory is at most 100 characters (the template is checked with a long name).
MAX_ROOT_PATH = 100


class Storage(_Strict):
    """A per-user EFS home: one access point per user, named in that user's task-definition revision."""

    type: Literal["efs"]
    #: one ID, or several: users are spread over them by a stable hash of their name (10,000 access points each)
    file_system_id: str | list[str]
    uid: int = Field(ge=0, le=4294967295)
    gid: int = Field(ge=0, le=4294967295)
    root_path: str = "/home/{username}"
    mount_path: str = Field(default="/home/jovyan/work", pattern=r"^/[^\s]*$")
    permissions: str = Field(default="0750", pattern=r"^0?[0-7]{3,4}$")
    delete_on_user_delete: bool = False

    @field_validator("file_system_id")
    @classmethod
    def _file_system_ids(cls, value: str | list[str]) -> str | list[str]:
        ids = [value] if isinstance(value, str) else value
        if not ids:
            raise ValueError("needs at least one file system ID")
        for ident in ids:
            if not re.fullmatch(FILE_SYSTEM_PATTERN, ident):
                raise ValueError(f"{ident!r} is not an EFS file system ID (fs- and 8 to 40 hex digits) or 'auto'")
        if "auto" in ids and len(ids) > 1:
            raise ValueError("'auto' cannot be mixed with other file system IDs")
        return value

    @field_validator("root_path")
    @classmethod
    def _root_template(cls, template: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        if fields != {"username"}:
            raise ValueError(f"must contain {{username}} and no other field (found {sorted(fields) or 'none'})")
        if not template.startswith("/") or "//" in template or template.endswith("/"):
            raise ValueError("must be an absolute path like /home/{username}, without empty parts or a trailing /")
        if template.count("/") > 4:
            raise ValueError("EFS allows at most 4 directories in an access point's root path")
        if len(template.replace("{username}", "x" * 64)) > MAX_ROOT_PATH:
            raise ValueError(f"too long: EFS allows {MAX_ROOT_PATH} characters with a user's (escaped) name in it")
        return template

    @property
    def file_system_ids(self) -> tuple[str, ...]:
        return (self.file_system_id,) if isinstance(self.file_system_id, str) else tuple(self.file_system_id)


class Service(_Strict):
    """One kind of user server (Lab, Chat, WAIIDE) and the sizes it comes in."""

    name: str = Field(pattern=NAME_PATTERN)
    display_name: str = Field(min_length=1)
    description: str = ""
    image: str = Field(min_length=1, pattern=r"^\S+$")
    family: str = Field(pattern=ECS_NAME_PATTERN)
    container_name: str = Field(pattern=ECS_NAME_PATTERN)
    port: int = Field(ge=1, le=65535)
    #: the container's command; None keeps the image's own, and then spawner args are not passed.
    command: list[str] | None = None
    health_check: HealthCheck
    sizes: dict[str, Size] = Field(min_length=1)
    default_size: str
    local: LocalRun
    #: a per-user home on EFS (None: a server's files live and die with its task)
    storage: Storage | None = None

    @field_validator("sizes")
    @classmethod
    def _size_names(cls, sizes: dict[str, Size]) -> dict[str, Size]:
        for name in sizes:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"size name {name!r} must be lower case letters, digits, '-' or '_', "
                    "starting with a letter (at most 32)"
                )
        return sizes

    @field_validator("default_size")
    @classmethod
    def _default_size_offered(cls, default_size: str, info: ValidationInfo) -> str:
        # A field check, not a whole-model one, so the error points at default_size's line.
        sizes = info.data.get("sizes")
        if sizes is not None and default_size not in sizes:
            raise ValueError(f"{default_size!r} is not one of its sizes ({', '.join(sizes)})")
        return default_size

    @property
    def smallest_size(self) -> Size:
        """The task definition's own cpu/memory: every RunTask override is this size or larger."""
        return min(self.sizes.values(), key=lambda size: (size.cpu, size.memory))
