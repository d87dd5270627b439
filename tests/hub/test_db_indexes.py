"""The hub database's indexes on real PostgreSQL (127.0.0.1:5432) and SQLite, at 10,000 servers.

A database of the module's own gets JupyterHub's real schema (its ORM) and 10,000 users, each
with a running spawner whose state holds a task ARN. What is proven: before `ensure_indexes`
the two queries read every spawners row (a sequential scan), after it each uses its index;
the step is idempotent; and `JupyterHubOwners.ownership_of`, the sweep's re-read before it
acts, runs the indexed query and agrees with the full `ownership()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from sqlalchemy import event, text
from sqlalchemy.orm import Session, selectinload

from calliope_hub.hub.dbindexes import INDEXES, ensure_indexes, ensure_on_session
from calliope_hub.hub.dbindexes import main as dbindexes_main
from calliope_hub.hub.owners import JupyterHubOwners, spawner_rows

ROWS = 10_000
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ARN = "arn:aws:ecs:us-east-1:000000000000:task/calliope/{:032x}"


def _require_postgres() -> None:
    import psycopg2

    try:
        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL at 127.0.0.1:5432: {e}")
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")


def _insert(cursor: Any, mark: str, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """Rows 1,000 to a statement: one round trip per thousand, where executemany makes one per row."""
    width = len(rows[0])
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        values = ", ".join(["(" + ", ".join([mark] * width) + ")"] * len(chunk))
        cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", [v for row in chunk for v in row])


def _fill(db: Session) -> None:
    """ROWS users named u00000..., each with a running default server; the last 10 lost their ARN.

    Through the DB-API cursor: SQLAlchemy 2.1.9's executemany crashed the interpreter (SIGSEGV)
    filling SQLite after the PostgreSQL test had run in the same process.
    """
    states = [{"task_arn": ARN.format(i), "cluster": "calliope"} for i in range(ROWS - 10)] + [{}] * 10
    mark = "%s" if db.get_bind().dialect.name == "postgresql" else "?"
    cursor = db.connection().connection.cursor()
    users = [(f"u{i:05d}", False, uuid.uuid4().hex) for i in range(ROWS)]
    _insert(cursor, mark, "users", "name, admin, cookie_id", users)
    _insert(cursor, mark, "servers", "ip, port", [("10.0.0.1", 8888)] * ROWS)
    spawners = [(i + 1, i + 1, "", json.dumps(state)) for i, state in enumerate(states)]
    _insert(cursor, mark, "spawners", "user_id, server_id, name, state", spawners)
    cursor.close()
    db.commit()


@contextlib.contextmanager
def _session(url: str) -> Iterator[Session]:
    """A session on JupyterHub's schema (made if missing); its engine disposed after."""
    db = orm.new_session_factory(url)()
    try:
        yield db
    finally:
        engine = db.get_bind()
        db.close()
        engine.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    from calliope_hub.tools.local.ha import drop_database, ensure_database

    _require_postgres()
    url = f"{PG_SERVER}/calliope_idx_{uuid.uuid4().hex[:10]}"
    ensure_database(url)
    try:
        with _session(url) as db:
            _fill(db)
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('idx') / 'jupyterhub.sqlite'}"
    with _session(url) as db:
        _fill(db)
    return url


class _NoLiveUsers:
    """The hub's users dict with no spawner loaded in this process: ownership comes from the database."""

    def values(self) -> list[Any]:
        return []


