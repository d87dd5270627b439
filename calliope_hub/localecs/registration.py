"""What ECS adds to a task definition when it registers one, so DescribeTaskDefinition answers as ECS does.

Stock spawners and tools read these fields back (and some copy a definition and strip
them before registering again), so their absence made local ECS differ from ECS where it
mattered: `registeredBy`, `compatibilities`, `requiresAttributes`, and the defaults ECS
fills into each container definition.
"""

from __future__ import annotations

from typing import Any

from calliope_hub.ecsfacts import is_fargate_size

#: network modes ECS Anywhere (EXTERNAL) runs; Fargate needs awsvpc.
_EXTERNAL_MODES = ("bridge", "host", "none")
#: what ECS fills into every container definition it returns.
_CONTAINER_DEFAULTS: dict[str, Any] = {
    "cpu": 0,
    "essential": True,
    "environment": [],
    "mountPoints": [],
    "volumesFrom": [],
}


def _size(value: Any) -> int | None:
    """A task-level cpu or memory as a plain number; None for a unit string ("1 vCPU") or none."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None


def compatibilities(body: dict) -> list[str]:
    """The launch types a definition can run on, as ECS works them out from its content."""
    network_mode = body.get("networkMode") or "bridge"
    found = ["EC2"]
    cpu, memory = _size(body.get("cpu")), _size(body.get("memory"))
    if network_mode == "awsvpc" and cpu is not None and memory is not None and is_fargate_size(cpu, memory):
        found.append("FARGATE")
    if network_mode in _EXTERNAL_MODES:
        found.append("EXTERNAL")
    return found


def requires_attributes(body: dict) -> list[dict[str, str]]:
    """The container-instance capabilities a definition needs, as ECS lists them."""
    containers = body.get("containerDefinitions") or []
    needs = ["com.amazonaws.ecs.capability.docker-remote-api.1.18"]
    if body.get("networkMode") == "awsvpc":
        needs.append("ecs.capability.task-eni")
    if body.get("taskRoleArn"):
        needs.append("com.amazonaws.ecs.capability.task-iam-role")
    if any(c.get("healthCheck") for c in containers):
        needs.append("ecs.capability.container-health-check")
    if any((c.get("logConfiguration") or {}).get("logDriver") == "awslogs" for c in containers):
        needs += ["com.amazonaws.ecs.capability.logging-driver.awslogs", "ecs.capability.execution-role-awslogs"]
    if any(c.get("secrets") for c in containers):
        needs += ["ecs.capability.secrets.ssm.environment-variables", "ecs.capability.execution-role-ecr-pull"]
    if any("efsVolumeConfiguration" in v for v in body.get("volumes") or [] if isinstance(v, dict)):
        needs += ["ecs.capability.efsAuth", "ecs.capability.efs"]
    return [{"name": name} for name in needs]


def wire_container(container: dict, network_mode: str) -> dict:
    """A container definition as ECS returns it: its defaults filled, each port's protocol and host port."""
    body = {**_CONTAINER_DEFAULTS, **container}
    ports = []
    for mapping in container.get("portMappings") or []:
        port = {"protocol": "tcp", **mapping}
        if network_mode in ("awsvpc", "host"):
            port.setdefault("hostPort", port["containerPort"])  # one address per task: the same port
        ports.append(port)
    body["portMappings"] = ports
    return body


def registered_by(arn: str) -> str:
    """Who registered it: ECS names the caller's IAM principal; local ECS has no IAM, so the account root."""
    account = arn.split(":")[4]
    return f"arn:aws:iam::{account}:root"
