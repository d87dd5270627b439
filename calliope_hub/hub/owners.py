"""What the hub owns, and re-adoption: the orphan sweeper's view into JupyterHub.

The HubRuntime runs the sweep loop (calliope_hub.ecs.orphans) with these owners, only inside
a real hub: a spawner outside one (tests, tools) has no `users` in its settings.

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

from typing import Any

from jupyterhub import orm
from sqlalchemy import and_, bindparam, literal_column, or_
from sqlalchemy.sql.elements import ColumnElement

from calliope_hub.ecs.identity import read_tags
from calliope_hub.ecs.orphans import Ownership, ServerKey
from calliope_hub.ecs.snapshot import task_ip
from calliope_hub.hub.dbindexes import task_arn_sql


class JupyterHubOwners:
    """Ownership read from the hub's database and its live spawners (one hub process).

    Its reads use the indexes the HubRuntime's start ensures (hub/dbindexes.py).
    """

    def __init__(self, users: Any, db: Any, cluster: str):
        self.users = users
        self.db = db
        self.cluster = cluster

    def ownership(self) -> Ownership:
        """Every ARN in any spawner's state, servers starting here, and records that lost their ARN.

        The database part covers ARNs committed by any process; the live spawners cover
        this process's starts, which only it can see.
        """
        return self._read(None)

    def ownership_of(self, arn: str, key: ServerKey) -> Ownership:
        """What the sweep re-reads right before it acts on `arn`: enough to answer for `arn` and `key`.

        Only the database part is narrowed: one query for the rows that hold `arn` or are
        `key`'s server, whose two alternatives can each use an index (hub/dbindexes.py), so a
        sweep that acts on 100 tasks reads a few rows each, not the table 100 times. The live
        spawners are read as in `ownership()`: every user this process holds is walked on each
        call, which costs no query, and the answer holds their ARNs and starts too.
        """
        return self._read((arn, key))

    def _read(self, only: tuple[str, ServerKey] | None) -> Ownership:
        found = Ownership()
        for user_name, server_name, arn, server_id in spawner_rows(self.db, only):
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


def spawner_rows(db: Any, only: tuple[str, ServerKey] | None = None) -> Any:
    """(user name, server name, task ARN, server id) of every spawner, or only of those holding
    `only`'s ARN or being its server. The database reads the ARN out of the JSON state, with
    the very expression `ix_spawners_calliope_task_arn` indexes: no row's state is parsed here.
    """
    task_arn: ColumnElement[str] = literal_column(task_arn_sql(db.get_bind().dialect.name))
    rows = db.query(orm.User.name, orm.Spawner.name, task_arn, orm.Spawner.server_id).join(
        orm.User, orm.Spawner.user_id == orm.User.id
    )
    if only is None:
        return rows
    arn, (user_name, server_name) = only
    # Both alternatives on `spawners` alone (the user by a subquery), so each can use its index.
    user_id = db.query(orm.User.id).filter(orm.User.name == user_name).scalar_subquery()
    server = and_(orm.Spawner.user_id == user_id, orm.Spawner.name == server_name)
    return rows.filter(or_(task_arn == bindparam("task_arn", arn), server))