def _statements(db: Session, action: Any) -> list[tuple[str, Any]]:
    """The SQL statements (with parameters) `action()` sends through `db`."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM spawners" in statement:
            seen.append((statement, parameters))

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def _pg_plan(db: Session, statement: str, parameters: Any) -> str:
    """EXPLAIN ANALYZE of the statement exactly as SQLAlchemy sent it to psycopg2."""
    with db.connection().connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        return "\n".join(row[0] for row in cursor.fetchall())


def _init_spawners_load(db: Session) -> None:
    """JupyterHub 6.1.1 init_spawners' query: running spawners with their users' spawners (selectinload)."""
    db.expunge_all()
    query = (
        db.query(orm.Spawner)
        .filter(orm.Spawner.server != None)  # noqa: E711 (SQLAlchemy's IS NOT NULL)
        .options(
            selectinload(orm.Spawner.user),
            selectinload(orm.Spawner.user, orm.User._orm_spawners),
        )
    )
    query.all()


def test_postgres_plans_before_and_after(pg_url: str, tmp_path: Path) -> None:
    """The plans of the sweep's re-read (spawner_rows narrowed to one task, as ownership_of runs it)
    and of init_spawners' batch load, before and after the indexes."""
    with _session(pg_url) as db:
        only = (ARN.format(4242), ("u04242", ""))

        def plans() -> dict[str, str]:
            (lookup,) = _statements(db, lambda: spawner_rows(db, only).all())
            selects = _statements(db, lambda: _init_spawners_load(db))
            user_batch = next(s for s in selects if "spawners.user_id IN" in s[0])
            db.execute(text("ANALYZE"))
            return {"ownership_of": _pg_plan(db, *lookup), "init_spawners": _pg_plan(db, *user_batch)}

        for name in INDEXES:  # whatever ran first in this module, start from JupyterHub's own schema
            db.execute(text(f"DROP INDEX IF EXISTS {name}"))
        db.commit()
        before = plans()
        assert "Seq Scan on spawners" in before["ownership_of"], before["ownership_of"]
        assert "Seq Scan on spawners" in before["init_spawners"], before["init_spawners"]

        db.commit()  # ANALYZE's lock ends with its transaction
        for _ in range(2):  # idempotent: a second start changes nothing
            assert ensure_indexes(db.connection()) == list(INDEXES)
            db.commit()
        after = plans()
        assert "ix_spawners_calliope_task_arn" in after["ownership_of"], after["ownership_of"]
        assert "ix_spawners_user_id" in after["init_spawners"], after["init_spawners"]
        count = db.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'ix_spawners_%'")).scalar()
        assert count == len(INDEXES)
        out = os.environ.get("CALLIOPE_PLANS_OUT")  # docs/benchmarks/db-indexes.json is written this way
        if out:
            Path(out).write_text(json.dumps({"rows": ROWS, "before": before, "after": after}, indent=2) + "\n")


def test_ownership_of_agrees_with_the_full_read(pg_url: str, sqlite_url: str) -> None:
    for url in (pg_url, sqlite_url):
        with _session(url) as db:
            ensure_on_session(db)  # as the hub's start does
            owners = JupyterHubOwners(_NoLiveUsers(), db, "calliope")
            full = owners.ownership()
            assert len(full.arns) == ROWS - 10 and len(full.adoptable) == 10
            owned = owners.ownership_of(ARN.format(7), ("u00007", ""))
            assert owned.arns == {ARN.format(7)} and not owned.adoptable
            lost = owners.ownership_of(ARN.format(ROWS + 1), (f"u{ROWS - 1:05d}", ""))
            assert not lost.arns and lost.adoptable == {(f"u{ROWS - 1:05d}", "")} <= full.adoptable
            stranger = owners.ownership_of(ARN.format(ROWS + 1), ("nobody", ""))
            assert not stranger.claims(ARN.format(ROWS + 1), ("nobody", "")) and not stranger.adoptable


def test_sqlite_uses_the_indexes(sqlite_url: str) -> None:
    with _session(sqlite_url) as db:
        ensure_on_session(db)  # as the hub's start does
        (lookup, parameters) = _statements(db, lambda: spawner_rows(db, (ARN.format(1), ("u00001", ""))).all())[0]
        with db.get_bind().connect() as connection:
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + lookup, parameters)
            plan = " ".join(str(row[-1]) for row in rows)
        assert "ix_spawners_calliope_task_arn" in plan, plan
        names = {row[0] for row in db.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
        assert set(INDEXES) <= names


def test_the_manual_step_is_the_same_step(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert dbindexes_main([sqlite_url]) == 0
    assert capsys.readouterr().out.strip() == f"sqlite: {', '.join(INDEXES)}"
