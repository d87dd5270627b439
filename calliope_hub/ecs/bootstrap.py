"""Make a cluster ready for the catalog: the cluster exists and every service's task
definition is registered. `calliope-hub up`, the bench and the tests share this step."""

from __future__ import annotations

from ..catalog import Catalog
from .api import EcsApi


async def prepare_cluster(api: EcsApi, catalog: Catalog, cluster: str, *, local: bool) -> None:
    """Idempotent: registering a definition again only adds a revision."""
    await api.ensure_cluster(cluster)
    for name in catalog.services:
        await api.register_task_definition(catalog.task_definition(name, local=local))
