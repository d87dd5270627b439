"""A local SSM Parameter Store: the subset a hub needs to hand each server a secret through ECS.

The hub writes a per-server SecureString (PutParameter, Overwrite on every start), the
server's task definition names it in a container's `secrets`, and local ECS resolves it
into that container's environment when the task starts, as the ECS agent does with the
task execution role. It speaks AWS JSON 1.1 (`X-Amz-Target: AmazonSSM.<Operation>`) on
local ECS's own port, so an unmodified boto3 `ssm` client works.

Reads are where local ECS differs on purpose. Its API is open to every local task (each
user's JupyterLab can reach it), and it has no IAM. On AWS only the task execution role
may read a server's parameter; here nobody may: GetParameter and GetParameters refuse any
SecureString with AccessDeniedException, whatever WithDecryption says. Values leave the
store only into a starting task's process environment.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from calliope_hub.localecs.awsinput import read, read_tags
from calliope_hub.localecs.model import EcsError, client_error
from calliope_hub.localecs.runner import StartFailure

if TYPE_CHECKING:
    from calliope_hub.localecs.state import ControlPlane

TARGET_PREFIX = "AmazonSSM."
TYPES = ("String", "StringList", "SecureString")
#: tier -> (largest value in characters, parameters allowed per account and Region).
TIERS = {"Standard": (4096, 10_000), "Advanced": (8192, 100_000), "Intelligent-Tiering": (8192, 100_000)}
MAX_LEVELS = 15
_NAME = re.compile(r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_RESERVED = re.compile(r"^/?(aws|ssm)", re.IGNORECASE)
#: how ECS words a task whose secrets cannot be read (Fargate platform 1.4).
PULL_FAILED = (
    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: "
)

Params = dict[str, Any]


def validation(message: str) -> EcsError:
    return EcsError("ValidationException", message)


def not_found(name: str) -> EcsError:
    return EcsError("ParameterNotFound", f"Parameter {name} not found.")


@dataclass(eq=False)
class Parameter:
    name: str
    type: str
    value: str = field(repr=False)
    version: int
    modified: float
    tier: str = "Standard"
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def wire(self, arn: str) -> dict:
        return {
            "Name": self.name,
            "Type": self.type,
            "Value": self.value,
            "Version": self.version,
            "LastModifiedDate": self.modified,
            "ARN": arn,
            "DataType": "text",
        }


class ParameterStore:
    """Parameters by name, per account and Region, with SSM's per-tier limits."""

    def __init__(self, region: str, account: str, clock: Callable[[], float]):
        self.region, self.account, self.clock = region, account, clock
        self.parameters: dict[str, Parameter] = {}
        #: parameters by the limit their tier counts against (Standard, or Advanced and Intelligent-Tiering).
        self.counts: Counter[int] = Counter()

    def arn(self, name: str) -> str:
        return f"arn:aws:ssm:{self.region}:{self.account}:parameter/{name.lstrip('/')}"

    def find(self, ref: str) -> Parameter | None:
        """A parameter by name or by ARN (`parameter/a/b` is `/a/b`; `parameter/x` is `x` or `/x`)."""
        prefix = f"arn:aws:ssm:{self.region}:{self.account}:parameter/"
        if not ref.startswith("arn:"):
            return self.parameters.get(ref)
        if not ref.startswith(prefix):
            return None
        rest = ref[len(prefix) :]
        return self.parameters.get("/" + rest) or (None if "/" in rest else self.parameters.get(rest))

    def put(self, params: Params) -> Parameter:
        name = _name(params)
        value = read(params, "Value", str, validation, required=True)
        kind = read(params, "Type", str, validation)
        tier = read(params, "Tier", str, validation) or "Standard"
        overwrite = read(params, "Overwrite", bool, validation) or False
        tags = read_tags(params.get("Tags"), validation)
        if kind is not None and kind not in TYPES:
            raise validation(f"Type must be one of {', '.join(TYPES)}, not {kind!r}.")
        if tier not in TIERS:
            raise validation(f"Tier must be one of {', '.join(TIERS)}, not {tier!r}.")
        if not 1 <= len(value) <= TIERS[tier][0]:
            raise validation(f"{tier} tier parameters take values of 1 to {TIERS[tier][0]} characters.")
        if (read(params, "DataType", str, validation) or "text") != "text":
            raise validation("Local ECS supports only DataType 'text'.")
        existing = self.parameters.get(name)
        if existing is not None and not overwrite:
            raise EcsError(
                "ParameterAlreadyExists",
                "The parameter already exists. To overwrite this request, set the overwrite option in the request "
                "to true.",
            )
        if existing is not None and tags:
            raise validation(
                "Invalid request: tags and overwrite can't be used together. To create a parameter with tags, please "
                "remove overwrite flag. To update tags for an existing parameter, please use AddTagsToResource or "
                "RemoveTagsFromResource."
            )
        if existing is None:
            return self._create(name, value, kind, tier, tags, params)
        if kind is not None and kind != existing.type:  # so a SecureString can never be turned readable
            raise EcsError(
                "HierarchyTypeMismatchException",
                f"Parameter Store doesn't support changing a parameter type: {name} is a {existing.type}. "
                "Delete it and create it again.",
            )
        existing.value, existing.version, existing.modified = value, existing.version + 1, self.clock()
        if tier != "Standard" and existing.tier == "Standard":  # SSM upgrades a tier, never downgrades one
            self.counts[TIERS[existing.tier][1]] -= 1
            existing.tier = tier
            self.counts[TIERS[tier][1]] += 1
        return existing

    def _create(self, name: str, value: str, kind: str | None, tier: str, tags: dict, params: Params) -> Parameter:
        if kind is None:
            raise validation("A new parameter needs a Type: String, StringList or SecureString.")
        limit = TIERS[tier][1]
        if self.counts[limit] >= limit:
            raise EcsError(
                "ParameterLimitExceeded",
                f"You have exceeded the number of {tier} parameters for this AWS account ({limit}). "
                "Delete unnecessary parameters and try again.",
            )
        description = read(params, "Description", str, validation) or ""
        parameter = Parameter(name, kind, value, 1, self.clock(), tier, description, tags)
        self.parameters[name] = parameter
        self.counts[limit] += 1
        return parameter

    def remove(self, parameter: Parameter) -> None:
        del self.parameters[parameter.name]
        self.counts[TIERS[parameter.tier][1]] -= 1

    def readable(self, names: list[str]) -> list[Parameter]:
        """The named parameters a caller of the API may read; AccessDeniedException for any SecureString."""
        found = [p for p in (self.find(name) for name in names) if p is not None]
        for parameter in found:
            if parameter.type == "SecureString":
                raise EcsError(
                    "AccessDeniedException",
                    f"local ECS is not authorized to return ssm:GetParameter* on resource: {self.arn(parameter.name)}: "
                    "SecureString values go only to the tasks whose secrets name them (on AWS, only the task "
                    "execution role may read them), because every local task can reach this API.",
                )
        return found

    def resolve(self, secrets: list[dict]) -> dict[str, str]:
        """A container's `secrets` as environment (name -> value), or StartFailure worded as ECS does."""
        missing, asm, environment = [], [], {}
        for secret in secrets:
            ref = secret["valueFrom"]
            if ref.startswith("arn:aws:secretsmanager:"):
                asm.append(ref)
                continue
            parameter = self.find(ref)
            if parameter is None:
                missing.append(ref)
            else:
                environment[secret["name"]] = parameter.value
        if asm:
            raise StartFailure(
                PULL_FAILED + f"unable to retrieve secret from asm: local ECS has no Secrets Manager: {asm[0]}"
            )
        if missing:
            raise StartFailure(
                PULL_FAILED + "unable to retrieve secrets from ssm: service call has been retried 1 time(s): "
                f"invalid ssm parameters: {', '.join(missing)}"
            )
        return environment


