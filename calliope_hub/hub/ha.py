"""An active/standby JupyterHub: several hub processes, one config, one PostgreSQL; exactly one serves.

Run `python -m calliope_hub.hub.ha -f jupyterhub_config.py` on every hub host instead of `jupyterhub`.
It is our app (calliope_hub.hub.app) with a prelude: the config is checked and the runtime
built first, then the hub stands by.

Why a JupyterHub subclass and where it waits. JupyterHub owns its database: every `init_*`
after `init_db` writes to it (roles, users, tokens, OAuth clients) and `init_spawners` polls,
stops and re-routes servers, so a standby must not run any of them until it leads. JupyterHub
6.1.1 has no hook before `init_db`, and all the steps up to its first `await` are synchronous,
so this app runs its own prelude (CalliopeHub's `preflight()`, after the command line and the
config file are parsed and the runtime is built and checked): it refuses configs that
cannot run as a pair, and then waits, on the event loop, for its fence keeper to hold the
hub's advisory lock (the one the orphan sweep always used, calliope_hub.hub.lock). A standby is warm in the sense that
matters: Python, JupyterHub, the spawner and its AWS libraries are imported, the config checked,
the database answered, and the status of every task the hub started is described ahead
(`_keep_warm`); what is left at takeover is JupyterHub's own start (init_spawners), which a
restart pays too, minus the process and import time and the cold status sweep.

Why two hubs can never serve at once (a lease argument, with monotonic clocks):
- the leader lock's session lives in the hub's fence keeper, a small process of its own
  (calliope_hub.hub.fence) that proves it every `fence_check_interval` and SIGKILLs the hub
  when the session errors or no proof succeeded for `fence_timeout`. Nothing the hub does (a
  long garbage collection or C call holding its GIL, a stuck event loop) can delay a proof or
  the kill;
- the server frees the lock only after the keeper's session ended, so every proof the keeper
  ever made started before the new leader acquired, and the old hub is killed `fence_timeout`
  after the last one; the hub exits at once if its keeper does (`FenceKeeper.tie`), and the
  keeper exits when the hub does (its stdin's end of file), freeing the lock for the standby;
- the new leader waits `fence_timeout` after acquiring before it runs any `init_*`, unless
  the last leader that could have served announced that its hub had exited (fence.Handover).

The health endpoint (GET /leader on `c.CalliopeHA.health_port`) answers 200 only on the hub
that has finished starting while it holds the lock, and 503 everywhere else; an ALB target
group or HAProxy routes the hub's pages and API only to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jupyterhub import orm
from sqlalchemy.engine import make_url
from traitlets import Any as AnyTrait
from traitlets import default
from traitlets.config import Config

from calliope_hub.hub.app import CalliopeHub
from calliope_hub.hub.config import CalliopeHA, ECSSpawnerConfig
from calliope_hub.hub.fence import (
    ACQUIRED,
    FENCED_EXIT,
    HANDED_OVER,
    HELD,
    UNREACHABLE,
    FenceKeeper,
    KeeperSettings,
)
from calliope_hub.hub.runtime import STANDBY_PRIME_INTERVAL

log = logging.getLogger(__name__)

#: the exit status of a hub whose config cannot run as one of a pair
PAIR_REFUSED_EXIT = 2
#: per-instance settings two hubs of one pair may (must) differ in; everything else must match
INSTANCE_SETTINGS = {
    "JupyterHub": {
        *("hub_ip", "hub_port", "hub_bind_url", "hub_connect_ip", "hub_connect_url"),
        *("pid_file", "extra_log_file", "log_level", "config_file"),
    },
}
# the command line's -f lands under the app's own class name
INSTANCE_SETTINGS["HAJupyterHub"] = INSTANCE_SETTINGS["JupyterHub"]
_INSTANCE_KEYS = {(section, key) for section, keys in INSTANCE_SETTINGS.items() for key in keys}
#: where the lock session's application_name carries the config fingerprint: calliope-hub/<fp>/<instance>
SESSION_PREFIX = "calliope-hub/"
#: concurrent clean-ups of spawns a dead leader left pending
ENDING_CONCURRENCY = 20


def config_fingerprint(config: Config) -> str:
    """A hash of everything in `config` but the per-instance settings: equal on both hubs of a pair."""

    def plain(value: Any) -> Any:
        if callable(value):  # a class or function: by name, not by its address in this process
            return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
        return repr(value)

    shared = {
        section: {k: v for k, v in values.items() if (section, k) not in _INSTANCE_KEYS}
        for section, values in config.items()
        if section != "CalliopeHA" and isinstance(values, dict)
    }
    text = json.dumps(shared, sort_keys=True, default=plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def exit_fenced(reason: str) -> None:
    """No cleanup, no flush of JupyterHub's state: a hub that may have lost the lock must not write."""
    log.critical("Calliope HA: fenced (%s); exiting so the standby can serve", reason)
    logging.shutdown()
    os._exit(FENCED_EXIT)


