"""Which hub process may sweep orphans: a PostgreSQL advisory lock, or nothing on SQLite.

Two hubs on one database (a rolling deploy, an active/standby pair) must not both stop
tasks, or each could act on a view of ownership the other has already changed. A
session-level `pg_try_advisory_lock` on a dedicated connection is held for as long as that
connection lives, so a hub that dies (or loses its connection) frees it without any
timeout bookkeeping of ours, and the next hub to ask takes over. SQLite is one file on one
machine that JupyterHub opens from one process, so there the hub is alone by construction.

The same lock elects the serving hub of an active/standby pair (calliope_hub.hub.ha): the
leader holds it for its whole life and the sweep runs there, so "who sweeps" and "who
serves" can never disagree. The session's `application_name` says who holds it and with
which config, which is how a standby checks it was given the leader's config.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class SweepLock(Protocol):
    async def try_acquire(self) -> bool:
        """True while this process holds the lock (checks the connection is still alive)."""

    async def release(self) -> None: ...


class SoleHub:
    """SQLite: the only hub; the lock is always held."""

    async def try_acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (PostgreSQL's bigint range)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class AdvisoryLock:
    """`pg_try_advisory_lock(key)` held on a connection of its own; psycopg2 runs in a thread."""

    def __init__(self, connect_args: dict[str, Any], key: int, application_name: str = "calliope-orphan-sweeper"):
        self._connect_args = connect_args
        self.key = key
        self.application_name = application_name
        self._conn: Any = None
        self.held = False

    async def try_acquire(self) -> bool:
        return await asyncio.to_thread(self.try_acquire_blocking)

    @property
    def connected(self) -> bool:
        """The session is open (after a False try_acquire: someone else holds the lock, the database answered)."""
        return self._conn is not None and not self._conn.closed

    async def release(self) -> None:
        await asyncio.to_thread(self._close)

    def try_acquire_blocking(self) -> bool:
        """try_acquire for a thread of its own (the HA fence proves the lock even when the loop is stuck)."""
        import psycopg2  # optional dependency: only PostgreSQL hubs need it

        try:
            if self._conn is None or self._conn.closed:
                self.held = False
                self._conn = psycopg2.connect(
                    connect_timeout=5, application_name=self.application_name, **self._connect_args
                )
                self._conn.autocommit = True
            # When held, SELECT 1 proves the session (and so the lock) is still ours.
            query, params = ("SELECT 1", ()) if self.held else ("SELECT pg_try_advisory_lock(%s)", (self.key,))
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
                answer = cursor.fetchone()[0]
        except psycopg2.Error as e:
            if self.held:
                log.warning("lost the orphan-sweep lock's connection (%s); asking again next time", e)
            self._close()
            return False
        self.held = self.held or bool(answer)
        return self.held

    def holder(self) -> str | None:
        """The application_name of the session holding the lock now (None: free), read over our connection."""
        if self._conn is None or self._conn.closed:
            return None
        classid, objid = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        with self._conn.cursor() as cursor:
            cursor.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s"
                " AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (classid, objid),
            )
            row = cursor.fetchone()
        return str(row[0]) if row else None

    def _close(self) -> None:
        """Unlock first: closing alone frees the lock only once the server has ended the session."""
        import psycopg2

        conn, held, self._conn, self.held = self._conn, self.held, None, False
        if conn is None or conn.closed:
            return
        try:
            if held:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg2.Error:
            pass  # the session is going anyway, and the lock with it
        finally:
            conn.close()


def sweep_lock(db_url: str, name: str) -> SweepLock:
    """The lock for the hub database at `db_url` (JupyterHub's SQLAlchemy URL).

    Raises ValueError for a backend where we cannot coordinate hubs: sweeping there could
    let two hubs stop tasks at once, so the caller must not sweep.
    """
    if make_url(db_url).get_backend_name() == "sqlite":
        return SoleHub()
    return hub_lock(db_url, name)


def hub_lock(db_url: str, name: str, application_name: str = "calliope-orphan-sweeper") -> AdvisoryLock:
    """The hub `name`'s advisory lock on PostgreSQL; ValueError for any other database (no SQLite here)."""
    url = make_url(db_url)
    backend = url.get_backend_name()
    if backend != "postgresql":
        raise ValueError(f"no hub lock for a {backend} hub database; only SQLite and PostgreSQL (HA: PostgreSQL)")
    args = url.translate_connect_args(username="user", database="dbname")
    connect_args = {k: v for k, v in args.items() if v}
    key = lock_key(f"calliope-orphan-sweeper/{name}")
    return AdvisoryLock({**connect_args, **dict(url.query)}, key, application_name)
