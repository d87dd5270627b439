"""CalliopeHub's activity poll and posts: JupyterHub's writes, without a query per route or per post.

Both run on JupyterHub's own ORM over the same database and the same routes (what
configurable-http-proxy's GET /api/routes answers), and the rows they leave are compared; the
statements are counted, never timed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub import apihandlers, orm
from jupyterhub.apihandlers.users import ActivityAPIHandler
from jupyterhub.app import JupyterHub
from sqlalchemy import event
from sqlalchemy.orm import Session

from calliope_hub.hub import activity
from calliope_hub.hub.app import running_users

SERVERS = 200
T0 = datetime(2026, 12, 3, 12, 0, 0)


def _route(user: str, server: str, last_activity: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"user": user, "server_name": server}
    if last_activity is not None:
        data["last_activity"] = last_activity
    return {"routespec": f"/user/{user}/{server}", "target": "http://10.0.0.1:8888", "data": data}


@pytest.fixture
def hub_db(tmp_path: Path) -> Iterator[str]:
    """SERVERS users with a running server each; every third has no activity yet, the rest T0."""
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    db = orm.new_session_factory(url)()
    for i in range(SERVERS):
        user = orm.User(name=f"user{i}", last_activity=None if i % 3 == 0 else T0)
        spawner = orm.Spawner(name="", user=user, last_activity=None if i % 3 == 0 else T0)
        spawner.server = orm.Server(ip="10.0.0.1", port=8888)
        db.add_all([user, spawner])
    db.commit()
    db.close()
    yield url


def _routes() -> dict[str, dict[str, Any]]:
    """Half the servers had traffic after T0, half before; plus every case JupyterHub skips."""
    routes = {}
    for i in range(SERVERS):
        moment = T0 + timedelta(minutes=5 if i % 2 else -5)
        routes[f"/user/user{i}/"] = _route(f"user{i}", "", moment.isoformat() + ".250Z")
    routes["/user/ghost/"] = _route("ghost", "", "2026-12-03T12:00:00Z")  # no such user
    routes["/user/user1/gpu"] = _route("user1", "gpu", "2026-12-03T13:00:00Z")  # no such server
    routes["/user/user2/"] = _route("user2", "", None)  # a proxy that keeps no activity
    routes["/hub/"] = {"routespec": "/hub/", "target": "http://127.0.0.1:8081", "data": {"hub": True}}
    return routes


class _Routes:
    """What the hub's proxy answers in this test: the routes above, and no route to repair."""

    def __init__(self, routes: dict[str, dict[str, Any]]) -> None:
        self.routes = routes
        self.checked: list[dict[str, Any]] = []

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return self.routes

    async def check_routes(self, users: Any, services: Any, routes: dict[str, Any]) -> None:
        self.checked.append(routes)


