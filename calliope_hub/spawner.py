"""ECSSpawner: JupyterHub's Spawner API on top of the catalog, the TaskWatcher and EcsApi.

The spawner is deliberately thin. It never calls DescribeTasks and owns no timer: the
cluster's one TaskWatcher sweeps every task in batches of 100 and calls back
`poll_and_notify()` when a task stops, so `poll()` is a dictionary read. This is what
lets one hub track 10,000 servers inside ECS's 20/s read quota. Its collaborators (the
catalog, the one EcsApi, the watcher) come from the hub's HubRuntime (calliope_hub.hub.runtime),
which builds them once per hub and closes them at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

from jupyterhub.spawner import Spawner
from jupyterhub.utils import make_ssl_context, maybe_future, url_path_join, wait_for_http_server
from sqlalchemy import inspect as orm_session_of
from tornado import web
from traitlets import Any, Bool, Integer, Unicode, default

from .catalog import Catalog, CatalogError, Choice, Placement, TaskIdentity
from .ecs.api import EcsApi, EcsApiError
from .ecs.launch import Launcher, LaunchError, LaunchParts, LaunchRequest, ServerRecord, next_delay, transient
from .ecs.snapshot import TaskSnapshot
from .ecs.status import TaskWatcher
from .ecs.storage import StorageError, homes_to_delete
from .hub.config import ECSSpawnerConfig
from .hub.runtime import HubRuntime
from .hub.tokens import revoke_by_row_id, token_row_id
from .observability import emf, metrics

STOP_REASON = "Stopped by Calliope Hub"

#: lastStatus -> (progress %, what the user is told while the task is in it)
LIFECYCLE_PROGRESS: dict[str, tuple[int, str]] = {
    "PROVISIONING": (20, "Provisioning capacity and a network interface"),
    "PENDING": (40, "Pulling the image"),
    "ACTIVATING": (60, "Attaching the network interface"),
    "RUNNING": (80, "Task running; the server is starting"),
}
#: seconds between "still starting" progress messages while a RUNNING task's server has not answered
PROGRESS_TICK = 5.0


def exit_status(snapshot: TaskSnapshot | None) -> int | None:
    """JupyterHub's poll() answer: None while running or unknown (unknown is not stopped)."""
    if snapshot is None or not snapshot.stopped:
        return None
    return snapshot.exit_code if snapshot.exit_code is not None else 0


def stopped_message(snapshot: TaskSnapshot) -> str:
    """ECS's own account of a stop, as the user reads it in the progress stream and on the page."""
    exit_code = "no exit code" if snapshot.exit_code is None else f"exit code {snapshot.exit_code}"
    return (
        f"The ECS task stopped ({snapshot.stop_code or 'no stop code'}, {exit_code}): "
        f"{snapshot.stopped_reason or 'no reason given'}"
    )


def task_stopped_error(snapshot: TaskSnapshot) -> web.HTTPError:
    """A failed spawn that JupyterHub logs without a traceback and shows with ECS's reason."""
    message = stopped_message(snapshot)
    error = web.HTTPError(500, message, reason="Server task stopped")
    error.jupyterhub_message = message  # type: ignore[attr-defined]  # what JupyterHub's progress stream shows
    return error


