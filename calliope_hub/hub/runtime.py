"""HubRuntime: the one owner of everything a hub process shares, built from config and closed at shutdown.

One runtime per JupyterHub app (and so per process and event loop) builds, in one place:
the parsed catalog; the ONE EcsApi; one TaskWatcher per cluster; the registered task
definitions and the SSM secret store; event ingestion (the bounded
queue the HTTP endpoint and the SQS consumer feed); the orphan sweep loop and its lock; the
EMF writer. Spawners and the events handler get their collaborators from it and never make
their own.

How it is found, started and closed, given that JupyterHub 6.1.1 has no startup or shutdown
hook for a spawner package:

- **Found**: it lives in the hub's tornado settings (`app.tornado_settings`, which every
  `User` holds as `.settings`; handlers reach it through `settings["app"]`) under
  `SETTINGS_KEY`. That dict is per hub app, so nothing here is a process-wide registry, and
  tests get a fresh runtime per settings dict.
- **Built**: by the first ECSSpawner constructed. Our own app (calliope_hub.hub.app,
  `calliope-jupyterhub`) constructs one from the config before JupyterHub's start touches
  anything, so a bad setting stops every start, even with no servers, with the setting's name.
  Under plain `jupyterhub` the first spawner JupyterHub constructs builds it: during start on a
  hub with servers (`init_spawners`), at the first spawn on a hub without.
- **Started**: by the app before `init_spawners`, which it primes (`prime()`); under plain
  `jupyterhub`, by the spawner's first async call (`start`, `poll`, `stop`). Once either way;
  concurrent callers share it.
- **Closed**: JupyterHub's shutdown (SIGTERM/SIGINT -> `shutdown_cancel_tasks`) first runs
  `cleanup()` (which may stop servers through the spawners, with the runtime still alive),
  then cancels every task of the loop and awaits them all before it stops the loop. The
  runtime holds one task for its lifetime (`_lifetime`); its cancellation is the shutdown
  signal, and it runs `close()` to the end inside JupyterHub's wait: watchers, ingestion,
  the SQS consumer and the sweep loop cancelled and awaited, the lock released, the ECS and
  SQS clients closed, the EMF file closed. No atexit, no monkeypatching of the app. Tests
  and tools call `close()` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import IO, TYPE_CHECKING, Any

from traitlets.config import Config

from calliope_hub.catalog import Catalog, Placement, load_catalog
from calliope_hub.ecs.api import EcsApi, EcsApiError, aws_client
from calliope_hub.ecs.orphans import OrphanSweeper, sweep_forever
from calliope_hub.ecs.secrets import SecretStore
from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.ecs.storage import Homes
from calliope_hub.ecs.taskdefs import TaskDefinitions
from calliope_hub.ecsfacts import SSM_QUOTA_CATEGORIES, client_quotas, started_by
from calliope_hub.events.ingest import EventIngest
from calliope_hub.events.sqs import SqsEventConsumer, sqs_client
from calliope_hub.hub.config import RuntimeSettings
from calliope_hub.hub.dbindexes import ensure_on_session
from calliope_hub.hub.lock import SweepLock, sweep_lock
from calliope_hub.hub.logs import attach_to_jupyterhub_log
from calliope_hub.hub.owners import JupyterHubOwners
from calliope_hub.observability import emf
from calliope_hub.pool.config import PoolSettings
from calliope_hub.pool.keeper import PoolKeeper, PoolParts

if TYPE_CHECKING:
    from calliope_hub.spawner import ECSSpawner

log = logging.getLogger(__name__)

SETTINGS_KEY = "calliope_runtime"
#: Seconds between an HA standby's primes of its status cache: ⌈N/100⌉ ListTasks each, and
#: DescribeTasks only for the tasks started since, so the standby's reads stay far below the leader's.
STANDBY_PRIME_INTERVAL = 30.0


class RuntimeNotStarted(RuntimeError):
    """A collaborator was asked for before `start()` finished."""


class HubRuntime:
    """Builds, holds and closes the process's ECS client, watchers, ingestion, sweep and EMF writer."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        cluster: str,
        app_settings: MutableMapping[str, Any],
        log: logging.Logger | logging.LoggerAdapter[Any] = log,
        pool_config: Config | None = None,
        placement: Placement | None = None,
    ):
        self.settings = settings
        self.log = log  # JupyterHub's own logger in a hub: its level, format and handlers
        if not (log.name + ".").startswith("calliope_hub."):  # our own logger can't be our parent
            attach_to_jupyterhub_log(log)  # every calliope_hub.* line goes through JupyterHub's handlers
        self.cluster = cluster
        #: the hub's tornado settings: `users` and `db` exist only inside a real hub
        self._app_settings = app_settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)  # a bad catalog fails here, at hub start
        #: c.CalliopePool, checked against the catalog here too: a pool on a service with EFS homes stops the start
        self.pool_settings = PoolSettings.from_config(
            pool_config or Config(), self.catalog, local=settings.local_commands
        )
        #: where the hub's tasks run (the spawners' c.ECSSpawner network settings): the warm pools' tasks run there too
        self.placement = placement or Placement(cluster=cluster)
        #: the warm pools' keeper (calliope_hub.pool): inside a real hub with pools configured, built by start()
        self.pool: PoolKeeper | None = None
        self.api: EcsApi | None = None
        #: the server definitions registered (by content hash) and the secret store; built by start()
        self.task_definitions: TaskDefinitions | None = None
        self.secrets: SecretStore | None = None
        self.homes: Homes | None = None
        self.ingest: EventIngest | None = None
        self.sqs: SqsEventConsumer | None = None
        self._watchers: dict[str, TaskWatcher] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._exit_stack = contextlib.AsyncExitStack()
        self._lock: SweepLock | None = None
        #: one lock check at a time: the orphan sweep and the pool keeper share the lock's connection
        self._lock_gate = asyncio.Lock()
        self._opening: asyncio.Task[None] | None = None
        #: the tasks prime() watches on no spawner's behalf (until a spawner claims them)
        self._primed: set[str] = set()
        self._starting: asyncio.Task[None] | None = None
        self._lifetime: asyncio.Task[None] | None = None
        self.closed = False
        self._open_emf()  # an EMF path that cannot be written fails here too

    @classmethod
    def of(cls, spawner: ECSSpawner, *, client_quotas: bool = True) -> HubRuntime:
        """The runtime of the spawner's hub, built (and so validated) by the first spawner that asks."""
        app_settings = spawner.user.settings
        runtime = app_settings.get(SETTINGS_KEY)
        if runtime is None or runtime.closed:
            settings = RuntimeSettings.from_config(spawner, client_quotas=client_quotas)
            runtime = cls(
                settings,
                cluster=spawner.cluster,
                app_settings=app_settings,
                log=spawner.log,
                pool_config=spawner.config,
                placement=spawner._placement(),
            )
            app_settings[SETTINGS_KEY] = runtime
        return runtime

    @classmethod
    def of_handler(cls, handler_settings: MutableMapping[str, Any]) -> HubRuntime | None:
        """The runtime an API handler's hub holds, if a spawner built it yet.

        tornado copies the hub's settings into `Application.settings`, so a handler's
        `self.settings` is not the dict the users (and so the spawners) hold; the app's is.
        """
        app = handler_settings.get("app")
        hub_settings = app.tornado_settings if app is not None else handler_settings
        runtime: HubRuntime | None = hub_settings.get(SETTINGS_KEY)
        return runtime if runtime is not None and runtime.started else None

    def settle(self, app_settings: MutableMapping[str, Any]) -> None:
        """Move into the hub's final settings dict, where its users, database and spawners look.

        Our app builds the runtime before JupyterHub's `init_tornado_settings`, which copies the
        settings it had into a new dict; the runtime follows. Nothing has called `start()` yet
        (the app and the spawners first do at `init_spawners`, which JupyterHub runs later; an
        HA standby opens only the clients), so the orphan sweep and the pools start there, with
        the hub's users and database already in this dict.
        """
        self._app_settings = app_settings
        app_settings[SETTINGS_KEY] = self

    # ---- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the async parts once; every caller waits for the same start."""
        if self.closed:
            raise RuntimeNotStarted("this HubRuntime was closed")
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)

    @property
    def started(self) -> bool:
        """start() finished without error (and the runtime is not closed since)."""
        starting = self._starting
        done = starting is not None and starting.done() and not starting.cancelled() and not starting.exception()
        return done and not self.closed

    async def start_clients(self) -> None:
        """Only the AWS clients, once: what an HA standby primes its status cache with.

        Nothing here takes work from a serving hub: no event ingestion (an SQS consumer would
        take the leader's events), no orphan sweep, no loop.
        """
        if self.closed:
            raise RuntimeNotStarted("this HubRuntime was closed")
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open_clients())
        await asyncio.shield(self._opening)

    async def _open_clients(self) -> None:
        s = self.settings
        # The stock-pattern baseline has no client-side limiter: it meets ECS's quota head on.
        if s.client_quotas:
            self.api = await EcsApi.create(s.target, client_quotas=client_quotas())
        else:
            self.api = await EcsApi.create(s.target, client_quotas=None)
        self._exit_stack.push_async_callback(self.api.close)
        self.task_definitions = TaskDefinitions(self.api)
        ssm = await self._exit_stack.enter_async_context(aws_client("ssm", s.ssm_target))
        quotas = client_quotas(SSM_QUOTA_CATEGORIES, ssm_higher_throughput=s.ssm_higher_throughput)
        self.secrets = SecretStore(ssm, kms_key_id=s.kms_key_id, quotas=quotas)
        self.homes = Homes(await self._exit_stack.enter_async_context(aws_client("efs", s.target)), s.hub_id)

    async def _start(self) -> None:
        await self.start_clients()
        s = self.settings
        if s.events.enabled:
            # One queue, sized by c.CalliopeEvents.queue_size, for the HTTP endpoint and SQS alike.
            self.ingest = EventIngest(s.events.queue_size, watchers_of=self.watchers_of)
            await self.ingest.start()
            await self._start_sqs()
        if (db := self._app_settings.get("db")) is not None:  # inside a real hub: init_spawners' and the sweep's
            ensure_on_session(db)
        self._start_orphan_sweep()
        self._start_pool()
        self._lifetime = asyncio.get_running_loop().create_task(self._live())
        self.log.info(
            "Calliope Hub runtime started: ECS %s, events %s, SQS %s, orphan sweep %s, warm pools %s, EMF %s",
            s.target.endpoint_url or s.target.region,
            "on" if s.events.enabled else "off",
            s.events.sqs_queue_url or "off",
            s.orphan_action if self._lock is not None else "off",
            ", ".join(pool.name for pool in self.pool_settings.pools) if self.pool is not None else "off",
            s.emf_path if s.emf_enabled else "off",
        )

    def _open_emf(self) -> None:
        s = self.settings
        if not s.emf_enabled:
            return
        stream: IO[str] = sys.stdout
        if s.emf_path != "-":
            stream = self._exit_stack.enter_context(open(s.emf_path, "a", encoding="utf-8"))  # noqa: SIM115
        emf.install(emf.EmfWriter(stream, s.emf_namespace))
        self._exit_stack.callback(emf.install, None)

    async def _start_sqs(self) -> None:
        events = self.settings.events
        if not events.sqs_queue_url or events.sqs_target is None or self.ingest is None:
            return
        client = await self._exit_stack.enter_async_context(sqs_client(events.sqs_target))
        self.sqs = SqsEventConsumer(client, events.sqs_queue_url, self.ingest, max_receives=events.sqs_max_receives)
        await self.sqs.start()

    def use_lock(self, lock: SweepLock) -> None:
        """An HA leader's lock (calliope_hub.hub.ha), handed before start: the hub that serves is the one that sweeps.

        Handed to the runtime, not left in the tornado settings: JupyterHub loads the config file again in its
        initialize, and a config that sets c.JupyterHub.tornado_settings replaces that dict, key and all.
        """
        self._lock = lock

    def _hub_lock(self) -> SweepLock | None:
        """The lock that elects the one hub that sweeps orphans and fills pools: built once, None outside a hub."""
        db = self._app_settings.get("db")
        if self._lock is None and db is not None:
            try:
                self._lock = sweep_lock(
                    str(db.get_bind().url.render_as_string(hide_password=False)), self.settings.hub_id
                )
            except ValueError as e:
                self.log.error("no hub lock, so no orphan sweep and no pool filling: %s", e)
        return self._lock

    async def _holds_lock(self) -> bool:
        lock = self._lock
        if lock is None:
            return False
        async with self._lock_gate:
            return await lock.try_acquire()

    def _start_orphan_sweep(self) -> None:
        """Only inside a real hub (its users and database decide ownership), and not when turned off."""
        s, users, db = self.settings, self._app_settings.get("users"), self._app_settings.get("db")
        if users is None or db is None or s.orphan_action == "off" or self.api is None or self._hub_lock() is None:
            return
        sweeper = OrphanSweeper(
            self.api,
            self.cluster,
            hub_id=s.hub_id,
            started_by=started_by(s.hub_id),
            owners=JupyterHubOwners(users, db, self.cluster),
            grace_period=s.orphan_grace_period,
            action=s.orphan_action,
        )
        self._spawn(sweep_forever(sweeper, s.orphan_interval, may_sweep=self._holds_lock), "orphan sweep")

    def _start_pool(self) -> None:
        """Only inside a real hub with pools: the hub holding the lock fills them, and claims from what it filled.

        The pool key derives from JupyterHub's cookie secret, which every hub of a deployment (an HA pair
        included) shares, so a restarted or failed-over hub can still claim the warm tasks already running.
        """
        secret = self._app_settings.get("cookie_secret")
        if not self.pool_settings.pools or self.pool is not None or not secret or self._hub_lock() is None:
            return
        s, api, definitions, secrets = self.settings, self.api, self.task_definitions, self.secrets
        if api is None or definitions is None or secrets is None:
            return
        parts = PoolParts(
            api=api,
            watcher=self.watcher(self.cluster),
            catalog=self.catalog,
            definitions=definitions,
            secrets=secrets,
            placement=self.placement,
            hub_id=s.hub_id,
            secret_root=s.secret_root,
            local=s.local_commands,
            execution_role_arn=s.execution_role_arn,
            task_role_arn=s.task_role_arn,
        )
        master = secret if isinstance(secret, bytes) else str(secret).encode()
        self.pool = PoolKeeper(parts, self.pool_settings, master=master)
        self._spawn(self.pool.run(may_fill=self._holds_lock), "pool keeper")

    def _spawn(self, coroutine: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"calliope {what}")
        self._tasks.append(task)

    async def _live(self) -> None:
        """Waits for the loop's shutdown; JupyterHub's cancellation of every task is the signal to close."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    # ---- collaborators --------------------------------------------------------------------

    def watcher(self, cluster: str) -> TaskWatcher:
        """The one TaskWatcher of `cluster` (a restored server may name another cluster than the config)."""
        if self.api is None:
            raise RuntimeNotStarted("HubRuntime.start_clients() has not finished")
        watcher = self._watchers.get(cluster)
        if watcher is None:
            watcher = self._watchers[cluster] = TaskWatcher(self.api, cluster, **self.settings.watcher_options())
        return watcher

    def watchers_of(self, cluster_arn: str) -> list[TaskWatcher]:
        """The watchers of the cluster an event names, by ARN or by name."""
        name = cluster_arn.rsplit("/", 1)[-1]
        return [w for cluster, w in self._watchers.items() if cluster in (cluster_arn, name)]

    # ---- the first sweep, ahead of the hub's check of its servers ---------------------------

    async def prime(self, arns: Iterable[str] | None = None) -> set[str]:
        """Know the status of the hub's tasks, so each restored server's first `poll()` is a read.

        JupyterHub's `init_spawners` polls every running server at once; without a primed cache
        each poll registers its task and waits for the watcher's first sweep. `arns` are the
        tasks the hub's database names (a restart: ⌈N/100⌉ DescribeTasks and nothing else);
        None lists them with ListTasks(startedBy) (an HA standby, which has no database session
        yet). Only tasks not described yet are described, so a standby that primes every
        `STANDBY_PRIME_INTERVAL` takes over describing just the tasks started since, and tasks
        primed before but no longer wanted are let go. Returns the ARNs now primed; a failed
        ListTasks primes nothing (unknown is not stopped: the polls wait for a sweep).
        """
        if self.api is None:
            raise RuntimeNotStarted("HubRuntime.start_clients() has not finished")
        watcher = self.watcher(self.cluster)
        if arns is not None:
            wanted = set(arns)
        else:
            try:
                wanted = set(await self.api.list_tasks(self.cluster, started_by=started_by(self.settings.hub_id)))
            except EcsApiError as e:
                self.log.warning("Calliope Hub: could not list this hub's tasks to prime their status (%s)", e)
                return set()
        self._let_go(self._primed - wanted)
        unknown = [arn for arn in wanted if watcher.get(arn) is None]
        for arn in unknown:
            # the store, not watch(): the sweep loop starts with the first spawner that watches
            watcher.store.watch(arn)
        await watcher.sweeper.describe(unknown)
        self._primed = wanted
        return wanted

    def hand_over(self, claimed: set[str]) -> None:
        """After JupyterHub's check: primed tasks no spawner claimed are let go (the orphan sweep has them)."""
        self._let_go(self._primed - claimed)
        self._primed = set()

    def _let_go(self, arns: set[str]) -> None:
        watcher = self._watchers.get(self.cluster)
        if watcher is None:
            return
        for arn in arns:
            watcher.unwatch(arn)

    # ---- close ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel and await every loop, then close the clients; idempotent, and safe mid-shutdown."""
        if self.closed:
            return
        self.closed = True
        if self._app_settings.get(SETTINGS_KEY) is self:
            del self._app_settings[SETTINGS_KEY]
        for starting in (self._starting, self._opening):
            if starting is not None and not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:  # its warm tasks keep running: the next filling hub adopts them
            await self.pool.close()
        if self.sqs is not None:
            await self.sqs.close()
        if self.ingest is not None:
            await self.ingest.close()
        for watcher in self._watchers.values():
            await watcher.close()
        if self._lock is not None:
            await self._lock.release()
        await self._exit_stack.aclose()
        if self._lifetime is not None and self._lifetime is not asyncio.current_task():
            self._lifetime.cancel()
            await asyncio.gather(self._lifetime, return_exceptions=True)
        self.log.info(
            "Calliope Hub runtime closed: %d watchers, %d loops, its clients", len(self._watchers), len(self._tasks)
        )
