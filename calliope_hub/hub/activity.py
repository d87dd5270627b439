"""JupyterHub's activity poll, with no database round trip per server.

Every `last_activity_interval` (300 s) JupyterHub 6.1.1's `update_last_activity` fetches every
route from the proxy and, for each, runs `User.find`: one synchronous SELECT per running server,
on the event loop. At 1,000 servers that blocked the loop 9.7-16 s per interval
(docs/benchmarks/activity.md), growing with N; at 10,000 the hub answers nobody for minutes at a
time. The users it looks up are, in a running hub, already in memory: JupyterHub's own `users`
dict holds a wrapper, and through it the ORM row and its spawners, for every user it has loaded,
which includes every running server's. So the same updates are made from those rows, and only a
route whose user is not in memory costs a query (one per CHUNK such users). What is written is
what JupyterHub writes: each user's and spawner's `last_activity` moves forward to the route's,
never back; then one commit, then JupyterHub's own `check_routes` with the routes already fetched.

The posts. Each server posts its activity every JUPYTERHUB_ACTIVITY_INTERVAL (300 s: 33 posts a
second at 10,000 servers), and JupyterHub's ActivityAPIHandler spends most of each post on two
synchronous round trips: `User.find` (58 % of the handler's samples at 1,000 servers) and its
commit (38 %). `ActivityHandler` is that handler with the user found in memory, by name in an
index of JupyterHub's own wrappers (filled from its `users` at the first post), checked against
JupyterHub's `users` on every use;
the checks, the values written, the commit and the answers are JupyterHub's. (The commit stays
per post: JupyterHub's every handler rolls back a session left dirty when it finishes, so a
commit shared between posts would be undone by the next request.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dateutil.parser import parse as parse_date
from jupyterhub import orm
from jupyterhub.apihandlers.users import ActivityAPIHandler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

log = logging.getLogger(__name__)

#: users looked up per query when a route's user is not in memory
CHUNK = 500


def route_activity(routes: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], datetime]:
    """(user, server name) -> the route's last activity as naive UTC, for user routes that carry one."""
    found: dict[tuple[str, str], datetime] = {}
    for route in routes.values():
        data = route["data"]
        if "user" not in data or "server_name" not in data or "last_activity" not in data:
            continue  # not a user's server, or a proxy that keeps no activity (JupyterHub skips both)
        found[(data["user"], data["server_name"])] = _naive_utc(data["last_activity"])
    return found


def _naive_utc(stamp: str) -> datetime:
    """As JupyterHub stores times. CHP writes ISO 8601 with a Z: fromisoformat reads it in 0.4 us, dateutil in 52."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        moment = parse_date(stamp)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def users_by_name(db: Session, in_memory: Iterable[orm.User], names: Iterable[str]) -> dict[str, orm.User]:
    """The ORM rows of `names`: from `in_memory` where there, else CHUNK to a query with their spawners."""
    users = {user.name: user for user in in_memory}
    missing = sorted(set(names) - users.keys())
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start : start + CHUNK]
        query = db.query(orm.User).filter(orm.User.name.in_(chunk)).options(selectinload(orm.User._orm_spawners))
        users.update((user.name, user) for user in query)
    return users


def apply_activity(users: Mapping[str, orm.User], activity: Mapping[tuple[str, str], datetime]) -> int:
    """Move each user's and server's last_activity forward to its route's; returns the servers found."""
    applied = 0
    for (name, server_name), moment in activity.items():
        user = users.get(name)
        if user is None:
            log.warning("Found no user for the route of %s", name)
            continue
        spawner = user.orm_spawners.get(server_name)
        if spawner is None:
            log.warning("Found no server %r of %s for its route", server_name, name)
            continue
        user.last_activity = max(user.last_activity, moment) if user.last_activity else moment
        spawner.last_activity = max(spawner.last_activity, moment) if spawner.last_activity else moment
        applied += 1
    return applied


async def update_last_activity(app: Any) -> None:
    """JupyterHub.update_last_activity for `app` (a JupyterHub), without its query per route."""
    routes = await app.proxy.get_all_routes()
    activity = route_activity(routes)
    in_memory = (user.orm_user for user in app.users.values())
    users = users_by_name(app.db, in_memory, (name for name, _ in activity))
    apply_activity(users, activity)
    try:
        app.db.commit()
    except SQLAlchemyError:
        app.log.exception("Rolling back session due to database error")
        app.db.rollback()
        return
    await app.proxy.check_routes(app.users, app._service_map, routes)


class UsersByName:
    """JupyterHub's user wrappers by name: one index for all activity posts.

    Filled from JupyterHub's `users` at the first post (every running server's user is there once
    init_spawners ran), so even a user's first post after a restart needs no query; users JupyterHub
    loads later join it through `remember` after their one lookup.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, Any] = {}
        self._filled = False

    def find(self, users: Mapping[int, Any], name: str) -> Any | None:
        """JupyterHub's wrapper of `name` if it is still the one JupyterHub holds (not deleted or renamed)."""
        if not self._filled:
            self._filled = True
            self._by_name.update((user.name, user) for user in users.values())
        user = self._by_name.get(name)
        if user is not None and user.name == name and users.get(user.id) is user:
            return user
        self._by_name.pop(name, None)
        return None

    def remember(self, user: Any) -> None:
        self._by_name[user.name] = user


class ActivityHandler(ActivityAPIHandler):
    """POST /hub/api/users/:name/activity: JupyterHub's handler, its user found in memory."""

    def initialize(self, users_by_name: UsersByName) -> None:
        self.by_name = users_by_name

    def find_user(self, name: str) -> Any | None:
        user = self.by_name.find(self.users, name)
        if user is None:
            user = super().find_user(name)
            if user is not None:
                self.by_name.remember(user)
        return user


def with_activity_handler(handlers: list[tuple[Any, ...]], users_by_name: UsersByName) -> list[tuple[Any, ...]]:
    """JupyterHub's handlers with ActivityHandler in place of its ActivityAPIHandler, same route."""
    return [
        (route[0], ActivityHandler, {"users_by_name": users_by_name}) if route[1] is ActivityAPIHandler else route
        for route in handlers
    ]