def _name(params: Params, key: str = "Name") -> str:
    name = read(params, key, str, validation, required=True)
    if not 1 <= len(name) <= 2048 or not _NAME.match(name):
        raise validation(
            f"Parameter name {name!r}: it can consist of sub-paths divided by slash symbol; each sub-path can be "
            "formed as a mix of letters, numbers and the following 3 symbols .-_"
        )
    if "/" in name and not name.startswith("/"):
        raise validation("Parameter name must be a fully qualified name.")
    if _RESERVED.match(name):
        raise validation('Parameter name: can\'t be prefixed with "aws" or "ssm" (case-insensitive).')
    if name.count("/") > MAX_LEVELS:
        raise EcsError(
            "HierarchyLevelLimitExceededException", f"A parameter name can have at most {MAX_LEVELS} levels."
        )
    return name


def _names(params: Params) -> list[str]:
    names = read(params, "Names", list, validation, required=True)
    if not 1 <= len(names) <= 10 or not all(isinstance(n, str) and n for n in names):
        raise validation("Names must hold 1 to 10 parameter names.")
    return names


# ---------------------------------------------------------------- task definitions


def check_secrets(body: dict) -> None:
    """RegisterTaskDefinition: each container's `secrets` is a list of {name, valueFrom} strings, names unique."""
    for container in body.get("containerDefinitions") or []:
        if container.get("secrets") is not None:
            _check_container_secrets(container["secrets"], f"Container {container.get('name')!r}: secrets")


