"""The ECS operations: each validates its request as ECS does, then asks the control plane.

Every check happens before anything changes, so a refused request leaves no trace.
An operation takes the decoded JSON request and returns the JSON answer as a dict.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from calliope_hub.ecsfacts import STARTED_BY_PATTERN
from calliope_hub.localecs.efsvolumes import check_volumes
from calliope_hub.localecs.model import (
    Container,
    EcsError,
    RawJson,
    Task,
    TaskDefinition,
    client_error,
    fargate_pair_error,
    invalid,
    parse_size,
    shown,
    validate_tags,
    wire_tags,
)
from calliope_hub.localecs.ssm import check_secrets
from calliope_hub.localecs.state import ControlPlane

Params = dict[str, Any]
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _get(params: Params, key: str, kind: type, *, required: bool = False) -> Any:
    value = params.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required and was not given.")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"{key} must be {_TYPE_NAMES[kind]}, not {type(value).__name__}.")
    return value


def _max_results(params: Params) -> int:
    limit = _get(params, "maxResults", int)
    if limit is not None and not 1 <= limit <= 100:
        raise invalid(f"maxResults must be between 1 and 100, not {limit}.")
    return limit or 100


def _token(value: int) -> str:
    return base64.urlsafe_b64encode(f"calliope:{value}".encode()).decode()


def _untoken(params: Params) -> int:
    token = _get(params, "nextToken", str)
    if token is None:
        return 0
    try:
        prefix, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if prefix == "calliope":
            return int(value)
    except ValueError:
        pass
    raise invalid("Invalid nextToken: pass back the nextToken of a previous answer unchanged.")


# ---------------------------------------------------------------- clusters


def create_cluster(plane: ControlPlane, params: Params) -> dict:
    name = _get(params, "clusterName", str) or "default"
    if not _NAME.match(name):
        raise invalid("clusterName may contain up to 255 letters, numbers, hyphens and underscores.")
    tags = validate_tags(params.get("tags"))
    settings = _get(params, "settings", list) or []
    providers = _get(params, "capacityProviders", list) or []
    return {"cluster": plane.create_cluster(name, tags, settings, providers).wire(True)}


def _page(arns: list[str], params: Params, key: str) -> dict:
    """One page of `arns` after the request's nextToken, and the token for the next page when there is one."""
    start, limit = _untoken(params), _max_results(params)
    answer: dict = {key: arns[start : start + limit]}
    if start + limit < len(arns):
        answer["nextToken"] = _token(start + limit)
    return answer


def list_clusters(plane: ControlPlane, params: Params) -> dict:
    return _page([c.arn for c in plane.clusters.values() if c.status == "ACTIVE"], params, "clusterArns")


def describe_clusters(plane: ControlPlane, params: Params) -> dict:
    refs = _get(params, "clusters", list) or ["default"]
    if len(refs) > 100:
        raise invalid("clusters can hold at most 100 names or ARNs.")
    include_tags = "TAGS" in (_get(params, "include", list) or [])
    found, failures = [], []
    if not _is_strings(refs):
        raise invalid("clusters must be a list of cluster names or ARNs.")
    for ref in refs:
        name = ref.rsplit("cluster/", 1)[-1]
        cluster = plane.clusters.get(name)
        if cluster is None:
            failures.append({"arn": plane.arn(f"cluster/{name}"), "reason": "MISSING"})
        else:
            found.append(cluster.wire(include_tags))
    return {"clusters": found, "failures": failures}


def delete_cluster(plane: ControlPlane, params: Params) -> dict:
    cluster = plane.cluster(_get(params, "cluster", str, required=True))
    return {"cluster": plane.delete_cluster(cluster).wire(True)}


# ---------------------------------------------------------------- task definitions


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_environment(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("value", ""), str) for e in value
    )


