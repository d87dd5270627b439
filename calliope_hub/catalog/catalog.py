"""The service catalog: the only place a user's choice turns into an image, a command and a size.

Users pick a service and a size by name and nothing else (DESIGN.md invariant 6). Everything
ECS runs comes from YAML files the operator controls, validated when the hub starts so a bad
file stops the hub with one clear message instead of failing every spawn later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .form import options_from_form, render_options_form
from .models import CatalogError, Service, Size

BUILTIN_DIRECTORY = Path(__file__).resolve().parent.parent / "services"
#: The only keys of user_options; anything else (image, command, cpu, ...) is refused.
OPTION_KEYS = ("service", "size")


@dataclass(frozen=True)
class Choice:
    """A user's validated pick: a service and one of the sizes it offers."""

    service: Service
    size_name: str
    size: Size


class Catalog:
    """The services users may start, each with its sizes; immutable once loaded."""

    def __init__(self, services: Mapping[str, Service], default_service: str) -> None:
        if not services:
            raise CatalogError("the catalog has no services")
        if default_service not in services:
            raise CatalogError(
                f"default service {default_service!r} is not in the catalog ({', '.join(services)})"
            )
        self.services: dict[str, Service] = dict(services)
        self.default_service = default_service

    @classmethod
    def load(cls, directory: Path | None = None, default_service: str | None = None) -> Catalog:
        """Read every <service>.yaml in `directory` (the built-in services by default).

        The default service is `default_service`, else "lab" when present, else the first by name.
        """
        directory = Path(directory) if directory is not None else BUILTIN_DIRECTORY
        if not directory.is_dir():
            raise CatalogError(f"catalog directory {directory} does not exist")
        paths = sorted(directory.glob("*.yaml"))
        if not paths:
            raise CatalogError(f"catalog directory {directory} has no <service>.yaml files")
        services = {service.name: service for service in map(load_service, paths)}
        if default_service is None:
            default_service = "lab" if "lab" in services else next(iter(services))
        # The default first: the spawn form lists services in this order.
        ordered = sorted(services.values(), key=lambda service: service.name != default_service)
        return cls({service.name: service for service in ordered}, default_service)

    def choose(self, user_options: Mapping[str, Any]) -> Choice:
        """Turn user_options into a Choice, or say exactly what is wrong with them."""
        if not isinstance(user_options, Mapping):
            raise CatalogError("user_options must be an object with the keys 'service' and 'size'")
        unknown = [key for key in user_options if key not in OPTION_KEYS]
        if unknown:
            names = ", ".join(_show(key) for key in unknown)
            noun = "option" if len(unknown) == 1 else "options"
            raise CatalogError(
                f"{noun} {names} cannot be set: only 'service' and 'size' can be chosen, "
                "and only from the catalog"
            )
        service_name = _option(user_options, "service", self.default_service)
        service = self.services.get(service_name)
        if service is None:
            raise CatalogError(
                f"unknown service {_show(service_name)}; choose one of: {', '.join(self.services)}"
            )
        size_name = _option(user_options, "size", service.default_size)
        size = service.sizes.get(size_name)
        if size is None:
            offered = ", ".join(service.sizes)
            if any(size_name in other.sizes for other in self.services.values()):
                raise CatalogError(
                    f"service {service.name!r} does not offer size {size_name!r}; it offers: {offered}"
                )
            raise CatalogError(
                f"unknown size {_show(size_name)} for service {service.name!r}; choose one of: {offered}"
            )
        return Choice(service=service, size_name=size_name, size=size)

    def options_form(self) -> str:
        """The HTML fragment JupyterHub puts inside its spawn page's form."""
        return render_options_form(self)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        """The spawn form's fields as user_options; choose() judges them, as for the REST API."""
        return options_from_form(formdata)

    def task_definition(self, service: str, *, local: bool) -> dict:
        """The RegisterTaskDefinition request for `service`, at its smallest size.

        Sizes are RunTask overrides, so one revision serves every size. Local ECS runs
        `local.command` instead of the image and has no health check: the hub's own HTTP
        wait checks the server there.
        """
        if service not in self.services:
            raise CatalogError(f"unknown service {_show(service)}; known: {', '.join(self.services)}")
        spec = self.services[service]
        container: dict[str, Any] = {
            "name": spec.container_name,
            "image": spec.image,
            "essential": True,
            "portMappings": [{"containerPort": spec.port, "protocol": "tcp"}],
        }
        smallest = spec.smallest_size
        # A soft floor, never above any size's task memory (the hard limit on Fargate). ECS
        # does not need it; moto's RunTask fails without a container-level memory value.
        container["memoryReservation"] = smallest.memory
        command = spec.local.command if local else spec.command
        if command:
            container["command"] = list(command)
        if not local:
            container["healthCheck"] = spec.health_check.as_ecs()
        return {
            "family": spec.family,
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "cpu": str(smallest.cpu),
            "memory": str(smallest.memory),
            "containerDefinitions": [container],
        }


def load_service(path: Path) -> Service:
    """One service file, or a CatalogError naming the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(f"{path}: not valid YAML{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(f"{path}: cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: must be a mapping of keys (name, image, sizes, ...)")
    try:
        service = Service.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(_describe(problem) for problem in error.errors())
        raise CatalogError(f"{path}: {problems}") from None
    if service.name != path.stem:
        raise CatalogError(f"{path}: name {service.name!r} must match the file name {path.stem!r}")
    return service


def _describe(problem: Mapping[str, Any]) -> str:
    """One pydantic error as an operator reads it: the dotted field, then what is wrong."""
    loc = tuple(problem["loc"])
    # A whole-file check (e.g. default_size against sizes) has no field; its message names them.
    where = ".".join(str(part) for part in loc) + ": " if loc else ""
    kind = problem["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else "none"
        return f"{where}unknown key {loc[-1]!r} (allowed here: {allowed})"
    if kind == "missing":
        return f"{where}required key is missing"
    message = problem["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{where}{message}"
    return f"{where}{message} (got {_show(problem.get('input'))})"


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The schema model a YAML mapping at `path` is checked against, to list its allowed keys."""
    current: Any = Service
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _option(user_options: Mapping[str, Any], key: str, default: str) -> str:
    value = user_options.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise CatalogError(f"option {key!r} must be a name (a string), not {_show(value)}")
    return value


def _show(value: Any, limit: int = 40) -> str:
    """A user-supplied value, quoted and cut short, safe to echo in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
