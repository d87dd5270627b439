"""What a restart's check of its running servers costs in SQL, on JupyterHub's own ORM and query.

JupyterHub 6.1.1's `init_spawners` loop (its query and the two reads it makes of each row) costs
statements per server, because the users its `selectinload` fetched are gone from the weakly
held identity map when the loop reads them. `running_users` (what CalliopeHub holds through that
loop) makes the same loop cost a constant number of statements. Counted, never timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub import orm
from sqlalchemy import event
from sqlalchemy.orm import Session, selectinload

from calliope_hub.hub.app import recorded_tasks, running_users

SERVERS = 200


@pytest.fixture
def hub_db(tmp_path: Path) -> Iterator[str]:
    """A hub database with SERVERS running servers (every other one an ECS task) and some stopped users."""
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    db = orm.new_session_factory(url)()
    for i in range(SERVERS + 20):
        user = orm.User(name=f"user{i}")
        spawner = orm.Spawner(name="", user=user)
        db.add_all([user, spawner])
        if i < SERVERS:
            spawner.server = orm.Server(ip="10.0.0.1", port=8888)
            if i % 2 == 0:
                spawner.state = {"task_arn": f"arn:aws:ecs:us-east-1:1:task/calliope/{i}", "cluster": "calliope"}
    db.commit()
    db.close()
    yield url


def statements_of_jupyterhubs_loop(db: Session) -> int:
    """JupyterHub 6.1.1's init_spawners query and its reads of each row (app.py 3148-3167), counted."""
    counted: list[str] = []
    event.listen(db.get_bind(), "before_cursor_execute", lambda *args: counted.append(args[2]))
    for orm_spawner in (
        db.query(orm.Spawner)
        .filter(orm.Spawner.server != None)  # noqa: E711  (JupyterHub's own filter)
        .options(selectinload(orm.Spawner.user), selectinload(orm.Spawner.user, orm.User._orm_spawners))
        .populate_existing()
    ):
        assert orm_spawner.name in orm_spawner.user.orm_spawners
    return len(counted)


def test_jupyterhubs_check_costs_statements_per_server_unless_the_users_are_held(hub_db: str) -> None:
    stock = statements_of_jupyterhubs_loop(orm.new_session_factory(hub_db)())
    db = orm.new_session_factory(hub_db)()
    held = running_users(db)
    with_held = statements_of_jupyterhubs_loop(db)
    assert len(held) == SERVERS
    assert stock >= 2 * SERVERS, f"JupyterHub's loop no longer reloads per server ({stock} statements)"
    assert with_held <= 10, f"{with_held} statements with the users held"


def test_recorded_tasks_are_the_running_ecs_tasks_of_the_cluster(hub_db: str) -> None:
    db = orm.new_session_factory(hub_db)()
    users = running_users(db)
    assert recorded_tasks(users, "calliope") == {
        f"arn:aws:ecs:us-east-1:1:task/calliope/{i}" for i in range(0, SERVERS, 2)
    }
    assert recorded_tasks(users, "other-cluster") == set()
