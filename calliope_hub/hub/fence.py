"""The HA leader lock's session, in a small process of its own that fences the hub from outside.

Why a process and not a thread of the hub. The lock is only as good as the leader's proof that
its session is alive: it must stop serving `fence_timeout` after its last proof, because a new
leader serves that long after it acquired. A prover thread in the hub shares the hub's GIL, and
the hub holds the GIL for long stretches without a switch: a generation-2 garbage collection of
a hub with 900 servers held it 0.25 s on an idle core (longer on a busy machine, and it grows
with the heap), and any long C call does the same; a busy pure-Python loop does not (it switches
every 5 ms). When the GIL came back the watchdog saw no fresh proof and exited although the
session was alive all along: at 1,000 servers on 2 busy cores a leader "could not prove the
leader lock for 3.0 s" in the middle of a spawn burst and its 63 spawns in flight failed. The
same stall also meant that a lock which *was* lost could not be fenced while the hub's GIL was
held: the watchdog could not run either.

Here the keeper, not the hub, holds the session. It imports only psycopg2 and the lock, so it
starts in 0.2 s and ~40 MB (the hub's modules take 1.8 s and 135 MB), and no hub work shares its
interpreter. While the hub stands by, the keeper asks for the lock every `poll_interval` and
reports each answer on its stdout; once it holds it, it proves the session every
`check_interval` and, when the session errors or no proof succeeded for `timeout`, it SIGKILLs
the hub: a kill needs nothing from the hub, stuck or not. The hub's end of the keeper's stdin is
the keeper's tie to it: end of file (the hub exited, however) and the keeper says so (Handover)
and exits, closing the session, so the standby can take over at once.

Protocol, one line each: the hub writes `KeeperSettings` as JSON to the keeper's stdin and then
nothing; the keeper writes `unreachable`, `held <holder's application_name>`, or `acquired`
(followed by ` handed-over` when the last leader's hub is known to have exited).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from sqlalchemy.engine import make_url

from calliope_hub.hub.lock import AdvisoryLock, hub_lock

log = logging.getLogger(__name__)

#: the keeper's exit status after it fenced the hub (it lost, or could not prove, the leader lock)
FENCED_EXIT = 75
UNREACHABLE = "unreachable"
HELD = "held"
ACQUIRED = "acquired"
#: after ACQUIRED: the last holder's keeper said its hub had exited, so no fence wait is needed
HANDED_OVER = "handed-over"
#: what a keeper announces (Handover) once its hub has exited
EXITED = "exited"
#: the NOTIFY channel of Handover
HANDOVER_CHANNEL = "calliope_ha_handover"


@dataclass(frozen=True)
class KeeperSettings:
    """What the hub tells its keeper (through a pipe: the database URL may carry a password)."""

    db_url: str
    #: the hub's id: whose lock (calliope_hub.hub.lock.hub_lock)
    lock_name: str
    #: the session's name: calliope-hub/<config fingerprint>/<instance>, which a standby reads
    application_name: str
    poll_interval: float
    check_interval: float
    timeout: float


class LeaderFence:
    """Keeps proving the lock from one thread and fences from another: the keeper's own loop."""

    def __init__(
        self,
        lock: AdvisoryLock,
        *,
        interval: float,
        timeout: float,
        on_fenced: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._lock = lock
        self._interval = interval
        self._timeout = timeout
        self._on_fenced = on_fenced
        self._clock = clock
        self._stopping = threading.Event()
        self.proven_at = clock()  # the caller just acquired the lock

    def start(self) -> None:
        for target, name in ((self._prove, "calliope-fence-prover"), (self._watch, "calliope-fence-watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def holding(self) -> bool:
        return self._clock() - self.proven_at <= self._timeout

    def _prove(self) -> None:
        while not self._stopping.wait(self._interval):
            began = self._clock()
            if self._lock.try_acquire_blocking():
                self.proven_at = began
            elif not self._stopping.is_set():
                self._on_fenced("the leader lock's database session ended")
                return

    def _watch(self) -> None:
        while not self._stopping.wait(min(self._interval, self._timeout) / 4):
            if not self.holding:
                self._on_fenced(f"could not prove the leader lock for {self._timeout:.1f}s")
                return


class FenceKeeper:
    """The hub's handle on its keeper process: start it, read its reports, die with it."""

    def __init__(self, settings: KeeperSettings):
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # stderr is the hub's: the keeper's log lines land in the hub's log
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(asdict(self._settings)).encode() + b"\n")
        self._process.stdin.flush()  # and kept open: its end of file tells the keeper the hub is gone

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def next_report(self) -> str:
        """The keeper's next line (blocking; run it in a thread); '' once the keeper has exited."""
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.readline().decode().strip()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def tie(self, on_exit: Callable[[str], None]) -> None:
        """From a thread: the moment the keeper exits (its session, and the lock, gone), call `on_exit`."""
        process = self._process
        assert process is not None

        def wait() -> None:
            status = process.wait()
            on_exit(f"the fence keeper exited ({status}), and the leader lock's session with it")

        threading.Thread(target=wait, name="calliope-fence-tie", daemon=True).start()

    def stop(self) -> None:
        """A standby giving up: close the tie; the keeper exits and its session ends."""
        if self._process is None or self._process.stdin is None:
            return
        self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:  # stuck connecting: its session never held the lock
            self._process.kill()
            self._process.wait()


class Handover:
    """LISTEN/NOTIFY on a session of its own: when the last leader's hub has surely exited.

    Every keeper announces `acquired <name>` as soon as it holds the lock, before its hub may
    serve (it exits, lock and all, if it cannot), and `exited <name>` once its hub has exited:
    its stdin's end of file, which the kernel gives only when the hub can no longer run. Names
    are unique (the session name carries a nonce) and announcements arrive in commit order, so
    the last holder a standby knows of, from an announcement or from polling `pg_locks`, is the
    last one that could have served; if that one announced its exit, no old leader can still
    serve and the new one need not wait `fence_timeout`. Anything less (a hub and its keeper
    killed together, as a lost container; a partition; this session reconnected, and so perhaps
    deaf to an announcement) leaves the standby waiting, as it always did.
    """

    def __init__(self, db_url: str):
        self._uri = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: Any = None
        self._last_holder = ""
        self._exited: set[str] = set()

    def drain(self) -> None:
        """Take in what was announced until now (LISTEN first, forgetting the past, on a new session)."""
        if self._conn is None or self._conn.closed:
            self._last_holder, self._exited = "", set()
            self._run(f"LISTEN {HANDOVER_CHANNEL}")
        else:
            self._run("SELECT 1")

    def saw_holder(self, holder: str) -> None:
        """`pg_locks` named the holder after the last drain: it is the last holder known (until another)."""
        if holder and self._conn is not None and not self._conn.closed:
            self._last_holder = holder

    def handed_over(self) -> bool:
        """After acquiring: did the last holder that could have served announce that its hub exited?"""
        self.drain()
        return bool(self._last_holder) and self._last_holder in self._exited

    def announce(self, event: str, name: str) -> bool:
        return self._run("SELECT pg_notify(%s, %s)", (HANDOVER_CHANNEL, f"{event} {name}"))

    def _run(self, query: str, params: tuple = ()) -> bool:
        import psycopg2

        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg2.connect(self._uri, connect_timeout=5, application_name="calliope-ha-handover")
                self._conn.autocommit = True
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
        except psycopg2.Error as e:  # a session that missed something makes a standby wait, never serve early
            log.warning("Calliope HA: handover session: %s", e)
            if self._conn is not None:
                self._conn.close()
            return False
        for notice in self._conn.notifies:
            event, _, name = notice.payload.partition(" ")
            if event == ACQUIRED:
                self._last_holder = name
            elif event == EXITED:
                self._exited.add(name)
        self._conn.notifies.clear()
        return True


# ---- the keeper process -------------------------------------------------------------------


def _report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _hub_gone(stdin: IO[bytes], within: float) -> bool:
    """The hub writes nothing after the settings: readable stdin means end of file, the hub has exited."""
    readable, _, _ = select.select([stdin], [], [], within)
    return bool(readable)


def _fence(hub: int, why: str) -> None:
    log.critical("Calliope HA: fenced (%s); the fence keeper kills hub pid %d so the standby can serve", why, hub)
    logging.shutdown()
    try:
        os.kill(hub, signal.SIGKILL)
    finally:
        os._exit(FENCED_EXIT)


def keep(settings: KeeperSettings, stdin: IO[bytes], hub: int) -> int:
    """Stand by for the lock, then hold and prove it until the hub exits (or fence the hub)."""
    lock = hub_lock(settings.db_url, settings.lock_name, settings.application_name)
    handover = Handover(settings.db_url)
    while not lock.try_acquire_blocking():
        handover.drain()
        if lock.connected:
            holder = lock.holder() or ""
            handover.saw_holder(holder)
            _report(f"{HELD} {holder}".strip())
        else:
            _report(UNREACHABLE)
        if _hub_gone(stdin, settings.poll_interval):
            return 0
    handed_over = handover.handed_over()
    if not handover.announce(ACQUIRED, settings.application_name):
        log.error("Calliope HA: could not announce this keeper's lock; giving it up so no unannounced hub serves")
        return 1
    _report(f"{ACQUIRED} {HANDED_OVER}" if handed_over else ACQUIRED)
    fence = LeaderFence(
        lock, interval=settings.check_interval, timeout=settings.timeout, on_fenced=lambda why: _fence(hub, why)
    )
    fence.start()
    while not _hub_gone(stdin, 3600.0):
        pass
    fence.stop()
    handover.announce(EXITED, settings.application_name)  # before exiting frees the lock
    return 0


def main() -> int:
    # Ctrl-C and SIGTERM are for the hub, which may still be cleaning up under the lock; the
    # keeper follows the hub out (its stdin's end of file), never the other way round.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s fence-keeper] %(message)s")
    stdin = sys.stdin.buffer
    settings = KeeperSettings(**json.loads(stdin.readline()))
    return keep(settings, stdin, os.getppid())


if __name__ == "__main__":
    sys.exit(main())