def _check_container(container: Any, names: set[str]) -> None:
    if not isinstance(container, dict) or not isinstance(container.get("name"), str):
        raise client_error("Every container definition needs a name.")
    name = container["name"]
    if not _NAME.match(name) or name in names:
        raise client_error(f"Container name {shown(name)} is invalid or repeated.")
    if not isinstance(container.get("image"), str) or not container["image"]:
        raise client_error(f"Container {name!r} needs an image.")
    for key in ("command", "entryPoint"):
        if container.get(key) is not None and not _is_strings(container[key]):
            raise client_error(f"Container {name!r}: {key} must be a list of strings.")
    if container.get("environment") is not None and not _is_environment(container["environment"]):
        raise client_error(f"Container {name!r}: environment must be a list of {{name, value}} strings.")
    ports = container.get("portMappings") or []
    if not isinstance(ports, list) or not all(
        isinstance(p, dict) and isinstance(p.get("containerPort"), int) and 0 < p["containerPort"] < 65536
        for p in ports
    ):
        raise client_error(f"Container {name!r}: portMappings need a containerPort between 1 and 65535.")
    check = container.get("healthCheck")
    if check is not None and not (isinstance(check, dict) and _is_strings(check.get("command")) and check["command"]):
        raise client_error(f"Container {name!r}: healthCheck needs a command list.")
    for key in ("cpu", "memory", "memoryReservation"):
        if container.get(key) is not None and (not isinstance(container[key], int) or isinstance(container[key], bool)):
            raise client_error(f"Container {name!r}: {key} must be an integer.")
    if not isinstance(container.get("essential", True), bool):
        raise client_error(f"Container {name!r}: essential must be true or false.")
    names.add(name)


def _check_container_definitions(containers: Any) -> None:
    if not isinstance(containers, list) or not containers:
        raise client_error("containerDefinitions must be a non-empty list.")
    names: set[str] = set()
    for container in containers:
        _check_container(container, names)


def register_task_definition(plane: ControlPlane, params: Params) -> dict:
    family = _get(params, "family", str, required=True)
    if not _NAME.match(family):
        raise client_error("family may contain up to 255 letters, numbers, hyphens and underscores.")
    _check_container_definitions(params.get("containerDefinitions"))
    check_secrets(params)
    check_volumes(params)
    network_mode = _get(params, "networkMode", str) or "bridge"
    if network_mode not in ("bridge", "host", "awsvpc", "none"):
        raise invalid(f"networkMode must be bridge, host, awsvpc or none, not {shown(network_mode)}.")
    cpu, memory = params.get("cpu"), params.get("memory")
    units = parse_size(cpu, "cpu") if cpu is not None else None
    mib = parse_size(memory, "memory") if memory is not None else None
    compatibilities = _get(params, "requiresCompatibilities", list) or []
    if not _is_strings(compatibilities) or not set(compatibilities) <= {"EC2", "FARGATE", "EXTERNAL"}:
        raise invalid("requiresCompatibilities may hold only EC2, FARGATE and EXTERNAL.")
    if "FARGATE" in compatibilities:
        if network_mode != "awsvpc":
            raise client_error("Fargate only supports network mode 'awsvpc'.")
        if units is None or mib is None:
            raise client_error("Fargate requires that 'cpu' and 'memory' be defined at the task level.")
        problem = fargate_pair_error(units, mib)
        if problem:
            raise client_error(problem)
    tags = validate_tags(params.get("tags"))
    body = {k: v for k, v in params.items() if k != "tags"}
    definition = plane.register(family, body, tags)
    return {"taskDefinition": definition.wire(), "tags": wire_tags(tags)}


def describe_task_definition(plane: ControlPlane, params: Params) -> dict:
    definition = plane.definition(_get(params, "taskDefinition", str, required=True))
    answer: dict = {"taskDefinition": definition.wire()}
    if "TAGS" in (_get(params, "include", list) or []):
        answer["tags"] = wire_tags(definition.tags)
    return answer


def deregister_task_definition(plane: ControlPlane, params: Params) -> dict:
    ref = _get(params, "taskDefinition", str, required=True)
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise invalid("taskDefinition must name a revision: 'family:revision' or its full ARN.")
    definition = plane.definition(ref)
    if definition.status == "ACTIVE":
        definition.status, definition.deregistered_at = "INACTIVE", plane.clock()
    return {"taskDefinition": definition.wire()}


