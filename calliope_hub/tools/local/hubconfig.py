"""The JupyterHub configuration Calliope Hub runs with on this machine.

`calliope-hub up`, the benches and the end-to-end tests all start a real JupyterHub
through `LocalStack` (which fills in where ECS is and the events secret) and `HubProcess`
(which owns ports and the proxy command); they share this one generator for everything
else, so the tests run what a newcomer runs and the bench measures it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class HubSettings:
    """What differs between one local hub and the next."""

    #: where ECS answers ('' until a LocalStack fills it in)
    ecs_endpoint: str = ""
    cluster: str = "calliope"
    hub_id: str = "local"
    #: the shared password of `calliope-hub up`'s login page ('' = no password login)
    user_password: str = ""
    #: the product ('ecs'), or a bench baseline's import path
    spawner_class: str = "ecs"
    poll_interval: float = 30
    #: False keeps tasks running when the hub stops, so a restart re-attaches to them
    cleanup_servers: bool = True
    #: '' = SQLite in the hub's working directory
    db_url: str = ""
    #: events on: the shared secret local ECS (or EventBridge) sends to /hub/api/calliope/ecs-events
    events_secret: str = ""
    #: with events on: 'hub' sweeps at the reconcile cadence, 'off' leaves sweeps to the monitor
    events_sweeps: str = "hub"
    #: extra lines appended verbatim, last word wins
    extra: list[str] = field(default_factory=list)


def render(settings: HubSettings) -> str:
    """The jupyterhub_config.py lines for `settings`."""
    lines = [
        f"c.JupyterHub.spawner_class = {settings.spawner_class!r}",
        f"c.JupyterHub.cleanup_servers = {settings.cleanup_servers!r}",
        f"c.ECSSpawner.endpoint_url = {settings.ecs_endpoint!r}",
        f"c.ECSSpawner.cluster = {settings.cluster!r}",
        f"c.ECSSpawner.hub_id = {settings.hub_id!r}",
        f"c.ECSSpawner.poll_interval = {settings.poll_interval!r}",
        "c.Spawner.default_url = '/lab'",
        "c.Spawner.start_timeout = 180",
        "c.Spawner.http_timeout = 120",
        "c.JupyterHub.authenticator_class = 'shared-password'",
        "c.Authenticator.allow_all = True",
        "import calliope_hub.hub",
        "c.JupyterHub.template_paths = [calliope_hub.hub.TEMPLATES]",
    ]
    if os.geteuid() == 0:
        # Local ECS runs tasks as this user; Jupyter refuses root unless told (images use jovyan).
        lines.append("c.Spawner.args = ['--allow-root']")
    if settings.db_url:
        lines.append(f"c.JupyterHub.db_url = {settings.db_url!r}")
    if settings.user_password:
        lines.append(f"c.SharedPasswordAuthenticator.user_password = {settings.user_password!r}")
    if settings.events_secret:
        from calliope_hub.hub.events_handler import events_config_lines

        lines += events_config_lines(settings.events_secret, sweeps=settings.events_sweeps)
    lines += settings.extra
    return "\n".join(lines) + "\n"