def _check_container_secrets(secrets: Any, label: str) -> None:
    if not isinstance(secrets, list) or not all(
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and s["name"]
        and isinstance(s.get("valueFrom"), str)
        and s["valueFrom"]
        for s in secrets
    ):
        raise client_error(f"{label} must be a list of {{name, valueFrom}} with non-empty strings.")
    names = [s["name"] for s in secrets]
    if len(set(names)) != len(names):
        raise client_error(f"{label}: each name may appear once.")


# ---------------------------------------------------------------- operations


def put_parameter(plane: ControlPlane, params: Params) -> dict:
    parameter = plane.parameters.put(params)
    return {"Version": parameter.version, "Tier": parameter.tier}


def delete_parameter(plane: ControlPlane, params: Params) -> dict:
    name = read(params, "Name", str, validation, required=True)
    parameter = plane.parameters.find(name)
    if parameter is None:
        raise not_found(name)
    plane.parameters.remove(parameter)
    return {}


def delete_parameters(plane: ControlPlane, params: Params) -> dict:
    deleted, invalid = [], []
    for name in _names(params):
        parameter = plane.parameters.find(name)
        if parameter is None:
            invalid.append(name)
        else:
            plane.parameters.remove(parameter)
            deleted.append(name)
    return {"DeletedParameters": deleted, "InvalidParameters": invalid}


def get_parameter(plane: ControlPlane, params: Params) -> dict:
    name = read(params, "Name", str, validation, required=True)
    read(params, "WithDecryption", bool, validation)
    found = plane.parameters.readable([name])
    if not found:
        raise not_found(name)
    return {"Parameter": found[0].wire(plane.parameters.arn(found[0].name))}


def get_parameters(plane: ControlPlane, params: Params) -> dict:
    names = _names(params)
    read(params, "WithDecryption", bool, validation)
    store = plane.parameters
    found = store.readable(names)
    invalid = [name for name in names if store.find(name) is None]
    return {"Parameters": [p.wire(store.arn(p.name)) for p in found], "InvalidParameters": invalid}


#: X-Amz-Target operation name (after `AmazonSSM.`) -> handler.
OPERATIONS: dict[str, Callable[[ControlPlane, Params], dict]] = {
    "PutParameter": put_parameter,
    "DeleteParameter": delete_parameter,
    "DeleteParameters": delete_parameters,
    "GetParameter": get_parameter,
    "GetParameters": get_parameters,
}