def list_task_definitions(plane: ControlPlane, params: Params) -> dict:
    """ECS's familyPrefix here is, despite its name, the whole family (botocore's model: "the full family
    name"; moto compares it with ==): `lab` must not list `lab-alice`, or a per-user family leaks into a
    shared one. Only ListTaskDefinitionFamilies matches a prefix."""
    family = _get(params, "familyPrefix", str)
    status = _get(params, "status", str) or "ACTIVE"
    order = _get(params, "sort", str) or "ASC"
    if status not in ("ACTIVE", "INACTIVE") or order not in ("ASC", "DESC"):
        raise invalid("status must be ACTIVE or INACTIVE and sort ASC or DESC.")
    arns = [
        d.arn
        for name in sorted(plane.definitions)
        if family is None or name == family
        for d in plane.definitions[name]
        if d.status == status
    ]
    if order == "DESC":
        arns.reverse()
    return _page(arns, params, "taskDefinitionArns")


# ---------------------------------------------------------------- tasks


def _placement(definition: TaskDefinition, params: Params) -> tuple[str | None, str | None, bool]:
    """(launchType, capacity provider, on Fargate?) as ECS resolves them."""
    launch_type = _get(params, "launchType", str)
    strategy = _get(params, "capacityProviderStrategy", list)
    if launch_type and strategy:
        raise invalid(
            "Specifying both a launch type and capacity provider strategy is not supported. Remove one and try again."
        )
    if launch_type not in (None, "EC2", "FARGATE", "EXTERNAL"):
        raise invalid(f"launchType must be EC2, FARGATE or EXTERNAL, not {shown(launch_type)}.")
    provider = None
    if strategy:
        if not all(isinstance(s, dict) and isinstance(s.get("capacityProvider"), str) for s in strategy):
            raise invalid("Every capacityProviderStrategy item needs a capacityProvider name.")
        provider = strategy[0]["capacityProvider"]
        return None, provider, provider in ("FARGATE", "FARGATE_SPOT")
    if launch_type is None:  # ECS would use the cluster's default strategy, else EC2: see docs/local-ecs.md
        launch_type = "FARGATE" if "FARGATE" in definition.body.get("requiresCompatibilities", []) else "EC2"
        return launch_type, None, launch_type == "FARGATE"
    if not definition.supports(launch_type):
        raise invalid(f"Task definition does not support launch_type {launch_type}.")
    if launch_type != "FARGATE":  # local ECS clusters never have container instances
        raise invalid("No Container Instances were found in your cluster.")
    return launch_type, None, True


def _task_size(definition: TaskDefinition, overrides: dict, fargate: bool) -> tuple[str, str]:
    cpu = overrides.get("cpu", definition.body.get("cpu"))
    memory = overrides.get("memory", definition.body.get("memory"))
    units = parse_size(cpu, "cpu") if cpu is not None else None
    mib = parse_size(memory, "memory") if memory is not None else None
    if fargate:
        if units is None or mib is None:
            raise invalid("Fargate tasks need task-level cpu and memory, in the definition or the overrides.")
        problem = fargate_pair_error(units, mib)
        if problem:
            raise invalid(problem)
    return str(units if units is not None else 0), str(mib if mib is not None else 0)


def _check_overrides(definition: TaskDefinition, overrides: dict) -> None:
    names = {c["name"] for c in definition.containers}
    for override in overrides.get("containerOverrides") or []:
        if not isinstance(override, dict) or override.get("name") not in names:
            name = override.get("name") if isinstance(override, dict) else override
            raise invalid(f"Override for container named {shown(name)} is not a container in the TaskDefinition.")
        command = override.get("command")
        if command is not None and not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
            raise invalid("containerOverrides command must be a list of strings.")
        environment = override.get("environment")
        if environment is not None and not _is_environment(environment):
            raise invalid("containerOverrides environment must be a list of {name, value} strings.")


def _subnet(definition: TaskDefinition, params: Params, fargate: bool) -> str | None:
    network_mode = definition.body.get("networkMode", "bridge")
    if fargate and network_mode != "awsvpc":
        raise invalid("Task definition does not support launch_type FARGATE: its networkMode is not awsvpc.")
    if network_mode != "awsvpc":
        return None
    config = (_get(params, "networkConfiguration", dict) or {}).get("awsvpcConfiguration")
    subnets = config.get("subnets") if isinstance(config, dict) else None
    if not subnets or not _is_strings(subnets):
        raise invalid("Network Configuration must be provided when networkMode 'awsvpc' is specified.")
    return str(subnets[0])


