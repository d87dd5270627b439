"""The service catalog: which servers users may start, and the ECS requests that start them.

Public surface; the submodules are implementation detail.
"""

from ..ecs.identity import TaskIdentity, decode_tag_value, encode_tag_value, read_tags
from .catalog import BUILTIN_DIRECTORY, OPTION_ALIASES, OPTION_KEYS, Catalog, Choice, load_catalog
from .loading import load_service
from .models import FARGATE_MEMORY, CatalogConfigError, CatalogError, HealthCheck, LocalRun, Service, Size
from .run_task import Placement, run_task_request

__all__ = [
    "BUILTIN_DIRECTORY",
    "FARGATE_MEMORY",
    "OPTION_ALIASES",
    "OPTION_KEYS",
    "Catalog",
    "CatalogConfigError",
    "CatalogError",
    "Choice",
    "HealthCheck",
    "LocalRun",
    "Placement",
    "Service",
    "Size",
    "TaskIdentity",
    "decode_tag_value",
    "encode_tag_value",
    "load_catalog",
    "load_service",
    "read_tags",
    "run_task_request",
]
