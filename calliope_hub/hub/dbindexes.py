"""The indexes our queries need in JupyterHub's database, created idempotently at hub start.

JupyterHub's schema indexes users by name but not spawners by user, and it keeps a spawner's
state as JSON text. Two of the queries a hub with many servers makes then read every
`spawners` row (plans at 10,000 rows, before and after: docs/benchmarks/db-indexes.md):

- JupyterHub's `init_spawners` loads each user's spawners 500 users at a time
  (`WHERE spawners.user_id IN (...)`): without `ix_spawners_user_id`, one sequential scan per
  batch;
- the orphan sweep, right before it stops a task, asks whether any spawner's state holds the
  task's ARN (`JupyterHubOwners.ownership_of`): without `ix_spawners_calliope_task_arn`, an
  expression index on the ARN inside the JSON, one sequential scan per task it acts on.

`ensure_indexes` is `CREATE INDEX IF NOT EXISTS`, so running it at every hub start, from
several hubs, or by hand (`python -m calliope_hub.hub.dbindexes <db-url>`) is harmless. The
HubRuntime's start runs it (`ensure_on_session`), whatever the orphan sweep is set to: our app
starts the runtime before JupyterHub's `init_spawners`, whose batch load is one of the two
queries. It runs on the caller's connection (the hub's own session, so it never waits on the
hub's own open transaction), and on PostgreSQL it gives up after LOCK_TIMEOUT rather than queue behind
another process's long transaction with the hub's event loop blocked. JupyterHub's own
migrations name their objects and never these, and a SQLite migration that rebuilds the
table drops them only until the next start. MySQL has no `IF NOT EXISTS` for indexes; there
the queries run unindexed, as they do today.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

#: The task ARN inside a spawner's JSON state, per SQL dialect: the ARN lookup and the
#: expression index are the same text, or PostgreSQL and SQLite will not use the index.
TASK_ARN_SQL = {
    "postgresql": "((spawners.state::json) ->> 'task_arn')",
    "sqlite": "json_extract(spawners.state, '$.task_arn')",
    "mysql": "json_unquote(json_extract(spawners.state, '$.task_arn'))",
}
#: How long index creation may wait for a lock on `spawners` (PostgreSQL) before giving up.
LOCK_TIMEOUT = "2s"
#: name -> what it indexes (on `spawners`), for the dialects that can create one idempotently
INDEXES = {
    "ix_spawners_user_id": {"postgresql": "(user_id)", "sqlite": "(user_id)"},
    "ix_spawners_calliope_task_arn": {
        # Index expressions name no table: the same expression as TASK_ARN_SQL, unqualified.
        dialect: f"({TASK_ARN_SQL[dialect].replace('spawners.', '')})"
        for dialect in ("postgresql", "sqlite")
    },
}


def task_arn_sql(dialect: str) -> str:
    """The SQL for a spawner's task ARN on `dialect`; JupyterHub runs only on these three."""
    try:
        return TASK_ARN_SQL[dialect]
    except KeyError:
        raise ValueError(f"no JSON path for database dialect {dialect!r} ({', '.join(TASK_ARN_SQL)})") from None


def ensure_indexes(connection: Connection) -> list[str]:
    """Create the indexes the connection's dialect supports if missing, inside the caller's
    transaction (the caller commits); the names now in place."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    ensured = []
    for name, columns in INDEXES.items():
        if dialect in columns:
            connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON spawners {columns[dialect]}"))
            ensured.append(name)
    return ensured


def ensure_on_session(db: Any) -> None:
    """`ensure_indexes` on the hub's own session, after committing what it had pending (as
    JupyterHub does between steps), so the index never waits on this hub's own transaction. A
    failure is logged and the hub starts without them: its queries are only slower."""
    db.commit()
    try:
        ensure_indexes(db.connection())
        db.commit()
    except SQLAlchemyError as error:  # no CREATE privilege, or another process holds spawners: next start
        db.rollback()
        log.warning("hub database indexes not ensured (%s); python -m calliope_hub.hub.dbindexes does it", error)


def main(argv: list[str] | None = None) -> int:
    """`python -m calliope_hub.hub.dbindexes <db-url>`: the same step by hand, ahead of a hub start."""
    parser = argparse.ArgumentParser(prog="python -m calliope_hub.hub.dbindexes", description=main.__doc__)
    parser.add_argument("db_url", help="the hub's c.JupyterHub.db_url")
    args = parser.parse_args(argv)
    engine = create_engine(args.db_url)
    try:
        with engine.begin() as connection:
            names = ensure_indexes(connection)
    finally:
        engine.dispose()
    print(f"{engine.dialect.name}: {', '.join(names) or 'no index this dialect can create idempotently'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