class KeptSweepLock:
    """The HubRuntime's sweep lock in HA mode: the leader's own lock, held while its keeper lives."""

    def __init__(self, keeper: FenceKeeper):
        self._keeper = keeper

    async def try_acquire(self) -> bool:
        return self._keeper.alive()

    async def release(self) -> None:
        return None  # the leader lock lives as long as the process


class LeaderHealth(BaseHTTPRequestHandler):
    """GET /leader: 200 on the serving leader, 503 on a standby or a hub still taking over.

    Served from a thread of its own, not from the hub's event loop: at 5,000 servers a leader
    busy with a burst of spawns answered HAProxy's checks over 2 s late three times running, four
    times in the burst, and each time the balancer had no hub and answered every API call 503
    (54 of 5,000 spawns' progress streams failed) though the hub led throughout. Whether a hub
    leads is for its lock to say, not for its loop's latency.
    """

    server: LeaderHealthServer

    def do_GET(self) -> None:
        if self.path.partition("?")[0] != "/leader":
            self.send_error(404)
            return
        app = self.server.hub_app
        state = app.ha_state
        body = json.dumps({"leader": state == "leader", "state": state, "instance": app.ha.instance}).encode()
        self.send_response(200 if state == "leader" else 503)
        for name, value in (("Content-Type", "application/json"), ("Cache-Control", "no-store")):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # no access log: a balancer asks several times a second


class LeaderHealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub_app: HAJupyterHub):
        super().__init__(address, LeaderHealth)
        self.hub_app = hub_app

    def handle_error(self, request: Any, client_address: Any) -> None:
        # HAProxy resets a check's connection once it has the status line: that is no error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HAJupyterHub(CalliopeHub):
    """JupyterHub that stands by until it holds the hub's lock, and serves only while it does."""

    ha = AnyTrait(None, allow_none=True, help="The CalliopeHA settings (built in the prelude).")
    #: standby -> taking-over -> leader
    ha_state = "standby"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: background ends of the spawns a dead leader left in flight (referenced until done)
        self._ending: set[asyncio.Future[None]] = set()

    @default("classes")
    def _ha_classes(self) -> list[type]:
        return [*self._load_classes(), CalliopeHA]

    async def preflight(self) -> None:
        """The config checked and the runtime built (CalliopeHub), then the wait for the lock."""
        await super().preflight()
        await self._stand_by()

    async def start(self) -> None:
        await super().start()
        if self.ha is not None:
            self.ha_state = "leader"
            self.log.info("Calliope HA: %s is the leader and serving", self.ha.instance)

    # ---- the prelude -----------------------------------------------------------------------

    def _refuse(self, why: str) -> None:
        self.refuse(why, PAIR_REFUSED_EXIT)

    def _check_pair_config(self) -> None:
        """What cannot run as a pair stops here, before any wait, with the setting's name."""
        backend = make_url(self.db_url).get_backend_name()
        if backend != "postgresql":
            self._refuse(
                f"c.JupyterHub.db_url is a {backend} database ({self.db_url!r}); an HA pair shares one PostgreSQL "
                "(SQLite is one file that one process owns)"
            )
        try:
            make_url(self.db_url).get_dialect().import_dbapi()
        except ImportError as e:
            self._refuse(f"c.JupyterHub.db_url {make_url(self.db_url)!r} needs a driver that is not installed ({e})")
        if self.cleanup_servers:
            self._refuse("c.JupyterHub.cleanup_servers must be False: the standby takes over the running servers")
        if self.ha.fence_timeout <= self.ha.fence_check_interval:
            self._refuse("c.CalliopeHA.fence_timeout must be larger than c.CalliopeHA.fence_check_interval")
        proxy = self.proxy_class(parent=self, app=self, log=self.log)
        if proxy.should_start:
            self._refuse(
                f"{self.proxy_class.__name__}.should_start must be False: the proxies outlive any one hub "
                "(use c.JupyterHub.proxy_class = 'calliope-chp-replicas')"
            )

    @default("cleanup_servers")
    def _ha_cleanup_servers(self) -> bool:
        return False  # a hub that stops hands its servers to the standby

    async def _stand_by(self) -> None:
        self.ha = CalliopeHA(parent=self)
        if not self.ha.instance:
            self.ha.instance = f"{socket.gethostname()}-{os.getpid()}"
        self._check_pair_config()
        fingerprint = config_fingerprint(self.config)
        hub_id = self.config.ECSSpawner.get("hub_id", ECSSpawnerConfig.class_traits()["hub_id"].default_value)
        keeper = FenceKeeper(
            KeeperSettings(
                db_url=self.db_url,
                lock_name=hub_id,
                # unique per keeper (a handover names the session whose hub exited), instance last for people
                application_name=f"{SESSION_PREFIX}{fingerprint}/{secrets.token_hex(4)}/{self.ha.instance}"[:63],
                poll_interval=self.ha.standby_poll_interval,
                check_interval=self.ha.fence_check_interval,
                timeout=self.ha.fence_timeout,
            )
        )
        keeper.start()
        self._serve_health()
        self.log.info(
            "Calliope HA: %s stands by for hub %r (config %s, fence keeper pid %s)",
            *(self.ha.instance, hub_id, fingerprint, keeper.pid),
        )
        warming = asyncio.ensure_future(self._keep_warm())
        try:
            handed_over = await self._wait_for_lock(keeper, fingerprint)
        except BaseException:
            keeper.stop()  # refused or stopped while standing by: the keeper exits now, not at our exit
            raise
        finally:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        self.ha_state = "taking-over"
        keeper.tie(exit_fenced)
        if self.runtime is not None:
            self.runtime.use_lock(KeptSweepLock(keeper))
        if handed_over:
            self.log.info("Calliope HA: took the lock from a leader whose hub has exited; serving now")
            return
        self.log.info("Calliope HA: took the lock; serving in %.1fs (the old leader's fence)", self.ha.fence_timeout)
        await asyncio.sleep(self.ha.fence_timeout)

    async def _keep_warm(self) -> None:
        """Prime the runtime's status cache every STANDBY_PRIME_INTERVAL while standing by.

        At takeover `init_spawners` then needs one ListTasks and DescribeTasks only for the tasks
        started since the last prime, instead of describing every task cold. Only the AWS clients
        run here: nothing that would take events or tasks from the leader.
        """
        runtime = self.runtime
        if runtime is None:
            return
        last = -1
        while True:
            try:
                await runtime.start_clients()
                primed = await runtime.prime()
                (self.log.info if len(primed) != last else self.log.debug)(
                    "Calliope HA: standby primed %d tasks", len(primed)
                )
                last = len(primed)
            except Exception as e:  # a standby keeps standing by; the takeover primes again anyway
                self.log.warning("Calliope HA: standby could not prime its status cache: %s", e)
            await asyncio.sleep(STANDBY_PRIME_INTERVAL)

    async def _wait_for_lock(self, keeper: FenceKeeper, fingerprint: str) -> bool:
        """The keeper's reports until it holds the lock (True: handed over by a hub that exited).

        A config that differs from the leader's, or no database at the first ask, refuses.
        """
        first = True
        while (report := await asyncio.to_thread(keeper.next_report)).split(" ")[0] != ACQUIRED:
            if not report:
                self._refuse("the fence keeper exited before it held the lock (its log lines are above)")
            elif report == UNREACHABLE:
                if first:
                    self._refuse(f"cannot reach the hub database {make_url(self.db_url)!r}")
                self.log.warning("Calliope HA: the hub database does not answer; still standing by")
            else:
                holder = report.removeprefix(HELD).strip()
                if holder.startswith(SESSION_PREFIX) and holder.split("/")[1] != fingerprint:
                    self._refuse(
                        f"this hub's config (fingerprint {fingerprint}) differs from the leader's ({holder}); "
                        "both hubs of a pair must load the same config (only c.CalliopeHA and the hub's own "
                        f"address may differ: {sorted(INSTANCE_SETTINGS['JupyterHub'])})"
                    )
            first = False
        return report == f"{ACQUIRED} {HANDED_OVER}"

    def _serve_health(self) -> None:
        server = LeaderHealthServer((self.ha.health_ip, self.ha.health_port), self)
        threading.Thread(target=server.serve_forever, name="calliope-leader-health", daemon=True).start()
        self.log.info("Calliope HA: leader health at http://%s:%d/leader", self.ha.health_ip, self.ha.health_port)

    # ---- takeover --------------------------------------------------------------------------

    async def init_spawners(self) -> int:
        """The spawns the old leader left half-done are taken out first, then JupyterHub's own check."""
        self._end_interrupted_spawns()
        checked: int = await super().init_spawners()
        return checked

    def _end_interrupted_spawns(self) -> None:
        """Fail, cleanly, every spawn that was in flight when the old leader died.

        Such a server has a task in its state but no address: JupyterHub writes the server
        record before `Spawner.start` and its address only after start returns, so left alone
        `init_spawners` would wait `http_timeout` for a server at no address. Only the dead
        process could finish JupyterHub's spawn (its progress stream, its pending-state
        bookkeeping), so the record is dropped now, before JupyterHub's check sees it, and
        `User.stop` runs in the background: it stops the task (StopTask, then the watcher's
        STOPPED), clears the state and the OAuth client. A task left in the middle of a stop is
        ended the same way. The user sees a stopped server and starts it again; should
        anything slip through, the orphan sweep stops the task after its grace period.
        """
        interrupted = [
            orm_spawner
            for orm_spawner in self.db.query(orm.Spawner)
            if (orm_spawner.state or {}).get("task_arn") and (orm_spawner.server is None or not orm_spawner.server.ip)
        ]
        if not interrupted:
            return
        self.log.warning("Calliope HA: failing %d spawns the old leader left in flight", len(interrupted))
        gate = asyncio.Semaphore(ENDING_CONCURRENCY)
        for orm_spawner in interrupted:
            user = self.users[orm_spawner.user]
            user.spawners[orm_spawner.name].server = None  # deletes the address-less server record
            ending = asyncio.ensure_future(self._end_one(gate, user, orm_spawner.name))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
        self.db.commit()

    async def _end_one(self, gate: asyncio.Semaphore, user: Any, name: str) -> None:
        async with gate:
            try:
                await user.stop(name)
                self.log.info("Calliope HA: %s's spawn %r failed over: task stopped, state cleared", user.name, name)
            except Exception:
                self.log.exception("Calliope HA: could not end %s's in-flight spawn %r", user.name, name)


main = HAJupyterHub.launch_instance

if __name__ == "__main__":
    # As jupyterhub does: `python -m` would make a second HAJupyterHub class in __main__.
    from calliope_hub.hub import ha

    sys.exit(ha.main())
