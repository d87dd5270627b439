"""The service catalog: the only place a user's choice turns into an image, a command and a size.

Users pick a service and a size by name and nothing else. Everything
ECS runs comes from YAML files the operator controls, validated when the hub starts so a bad
file stops the hub with one clear message instead of failing every spawn later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .form import options_from_form, render_options_form
from .loading import load_service
from .loading import show as _show
from .models import CatalogConfigError, CatalogError, Service, Size

BUILTIN_DIRECTORY = Path(__file__).resolve().parent.parent / "services"
#: The only keys of user_options; anything else (image, command, cpu, ...) is refused.
OPTION_KEYS = ("service", "size")
#: The names the original Calliope deployments and their scripts send (the seeds' load test
#: posts {"instance_type": "lab", "instance_size": "medium"}): accepted, judged like the keys above.
OPTION_ALIASES = {"instance_type": "service", "instance_size": "size"}


@dataclass(frozen=True)
class Choice:
    """A user's validated pick: a service and one of the sizes it offers."""

    service: Service
    size_name: str
    size: Size


def load_catalog(directory: str | Path | None = None, default_service: str | None = None) -> Catalog:
    """The catalog the hub serves, checked in full: call it once at hub start.

    `directory` '' or None means the built-in services. Every problem raises one
    CatalogConfigError whose message names the file, the line and the field, so the hub can
    stop with that message before any user meets the catalog.
    """
    return Catalog.load(Path(directory) if directory else None, default_service)


class Catalog:
    """The services users may start, each with its sizes; immutable once loaded."""

    def __init__(self, services: Mapping[str, Service], default_service: str) -> None:
        if not services:
            raise CatalogConfigError("the catalog has no services")
        if default_service not in services:
            raise CatalogConfigError(
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
            raise CatalogConfigError(f"catalog directory {directory} does not exist")
        paths = sorted(directory.glob("*.yaml"))
        if not paths:
            raise CatalogConfigError(f"catalog directory {directory} has no <service>.yaml files")
        services = {service.name: service for service in map(load_service, paths)}
        if default_service is None:
            default_service = "lab" if "lab" in services else next(iter(services))
        # The default first: the spawn form lists services in this order.
        ordered = sorted(services.values(), key=lambda service: service.name != default_service)
        return cls({service.name: service for service in ordered}, default_service)

    def choose(self, user_options: Mapping[str, Any]) -> Choice:
        """Turn user_options into a Choice, or say exactly what is wrong with them."""
        options = _canonical_options(user_options)
        service_name = _option(options, "service", self.default_service)
        service = self.services.get(service_name)
        if service is None:
            raise CatalogError(f"unknown service {_show(service_name)}; choose one of: {', '.join(self.services)}")
        size_name = _option(options, "size", service.default_size)
        size = service.sizes.get(size_name)
        if size is None:
            offered = ", ".join(service.sizes)
            if any(size_name in other.sizes for other in self.services.values()):
                raise CatalogError(f"service {service.name!r} does not offer size {size_name!r}; it offers: {offered}")
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
            raise CatalogConfigError(f"unknown service {_show(service)}; known: {', '.join(self.services)}")
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


def _option(user_options: Mapping[str, Any], key: str, default: str) -> str:
    value = user_options.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise CatalogError(f"option {key!r} must be a name (a string), not {_show(value)}")
    return value


def _canonical_options(user_options: Mapping[str, Any]) -> dict[str, Any]:
    """user_options under their canonical keys: aliases folded in, anything unknown refused.

    An alias and its key may both be sent when they agree; a None value counts as not sent.
    """
    if not isinstance(user_options, Mapping):
        raise CatalogError("user_options must be an object with the keys 'service' and 'size'")
    unknown = [key for key in user_options if key not in OPTION_KEYS and key not in OPTION_ALIASES]
    if unknown:
        names = ", ".join(_show(key) for key in unknown)
        noun = "option" if len(unknown) == 1 else "options"
        raise CatalogError(
            f"{noun} {names} cannot be set: only 'service' and 'size' can be chosen "
            "(also sent as 'instance_type' and 'instance_size'), and only from the catalog"
        )
    options = {key: user_options.get(key) for key in OPTION_KEYS}
    for alias, key in OPTION_ALIASES.items():
        value = user_options.get(alias)
        if value is None:
            continue
        if options[key] is not None and options[key] != value:
            raise CatalogError(
                f"options {key!r} and {alias!r} name the same choice but differ "
                f"({_show(options[key])} and {_show(value)}); send one of them"
            )
        options[key] = value
    return options
