"""The orphan sweeper inside JupyterHub: configuration, what the hub owns, and re-adoption.

JupyterHub 6 has no startup hook for spawner packages, so the first ECSSpawner a hub
process builds (every spawner loads its state once when JupyterHub creates it, at startup for
running servers, at first use for the rest) starts one sweep loop per (ECS target, cluster,
hub id). A spawner outside a real hub (tests, tools) has no `users` in its settings and
starts nothing.

Re-adoption, precisely. A task is re-adopted only when its tags name a server that the hub
still records as running (it has a server record, so its route and its API token exist),
that is not pending, whose spawner state lost its task ARN, and whose recorded address is
this task's address. Then the ARN (and cluster, service, size) go back into the spawner's
state, which is committed, and the spawner is watched again, so poll() and stop() work on
the task and its stop reaches the hub as a crash would. A task of a server the hub records
as stopped is stopped instead: JupyterHub revoked that server's API token and OAuth client
when it stopped, so the task can no longer serve its user, and resurrecting the server would
mean minting a token the task does not have.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyterhub import orm
from traitlets import Float, Unicode, validate
from traitlets.config import Configurable

from calliope_hub.catalog.run_task import TaskIdentity, read_tags
from calliope_hub.hub.lock import SweepLock, sweep_lock
from calliope_hub.ecs.orphans import ACTIONS, OrphanSweeper, Ownership, ServerKey, sweep_forever
from calliope_hub.ecs.snapshot import task_ip

log = logging.getLogger(__name__)


class OrphanSweep(Configurable):
    """`c.OrphanSweep.*`: how the hub treats tasks with its startedBy that no spawner owns."""

    interval = Float(300.0, help="Seconds between orphan sweeps (one ListTasks per 100 tasks).").tag(config=True)
    grace_period = Float(
        600.0,
        help="Seconds a task must stay unowned before it is stopped or re-adopted; longer than any start.",
    ).tag(config=True)
    action = Unicode(
        "stop", help="'stop' (or re-adopt), 'dry-run' (only log and count), or 'off'."
    ).tag(config=True)

    @validate("action")
    def _validate_action(self, proposal: dict) -> str:
        if proposal["value"] not in ACTIONS:
            raise ValueError(f"OrphanSweep.action must be one of {', '.join(ACTIONS)}, not {proposal['value']!r}")
        return proposal["value"]

    @validate("interval", "grace_period")
    def _validate_seconds(self, proposal: dict) -> float:
        if proposal["value"] < 0 or (proposal["trait"].name == "interval" and proposal["value"] == 0):
            raise ValueError(f"OrphanSweep.{proposal['trait'].name} must be positive, not {proposal['value']!r}")
        return proposal["value"]


class JupyterHubOwners:
    """Ownership read from the hub's database and its live spawners (one hub process)."""

    def __init__(self, users: Any, db: Any, cluster: str):
        self.users = users
        self.db = db
        self.cluster = cluster

    def ownership(self) -> Ownership:
        """Every ARN in any spawner's state, servers starting here, and records that lost their ARN.

        The database part covers ARNs committed by any process; the live spawners cover
        this process's starts, which only it can see.
        """
        found = Ownership()
        rows = self.db.query(orm.User.name, orm.Spawner.name, orm.Spawner.state, orm.Spawner.server_id).join(
            orm.User, orm.Spawner.user_id == orm.User.id
        )
        for user_name, server_name, state, server_id in rows:
            arn = (state or {}).get("task_arn")
            if arn:
                found.arns.add(arn)
            elif server_id is not None:
                found.adoptable.add((user_name, server_name))
        for user in list(self.users.values()):
            for server_name, spawner in list(user.spawners.items()):
                key = (user.name, server_name)
                if getattr(spawner, "task_arn", ""):
                    found.arns.add(spawner.task_arn)
                    found.adoptable.discard(key)
                if spawner.pending or spawner._start_pending:
                    found.starting.add(key)
                    found.adoptable.discard(key)
        return found

    async def adopt(self, key: ServerKey, task: dict[str, Any]) -> bool:
        """Give the task back to its server's spawner when the hub's record points at it."""
        user_name, server_name = key
        try:
            user = self.users[user_name]
        except KeyError:
            return False
        if server_name not in user.orm_spawners:
            return False
        spawner = user.spawners[server_name]
        if (
            not hasattr(spawner, "task_arn")
            or spawner.task_arn
            or spawner.pending
            or spawner._start_pending
            or spawner.server is None
            or task.get("lastStatus") != "RUNNING"
            or task_ip(task) != spawner.server.ip
        ):
            return False
        tags = read_tags(task.get("tags") or ())
        spawner.task_arn = task["taskArn"]
        spawner.cluster = self.cluster
        spawner.choice_service, spawner.choice_size = tags.get("service", ""), tags.get("size", "")
        spawner._persist_state()
        spawner.start_polling()
        return True


#: (ECS target, cluster, hub id) -> the running sweep loop of this process
_loops: dict[tuple[Any, ...], asyncio.Task[None]] = {}


def ensure_started(spawner: Any) -> None:
    """Start this hub process's sweep loop for the spawner's cluster, once; no-op outside a hub."""
    users = (getattr(spawner.user, "settings", None) or {}).get("users")
    if users is None or spawner.orm_spawner is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    key = (spawner.region, spawner.endpoint_url, spawner.aws_profile, spawner.cluster, spawner.hub_id)
    running = _loops.get(key)
    if running is not None and not running.done() and running.get_loop() is loop:
        return
    config = OrphanSweep(config=spawner.config)
    if config.action == "off":
        return
    try:
        lock = sweep_lock(str(spawner.db.get_bind().url.render_as_string(hide_password=False)), spawner.hub_id)
    except ValueError as e:
        log.error("orphan sweeping is off: %s", e)
        return
    owners = JupyterHubOwners(users, spawner.db, spawner.cluster)
    _loops[key] = loop.create_task(_sweep_loop(spawner, owners, lock, config))


async def _sweep_loop(spawner: Any, owners: JupyterHubOwners, lock: SweepLock, config: OrphanSweep) -> None:
    """Config turned into kwargs in this one place; the loop runs until the process ends."""
    sweeper = OrphanSweeper(
        await spawner._api(),
        spawner.cluster,
        hub_id=spawner.hub_id,
        started_by=_started_by(spawner.hub_id),
        owners=owners,
        grace_period=config.grace_period,
        action=config.action,
    )
    log.info(
        "orphan sweeper for %s: every %gs, grace %gs, action %s",
        spawner.cluster, config.interval, config.grace_period, config.action,
    )
    try:
        await sweep_forever(sweeper, config.interval, may_sweep=lock.try_acquire)
    finally:
        await lock.release()


def _started_by(hub_id: str) -> str:
    """The startedBy every task of this hub carries (TaskIdentity owns the encoding)."""
    return TaskIdentity(hub_id=hub_id, user="", server_name="", service="", size="", attempt=0).started_by