def _fingerprint(params: Params) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "clientToken"}, sort_keys=True)


def run_task(plane: ControlPlane, params: Params) -> dict:
    cluster = plane.cluster(_get(params, "cluster", str))
    definition = plane.definition(_get(params, "taskDefinition", str, required=True))
    if definition.status != "ACTIVE":
        raise client_error(f"TaskDefinition {definition.arn} is inactive.")
    count = _get(params, "count", int)
    count = 1 if count is None else count
    if not 1 <= count <= 10:
        raise invalid(f"count must be between 1 and 10, not {count}.")
    token = _get(params, "clientToken", str)
    if token is not None and not 1 <= len(token) <= 64:
        raise invalid("clientToken must be 1-64 characters.")
    started_by = _get(params, "startedBy", str)
    if started_by is not None and not STARTED_BY_PATTERN.match(started_by):
        raise invalid("startedBy must be up to 128 letters, numbers, hyphens, underscores and slashes.")
    tags = validate_tags(params.get("tags"))
    launch_type, provider, fargate = _placement(definition, params)
    overrides = _get(params, "overrides", dict) or {}
    _check_overrides(definition, overrides)
    cpu, memory = _task_size(definition, overrides, fargate)
    subnet = _subnet(definition, params, fargate)
    group = _get(params, "group", str) or f"family:{definition.family}"

    if token is not None:
        earlier = plane.tokens.get((cluster.arn, token))
        if earlier is not None:
            if earlier[0] != _fingerprint(params):
                raise invalid("clientToken was already used with a different request.")
            return {"tasks": [t.wire() for t in earlier[1]], "failures": []}

    tasks: list[Task] = []
    failures: list[dict] = []
    for _ in range(count):
        ip = plane.addresses.take()
        if ip is None:
            failures.append({"reason": "RESOURCE:ENI", "detail": f"no free address left in {plane.cidr}"})
            continue
        containers = [
            Container(
                name=c["name"],
                image=c["image"],
                arn=plane.arn(f"container/{cluster.name}/{uuid.uuid4()}"),
                cpu=str(c.get("cpu", 0)),
                memory=str(c["memory"]) if c.get("memory") is not None else None,
            )
            for c in definition.containers
        ]
        tasks.append(
            plane.add_task(
                cluster,
                definition,
                ip,
                containers=containers,
                overrides=overrides,
                cpu=cpu,
                memory=memory,
                launch_type=launch_type,
                capacity_provider=provider,
                started_by=started_by,
                group=group,
                tags=dict(tags),
                subnet=subnet,
                client_token=token,
            )
        )
    if token is not None and tasks:
        plane.tokens[(cluster.arn, token)] = (_fingerprint(params), tasks)
    return {"tasks": [t.wire() for t in tasks], "failures": failures}


def describe_tasks(plane: ControlPlane, params: Params) -> RawJson:
    cluster = plane.cluster(_get(params, "cluster", str))
    refs = _get(params, "tasks", list, required=True)
    if not refs:
        raise invalid("Tasks cannot be empty.")
    if len(refs) > 100:
        raise invalid(f"Tasks cannot be longer than 100 elements: {len(refs)} were given.")
    if not all(isinstance(ref, str) for ref in refs):
        raise invalid("tasks must be a list of task IDs or ARNs.")
    include_tags = "TAGS" in (_get(params, "include", list) or [])
    found: list[bytes] = []
    failures = []
    for ref in refs:
        task = plane.find_task(cluster, ref)
        if task is None:
            arn = ref if ref.startswith("arn:") else plane.arn(f"task/{cluster.name}/{ref}")
            failures.append({"arn": arn, "reason": "MISSING"})
        else:
            found.append(task.wire_json(include_tags))
    # the hot path of every hub: assemble each task's cached JSON instead of encoding it again
    return RawJson(b'{"tasks":[' + b",".join(found) + b'],"failures":' + json.dumps(failures).encode() + b"}")