def _app(db: Session, users: dict[int, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        db=db,
        proxy=_Routes(_routes()),
        users=users,
        _service_map={},
        log=logging.getLogger("test"),
        active_user_window=1800,
    )


def _held(db: Session) -> dict[int, Any]:
    """JupyterHub's `users` dict after init_spawners: a wrapper holding each running user's row and spawners."""
    return {user.id: SimpleNamespace(orm_user=user) for user in running_users(db)}


def _activity(url: str) -> dict[str, tuple[datetime | None, datetime | None]]:
    db = orm.new_session_factory(url)()
    try:
        return {user.name: (user.last_activity, user.orm_spawners[""].last_activity) for user in db.query(orm.User)}
    finally:
        db.close()


def _statements(db: Session) -> list[str]:
    counted: list[str] = []
    event.listen(db.get_bind(), "before_cursor_execute", lambda *args: counted.append(args[2]))
    return counted


def _user_lookups(statements: list[str]) -> list[str]:
    """The statements that look users up by name (User.find, or ours by chunk)."""
    return [s for s in statements if s.lstrip().startswith("SELECT users.") and "users.name" in s.split("WHERE")[-1]]


async def test_writes_what_jupyterhub_writes(tmp_path: Path, hub_db: str) -> None:
    stock_url = f"sqlite:///{tmp_path / 'stock.sqlite'}"
    Path(stock_url.removeprefix("sqlite:///")).write_bytes(Path(hub_db.removeprefix("sqlite:///")).read_bytes())
    stock_db = orm.new_session_factory(stock_url)()
    await JupyterHub.update_last_activity(_app(stock_db, {}))  # type: ignore[arg-type]
    ours_db = orm.new_session_factory(hub_db)()
    app = _app(ours_db, _held(ours_db))
    await activity.update_last_activity(app)
    expected = _activity(stock_url)
    assert _activity(hub_db) == expected
    # Moved forward where the route was newer, never back, set where there was none.
    assert expected["user1"] == (T0 + timedelta(minutes=5, milliseconds=250),) * 2
    assert expected["user4"] == (T0, T0)
    assert expected["user3"] == (T0 + timedelta(minutes=5, milliseconds=250),) * 2
    assert expected["user6"] == (T0 - timedelta(minutes=5) + timedelta(milliseconds=250),) * 2
    assert expected["user2"] == (T0, T0)
    assert app.proxy.checked == [app.proxy.routes]


async def test_no_query_per_route_for_users_in_memory(hub_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activity, "CHUNK", 1)  # so any user looked up costs a statement of its own
    stock_db = orm.new_session_factory(hub_db)()
    stock = _statements(stock_db)
    await JupyterHub.update_last_activity(_app(stock_db, {}))  # type: ignore[arg-type]
    ours_db = orm.new_session_factory(hub_db)()
    app = _app(ours_db, _held(ours_db))
    ours = _statements(ours_db)
    await activity.update_last_activity(app)
    stock_lookups, our_lookups = _user_lookups(stock), _user_lookups(ours)
    assert len(stock_lookups) >= SERVERS, "JupyterHub no longer looks each route's user up"
    assert len(our_lookups) == 1, our_lookups  # the ghost's, and nothing per server
    # What the commit then loads for each row it updates is JupyterHub's ORM, the same in both.
    assert len(ours) - len(our_lookups) <= len(stock) - len(stock_lookups)


async def test_users_not_in_memory_are_looked_up_in_chunks(hub_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activity, "CHUNK", 64)
    db = orm.new_session_factory(hub_db)()
    counted = _statements(db)
    found = activity.users_by_name(db, [], [f"user{i}" for i in range(SERVERS)] + ["ghost"])
    assert sorted(found) == sorted(f"user{i}" for i in range(SERVERS))
    # A connection check, then per chunk (ceil(201 / 64) = 4) the users and JupyterHub's selectin
    # loads of their spawners, roles, shares and groups: by chunk, not by user.
    assert len(counted) == 1 + 4 * 5, counted


def test_times_are_naive_utc_whatever_the_zone() -> None:
    assert activity._naive_utc("2026-12-03T12:00:00.5Z") == datetime(2026, 12, 3, 12, 0, 0, 500000)
    assert activity._naive_utc("2026-12-03T13:00:00+01:00") == datetime(2026, 12, 3, 12, 0, 0)
    assert activity._naive_utc("Thu, 03 Dec 2026 12:00:00 GMT") == datetime(2026, 12, 3, 12, 0, 0)


def test_a_post_finds_its_user_in_memory_only_while_jupyterhub_holds_it() -> None:
    index = activity.UsersByName()
    ada = SimpleNamespace(id=1, name="ada")
    users: dict[int, Any] = {1: ada}
    assert index.find(users, "ada") is ada  # the first post: the index is filled from JupyterHub's users
    bob = users[2] = SimpleNamespace(id=2, name="bob")  # loaded by JupyterHub later
    assert index.find(users, "bob") is None  # JupyterHub's lookup, then remembered
    index.remember(bob)
    assert index.find(users, "bob") is bob
    ada.name = "ada2"  # renamed through the admin API
    assert index.find(users, "ada") is None
    index.remember(ada)
    del users[1]  # deleted: JupyterHub dropped its wrapper
    assert index.find(users, "ada2") is None
    users[1] = SimpleNamespace(id=1, name="ada2")  # a new wrapper for the same row
    assert index.find(users, "ada2") is None


def test_only_jupyterhubs_activity_route_gets_the_handler() -> None:
    stock = list(apihandlers.default_handlers)
    index = activity.UsersByName()
    ours = activity.with_activity_handler(stock, index)
    changed = [(a, b) for a, b in zip(stock, ours, strict=True) if a is not b]
    assert [(a[0], a[1], b[1], b[2]) for a, b in changed] == [
        (r"/api/users/([^/]+)/activity", ActivityAPIHandler, activity.ActivityHandler, {"users_by_name": index})
    ]