class ECSSpawner(ECSSpawnerConfig, Spawner):
    """Runs each user server as an ECS task chosen from the service catalog."""

    #: whether the shared EcsApi keeps calls under ECS's quota; only the stock-pattern baseline says no
    client_quotas: ClassVar[bool] = True

    task_arn = Unicode("")
    #: set once RunTask answered, so progress() can follow the task it names
    _submitted = Any()
    #: the warm pool's answer to this start (calliope_hub.ecs.launch.ClaimOutcome), None when no pool was asked
    _claim = Any(None, allow_none=True)
    #: whether the hub wants to hear that the task stopped (between start_polling and stop_polling)
    _polling = Bool(False)
    #: stop() ran and did not end with ECS's word that the task is gone: keep the token and its secrets
    _stop_unconfirmed = Bool(False)
    choice_service = Unicode("")
    choice_size = Unicode("")
    #: the server's own task-definition revision and its content hash (calliope_hub.ecs.taskdefs)
    task_definition = Unicode("")
    spec_hash = Unicode("")
    #: the user's EFS home (calliope_hub.ecs.storage): kept across stops, so every start reuses it
    home_access_point = Unicode("")
    home_file_system = Unicode("")
    #: the row ID (not the token) of the server's API token, so a restarted hub can still revoke it at stop
    api_token_id = Integer(0)
    #: the slot parameter the token went through (calliope_hub.ecs.slots); '' = the server's own parameters
    slot_parameter = Unicode("")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # The first spawner of a hub builds its runtime, so a bad setting stops the hub's start.
        self.runtime: HubRuntime = HubRuntime.of(self, client_quotas=self.client_quotas)
        self._watcher: TaskWatcher | None = None
        self._watching: asyncio.Future[None] | None = None

    @default("_submitted")
    def _default_submitted(self) -> asyncio.Event:
        return asyncio.Event()

    @default("ip")
    def _default_ip(self) -> str:
        # awsvpc: each task has its own interface, so the server binds all of its interfaces.
        return "0.0.0.0"

    @default("apply_user_options")
    def _default_apply_user_options(self) -> object:
        return _apply_catalog_choice

    # -- collaborators -----------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self.runtime.catalog

    async def _ecs(self) -> EcsApi:
        """The hub's one ECS client, once the runtime has started."""
        await self.runtime.start()
        assert self.runtime.api is not None
        return self.runtime.api

    async def _status(self) -> TaskWatcher:
        """The task's cluster's watcher; after the first call a plain attribute read."""
        if self._watcher is None or self._watcher.cluster != self.cluster:
            await self.runtime.start()
            self._watcher = self.runtime.watcher(self.cluster)
        return self._watcher

    def _placement(self) -> Placement:
        return Placement(
            cluster=self.cluster,
            subnets=tuple(self.subnets),
            security_groups=tuple(self.security_groups),
            assign_public_ip=self.assign_public_ip,
            launch_type=self.launch_type if not self.capacity_provider_strategy else None,
            capacity_provider_strategy=tuple(self.capacity_provider_strategy),
        )

    def choose(self, user_options: dict) -> Choice:
        """The catalog's answer to `user_options`, as a 400 the user can read when it is wrong."""
        try:
            return self.catalog.choose(user_options or {})
        except CatalogError as e:
            raise web.HTTPError(400, str(e), reason="Invalid server options") from None

    # -- options form --------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self) -> str:
        return self.catalog.options_form()

    @default("options_from_form")
    def _default_options_from_form(self) -> object:
        return lambda formdata: self.catalog.options_from_form(formdata)

    # -- state ---------------------------------------------------------------------------

    def get_state(self) -> dict:
        state = super().get_state()
        if self.task_definition:
            state.update(task_definition=self.task_definition, spec_hash=self.spec_hash)
        if self.slot_parameter:
            state.update(slot_parameter=self.slot_parameter)
        if self.home_access_point:
            state.update(home_access_point=self.home_access_point, home_file_system=self.home_file_system)
        if self.task_arn:
            state.update(
                api_token_id=self.api_token_id,
                task_arn=self.task_arn,
                cluster=self.cluster,
                service=self.choice_service,
                size=self.choice_size,
            )
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.task_arn = state.get("task_arn", "")
        self.cluster = state.get("cluster", self.cluster)
        self.choice_service = state.get("service", "")
        self.choice_size = state.get("size", "")
        self.task_definition = state.get("task_definition", "")
        self.spec_hash = state.get("spec_hash", "")
        self.home_access_point = state.get("home_access_point", "")
        self.home_file_system = state.get("home_file_system", "")
        self.slot_parameter = state.get("slot_parameter", "")
        self.api_token_id = int(state.get("api_token_id", 0))

    def clear_state(self) -> None:
        super().clear_state()
        self.task_arn = self.choice_service = self.choice_size = ""
        self.api_token_id = 0

    def _persist_state(self) -> None:
        """Commit the task ARN now, so a hub that dies mid-start can still find the task."""
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            # The session that holds the row (what JupyterHub's own Spawner.server setter uses), not the
            # deprecated Spawner.db, which warns once per spawner.
            orm_session_of(self.orm_spawner).session.commit()

    # -- start ---------------------------------------------------------------------------

    def _identity(self, choice: Choice) -> TaskIdentity:
        started = self.orm_spawner.started if self.orm_spawner is not None else None
        # One attempt per start: stable across botocore's retries, new for the next start.
        attempt = int(started.timestamp() * 1000) if started else 0
        return TaskIdentity(
            hub_id=self.hub_id,
            user=self.user.name,
            server_name=self.name,
            service=choice.service.name,
            size=choice.size_name,
            attempt=attempt,
        )

    def _launcher(self) -> Launcher:
        """The launch path (calliope_hub.ecs.launch) over this hub's shared parts."""
        runtime = self.runtime
        assert runtime.api is not None and runtime.task_definitions is not None and runtime.secrets is not None
        parts = LaunchParts(
            catalog=runtime.catalog,
            api=runtime.api,
            definitions=runtime.task_definitions,
            secrets=runtime.secrets,
            homes=runtime.homes,
            watcher=runtime.watcher(self.cluster),
            settings=runtime.settings.launch_settings(),
            warm=runtime.pool,  # the warm pools' keeper (calliope_hub.pool), when the hub has pools
        )
        return Launcher(parts, name=self._log_name, persist=self._keep_record)

    async def _run_task(self, choice: Choice) -> str:
        await self._ecs()
        # Throttles and outages are waited out while start_timeout leaves room for the task itself.
        deadline = asyncio.get_running_loop().time() + self.start_timeout * 0.8
        request = LaunchRequest(choice, self._identity(choice), self._placement(), self.get_env(), self.get_args())
        record, launcher = self._record(), self._launcher()
        try:
            return await launcher.launch(request, record, deadline)
        except LaunchError as e:
            raise web.HTTPError(e.status, str(e), reason=e.reason or None) from None
        finally:
            self._take_record(record)
            self._claim = launcher.claim

    def _record(self) -> ServerRecord:
        return ServerRecord(
            self.task_definition, self.spec_hash, self.home_access_point, self.home_file_system, self.slot_parameter
        )

    def _take_record(self, record: ServerRecord) -> None:
        self.task_definition, self.spec_hash = record.task_definition, record.spec_hash
        self.home_access_point, self.home_file_system = record.home_access_point, record.home_file_system
        self.slot_parameter = record.slot_parameter

    def _keep_record(self, record: ServerRecord) -> None:
        """The launcher made something that must outlive a failed start (a new home): committed now."""
        self._take_record(record)
        self._persist_state()

    async def start(self) -> str:
        choice = self.choose(self.user_options)
        self.port = choice.service.port
        loop = asyncio.get_running_loop()
        began = loop.time()
        outcome = "error"
        try:
            self.task_arn = await self._run_task(choice)
            self.choice_service, self.choice_size = choice.service.name, choice.size_name
            self.api_token_id = token_row_id(self.orm_spawner, self.api_token)  # revoked by ID after a restart
            self._persist_state()
            self._submitted.set()
            self.log.info("%s: task %s submitted", self._log_name, self.task_arn)
            snapshot = await self._wait_until_running()
            url = f"http://{snapshot.ip}:{self.port}"
            await self._wait_until_answering(url)
            outcome = "ok"
            return url
        finally:
            elapsed = loop.time() - began
            metrics.SPAWN_DURATION.labels(choice.service.name, choice.size_name, outcome).observe(elapsed)
            if outcome == "ok":
                emf.spawn_duration(choice.service.name, elapsed)
                start = "warm" if self._claim is not None and self._claim.arn else "cold"
                metrics.TIME_TO_READY.labels(choice.service.name, choice.size_name, start).observe(elapsed)

    async def _wait_until_running(self) -> TaskSnapshot:
        watcher = await self._status()
        watcher.watch(self.task_arn)
        snapshot = await watcher.wait_for(self.task_arn, lambda s: s.running, self.start_timeout)
        if snapshot.stopped:
            raise task_stopped_error(snapshot)
        return snapshot

    async def _wait_until_answering(self, url: str) -> None:
        """The server's first HTTP answer, raced against its task stopping.

        JupyterHub's own wait (User._wait_up) knows only the clock, so a task that dies after
        RUNNING would hold the spawn for http_timeout and end in a generic timeout. Waiting here,
        on the URL JupyterHub then checks, ends the spawn within a sweep of the stop, with ECS's
        reason; JupyterHub's check afterwards answers at once.
        """
        if self.server is None:  # outside a hub: nobody routes to the server, nobody checks it
            return
        settings = self.user.settings
        context = make_ssl_context(
            settings.get("internal_ssl_key"), settings.get("internal_ssl_cert"), cafile=settings.get("internal_ssl_ca")
        )
        target = url + url_path_join(self.server.base_url, "api")
        watcher = await self._status()
        answering = asyncio.ensure_future(wait_for_http_server(target, timeout=self.http_timeout, ssl_context=context))
        stopping = asyncio.ensure_future(watcher.wait_for(self.task_arn, lambda s: s.stopped, self.http_timeout + 1))
        try:
            await asyncio.wait({answering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (answering, stopping):
                waiter.cancel()
            await asyncio.gather(answering, stopping, return_exceptions=True)
        if stopping.done() and not stopping.cancelled() and stopping.exception() is None:
            raise task_stopped_error(stopping.result())
        answering.result()  # JupyterHub's TimeoutError when the server never answered

    async def progress(self) -> AsyncIterator[dict]:
        await self._submitted.wait()
        yield {"progress": 10, "message": "Task submitted to ECS"}
        if self._claim is not None and self._claim.message:  # the warm pool's word: claimed, or why not
            yield {"progress": 15, "message": self._claim.message}
        watcher = await self._status()
        seen = ""
        while True:
            snapshot = await watcher.wait_for(self.task_arn, _status_other_than(seen), self.start_timeout)
            seen = snapshot.last_status
            if snapshot.stopped:
                yield {"progress": 100, "message": stopped_message(snapshot)}
                return
            if seen in LIFECYCLE_PROGRESS:
                percent, message = LIFECYCLE_PROGRESS[seen]
                yield {"progress": percent, "message": f"{seen}: {message}"}
            if seen == "RUNNING":
                break
        async for event in self._server_starting(watcher):
            yield event

    async def _server_starting(self, watcher: TaskWatcher) -> AsyncIterator[dict]:
        """While the task runs and its server has not answered: say so, and say why when it stops.

        JupyterHub stops reading progress when the spawn ends, so this loop ends with it.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            try:
                snapshot = await watcher.wait_for(self.task_arn, lambda s: s.stopped, PROGRESS_TICK)
            except TimeoutError:
                waited = loop.time() - began
                yield {"progress": 90, "message": f"RUNNING: waiting for the server to answer ({waited:.0f}s)"}
                continue
            yield {"progress": 100, "message": stopped_message(snapshot)}
            return

    # -- re-attach after a hub restart ---------------------------------------------------------

    async def get_url(self) -> str:
        """Where the server answers; JupyterHub's init_spawners asks before it checks a restored server.

        A spawn in flight when the hub died has its task ARN in state (committed as soon as
        RunTask answered) but no address in the database. Waiting here for ECS's RUNNING and the
        server's answer completes that spawn instead of failing JupyterHub's check at a stale URL.
        A task that stops meanwhile keeps the stored URL, which the check then fails, and
        User.stop finds the task STOPPED.
        """
        stored = str(await super().get_url())
        service = self.catalog.services.get(self.choice_service)
        if not self.task_arn or service is None:
            return stored
        self.port = service.port
        try:
            snapshot = await self._wait_until_running()
            host = f"http://{snapshot.ip}:{self.port}"
            if stored.startswith(host + "/"):
                return stored  # a server that was up: JupyterHub's own check follows
            await self._wait_until_answering(host)
        except (web.HTTPError, TimeoutError) as e:
            self.log.warning("%s: task %s did not come back: %s", self._log_name, self.task_arn, e)
            return stored
        assert self.server is not None
        self.log.info("%s: in-flight start of task %s completed after a hub restart", self._log_name, self.task_arn)
        return host + self.server.base_url

    # -- poll ----------------------------------------------------------------------------

    async def poll(self) -> int | None:
        """A read of the watcher's snapshot: the same one the stop callback was handed."""
        if not self.task_arn:
            return 0
        watcher = await self._status()
        snapshot = watcher.get(self.task_arn)
        if snapshot is None:
            snapshot = await self._first_status(watcher)
        return exit_status(snapshot)

    async def _first_status(self, watcher: TaskWatcher) -> TaskSnapshot | None:
        """A task adopted after a hub restart: its first sweep answers for everyone at once."""
        watcher.watch(self.task_arn)
        try:
            return await watcher.wait_for(self.task_arn, lambda s: True, self.restore_timeout)
        except TimeoutError:
            return None

    def start_polling(self) -> None:
        """Replace JupyterHub's timer per spawner with the cluster watcher's callback."""
        self._polling = True
        if not self.task_arn:
            return
        if self._watcher is not None and self._watcher.cluster == self.cluster:
            self._watcher.watch(self.task_arn, on_stopped=self._on_task_stopped)
        else:  # called before any poll() or start() of this spawner object (a re-adoption)
            self._watching = asyncio.ensure_future(self._watch_running_task())

    def stop_polling(self) -> None:
        """A deliberate stop follows; its STOPPED must not look like a crash to the hub."""
        self._polling = False
        super().stop_polling()

    async def _watch_running_task(self) -> None:
        (await self._status()).watch(self.task_arn, on_stopped=self._on_task_stopped)

    async def _on_task_stopped(self, snapshot: TaskSnapshot) -> None:
        if not self._polling:
            return
        self.log.warning(
            "%s: task %s stopped: %s", self._log_name, snapshot.arn, snapshot.stopped_reason or snapshot.stop_code
        )
        await self.poll_and_notify()

    # -- stop ----------------------------------------------------------------------------

    async def stop(self, now: bool = False) -> None:
        """Return only once ECS said the task is STOPPED (or no longer knows it).

        JupyterHub revokes the server's API token and forgets the server right after this returns,
        and forgets it too when this raises (User.stop's `finally`). So nothing ECS did not confirm
        is reported: a StopTask that is throttled or meets an outage is sent again with backoff,
        and the wait for STOPPED outlasts ECS trouble, while the hub keeps the server's record and
        its API answers 202 (stop pending). `now` is accepted and changes nothing: a token must
        not be revoked while its task still runs.
        """
        if not self.task_arn:  # a start that failed before RunTask answered: run_post_stop_hook cleans up
            return
        self._stop_unconfirmed = True
        watcher = await self._status()
        watcher.watch(self.task_arn)
        while True:
            known = watcher.get(self.task_arn)
            if known is not None and known.stopped:
                self.log.info("%s: task %s is STOPPED", self._log_name, self.task_arn)
                break
            if not await self._stop_task() or await self._stopped_within(watcher):
                break
        watcher.unwatch(self.task_arn)
        self._stop_unconfirmed = False

    async def run_post_stop_hook(self) -> None:
        """The task is gone: its secrets go from SSM and, after a hub restart, its API token is revoked.

        Here and not in stop(), because JupyterHub awaits this on every stop path (User.stop's
        `finally`, before clear_state), while it calls stop() only when poll() says the task still
        runs: a task that crashed, or one a restarted hub found stopped, never gets a stop(). Only
        a stop() that was interrupted before ECS confirmed the task gone keeps both.
        """
        if self._stop_unconfirmed:
            self.log.warning("%s: stop not confirmed by ECS: the server's token and secrets are kept", self._log_name)
        else:
            await self._ecs()
            await self._launcher().forget_secrets(self.user.name, self.name, self._record())
            self._revoke_restored_token()
        self._stop_unconfirmed = False
        await maybe_future(super().run_post_stop_hook())

    def _revoke_restored_token(self) -> None:
        """After a hub restart `api_token` is empty, so JupyterHub's own revocation finds nothing (hub/tokens.py)."""
        if not self.api_token and self.api_token_id and self.orm_spawner is not None:
            revoked = revoke_by_row_id(self.orm_spawner, self.api_token_id, self.user.name)
            if revoked is not None:
                self.log.info("%s: API token %s revoked with its stopped task", self._log_name, revoked)
        self.api_token_id = 0

    # -- delete ---------------------------------------------------------------------------

    async def delete_forever(self) -> None:
        """The user is deleted: their EFS home's access point goes too when the catalog's storage says so.

        JupyterHub deletes the default server only with its user (the API refuses to remove it
        alone), so that call is the user's deletion; a named server shares the user's home, so
        removing one keeps it. The files stay on the file system either way (docs/catalog.md).
        """
        if self.name:
            return
        rows = getattr(getattr(self.user, "orm_user", None), "orm_spawners", {})
        states = [self.get_state(), *((row.state or {}) for row in rows.values())]
        doomed = homes_to_delete(self.catalog.services.values(), states)
        if not doomed:
            return
        await self.runtime.start()
        homes = self.runtime.homes
        assert homes is not None
        for access_point in doomed:
            try:
                await homes.delete(access_point)
            except StorageError as e:
                self.log.error("%s: home %s of a deleted user not deleted: %s", self._log_name, access_point, e)
                continue
            self.log.info("%s: deleted the access point %s of a deleted user", self._log_name, access_point)

    async def _stop_task(self) -> bool:
        """StopTask until ECS takes it; False when ECS no longer knows the task (it is gone)."""
        api = await self._ecs()
        delay = 1.0
        while True:
            try:
                return await api.stop_task(self.cluster, self.task_arn, STOP_REASON) is not None
            except EcsApiError as e:
                # Giving up would make JupyterHub forget a running task: every error is retried.
                log = self.log.warning if transient(e) else self.log.error
                log("%s: StopTask of %s not taken (%s); again in %.1fs", self._log_name, self.task_arn, e, delay)
            await asyncio.sleep(delay)
            delay = next_delay(delay)

    async def _stopped_within(self, watcher: TaskWatcher) -> bool:
        """Whether ECS reported STOPPED within stop_wait_timeout (past it, StopTask is sent again)."""
        try:
            await watcher.wait_for(self.task_arn, lambda s: s.stopped, self.stop_wait_timeout)
        except TimeoutError:
            self.log.warning(
                "%s: task %s not STOPPED after %.0fs; asking ECS again",
                self._log_name,
                self.task_arn,
                self.stop_wait_timeout,
            )
            return False
        return True


def _status_other_than(seen: str) -> Callable[[TaskSnapshot], bool]:
    return lambda snapshot: snapshot.last_status != seen


def _apply_catalog_choice(spawner: ECSSpawner, user_options: dict) -> None:
    """JupyterHub's apply_user_options hook: a bad choice is a 400 before anything starts."""
    spawner.choose(user_options)
