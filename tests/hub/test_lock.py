"""Only one hub sweeps orphans: the PostgreSQL advisory lock, on the real server at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from calliope_hub.hub.lock import AdvisoryLock, SoleHub, lock_key, sweep_lock

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> str:
    """The suite's PostgreSQL; a missing server is a skip locally and a failure on CI."""
    import psycopg2

    try:
        psycopg2.connect(PG_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no PostgreSQL at {PG_URL}: {e}")
    return PG_URL


@pytest.fixture
def hub_id() -> str:
    return f"lock-test-{uuid.uuid4().hex[:8]}"  # a key of this test's own


@pytest.fixture
def holder(pg_url: str, hub_id: str) -> Iterator[subprocess.Popen[str]]:
    """Another hub process that takes the lock, says so, and then just lives."""
    program = textwrap.dedent(
        f"""
        import asyncio, time
        from calliope_hub.hub.lock import sweep_lock
        lock = sweep_lock({pg_url!r}, {hub_id!r})
        print(asyncio.run(lock.try_acquire()), flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


async def test_two_sweepers_only_one_holds_and_release_hands_over(pg_url: str, hub_id: str) -> None:
    first, second = sweep_lock(pg_url, hub_id), sweep_lock(pg_url, hub_id)
    assert isinstance(first, AdvisoryLock)
    try:
        assert await first.try_acquire() is True
        assert await second.try_acquire() is False
        assert await first.try_acquire() is True  # still held: the session is alive
        await first.release()
        assert await second.try_acquire() is True
        assert await first.try_acquire() is False
    finally:
        await first.release()
        await second.release()


async def test_a_holder_that_dies_frees_the_lock(pg_url: str, hub_id: str, holder: subprocess.Popen[str]) -> None:
    assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
    mine = sweep_lock(pg_url, hub_id)
    try:
        assert await mine.try_acquire() is False
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        for _ in range(50):  # PostgreSQL ends the dead session when it notices the closed socket
            if await mine.try_acquire():
                break
            await asyncio.sleep(0.1)
        assert await mine.try_acquire() is True
    finally:
        await mine.release()


async def test_a_holder_whose_session_is_terminated_knows_it_lost_the_lock(pg_url: str, hub_id: str) -> None:
    import psycopg2

    lock = sweep_lock(pg_url, hub_id)
    assert isinstance(lock, AdvisoryLock)
    try:
        assert await lock.try_acquire() is True
        with psycopg2.connect(pg_url) as admin, admin.cursor() as cursor:
            unsigned = lock.key & 0xFFFF_FFFF_FFFF_FFFF  # a bigint key is stored as two oids
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s::oid AND objid = %s::oid AND objsubid = 1",
                (unsigned >> 32, unsigned & 0xFFFF_FFFF),
            )
            assert cursor.fetchone() == (True,)
        assert await lock.try_acquire() is False  # lost, and said so
        assert await lock.try_acquire() is True  # reconnected and took it again
    finally:
        await lock.release()


def test_sqlite_is_one_hub_and_other_databases_are_refused() -> None:
    assert isinstance(sweep_lock("sqlite:///jupyterhub.sqlite", "x"), SoleHub)
    with pytest.raises(ValueError, match="only SQLite and PostgreSQL"):
        sweep_lock("mysql+pymysql://hub@db/jupyterhub", "x")
    assert lock_key("a") == lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("a") < 2**63