def list_tasks(plane: ControlPlane, params: Params) -> dict:
    cluster = plane.cluster(_get(params, "cluster", str))
    family = _get(params, "family", str)
    started_by = _get(params, "startedBy", str)
    launch_type = _get(params, "launchType", str)
    desired = _get(params, "desiredStatus", str) or "RUNNING"
    if desired not in ("RUNNING", "PENDING", "STOPPED"):
        raise invalid(f"desiredStatus must be RUNNING, PENDING or STOPPED, not {shown(desired)}.")
    if _get(params, "serviceName", str) is not None:
        return {"taskArns": []}  # local ECS runs no services

    def match(task: Task) -> bool:
        return (
            task.desired_status == desired
            and (family is None or task.definition.family == family)
            and (started_by is None or task.started_by == started_by)
            and (launch_type is None or task.launch_type == launch_type)
        )

    tasks, after = plane.page(cluster, match, _untoken(params), _max_results(params))
    answer: dict = {"taskArns": [t.arn for t in tasks]}
    if after is not None:
        answer["nextToken"] = _token(after)
    return answer


def stop_task(plane: ControlPlane, params: Params) -> dict:
    cluster = plane.cluster(_get(params, "cluster", str))
    ref = _get(params, "task", str, required=True)
    reason = _get(params, "reason", str)
    if reason is not None and len(reason) > 1024:
        raise invalid("reason must be at most 1024 characters.")
    task = plane.find_task(cluster, ref)
    if task is None:
        raise invalid("The referenced task was not found.")
    plane.stop(task, reason or "Task stopped by user", "UserInitiated")
    return {"task": task.wire()}


# ---------------------------------------------------------------- tags


def _tagged(plane: ControlPlane, params: Params) -> Any:
    """The cluster, task definition or task an ARN names; tags live on each of them."""
    arn = _get(params, "resourceArn", str, required=True)
    resource = arn.split(":", 5)[-1] if arn.startswith("arn:") else ""
    kind, _, name = resource.partition("/")
    found: Any = None
    if kind == "cluster":
        found = plane.clusters.get(name)
    elif kind == "task-definition":
        try:
            found = plane.definition(name)
        except EcsError:
            found = None
    elif kind == "task":
        found = plane.tasks.get(name.rsplit("/", 1)[-1])
    if found is None:
        raise invalid(f"The specified resource {arn} was not found.")
    return found


def tag_resource(plane: ControlPlane, params: Params) -> dict:
    resource = _tagged(plane, params)
    tags = validate_tags(_get(params, "tags", list, required=True))
    merged = {**resource.tags, **tags}
    if len(merged) > 50:
        raise invalid(f"A resource can have at most 50 tags; this would make {len(merged)}.")
    resource.tags = merged
    if isinstance(resource, Task):
        resource.touch()
    return {}


def untag_resource(plane: ControlPlane, params: Params) -> dict:
    resource = _tagged(plane, params)
    keys = _get(params, "tagKeys", list, required=True)
    if not _is_strings(keys):
        raise invalid("tagKeys must be a list of strings.")
    resource.tags = {k: v for k, v in resource.tags.items() if k not in keys}
    if isinstance(resource, Task):
        resource.touch()
    return {}


def list_tags_for_resource(plane: ControlPlane, params: Params) -> dict:
    return {"tags": wire_tags(_tagged(plane, params).tags)}


#: X-Amz-Target operation name -> handler.
OPERATIONS: dict[str, Callable[[ControlPlane, Params], dict | RawJson]] = {
    "CreateCluster": create_cluster,
    "ListClusters": list_clusters,
    "DescribeClusters": describe_clusters,
    "DeleteCluster": delete_cluster,
    "RegisterTaskDefinition": register_task_definition,
    "DescribeTaskDefinition": describe_task_definition,
    "DeregisterTaskDefinition": deregister_task_definition,
    "ListTaskDefinitions": list_task_definitions,
    "RunTask": run_task,
    "DescribeTasks": describe_tasks,
    "StopTask": stop_task,
    "ListTasks": list_tasks,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
}
