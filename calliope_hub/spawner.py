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
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar, TypeVar

from jupyterhub.spawner import Spawner
from jupyterhub.utils import make_ssl_context, url_path_join, wait_for_http_server
from sqlalchemy import inspect as orm_session_of
from tornado import web
from traitlets import Any, Bool, Unicode, default

from .catalog import Catalog, CatalogError, Choice, Placement, TaskIdentity, run_task_request
from .ecs.api import THROTTLE_CODES, EcsApi, EcsApiError
from .ecs.secrets import SecretStoreError, ServerSecrets, server_prefix, split_environment
from .ecs.snapshot import TaskSnapshot
from .ecs.status import TaskWatcher
from .ecs.storage import StorageError
from .ecs.taskdefs import ServerLabels, server_definition, server_family, with_home
from .ecs.taskdefs import spec_hash as content_hash
from .hub.config import ECSSpawnerConfig
from .hub.runtime import HubRuntime
from .observability import emf, metrics

STOP_REASON = "Stopped by Calliope Hub"
#: seconds between retries of a StopTask or RunTask that ECS did not take: doubled from 1 up to this, jittered
RETRY_CAP = 30.0
#: ECS's own server-side failure codes; any other "...Exception" code is the request's fault and is not retried
_SERVER_SIDE_CODES = frozenset({"ServerException", "ServiceUnavailableException", "InternalFailure"})

T = TypeVar("T")

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


def transient(error: EcsApiError | SecretStoreError) -> bool:
    """A throttle, an AWS server-side failure or a broken connection: worth the same request again."""
    if isinstance(error, EcsApiError):
        code, throttled = error.code, error.throttled
    else:  # SecretStoreError's documented form: "Operation: Code: message"
        parts = str(error).split(": ")
        code = parts[1] if len(parts) > 2 else ""
        throttled = code in THROTTLE_CODES
    return throttled or code in _SERVER_SIDE_CODES or not code.endswith("Exception")


def next_delay(delay: float) -> float:
    """Exponential backoff with jitter in its upper half, so retrying hubs do not march in step."""
    return min(RETRY_CAP, delay * 2) * random.uniform(0.5, 1.0)


class ECSSpawner(ECSSpawnerConfig, Spawner):
    """Runs each user server as an ECS task chosen from the service catalog."""

    #: whether the shared EcsApi keeps calls under ECS's quota; only the stock-pattern baseline says no
    client_quotas: ClassVar[bool] = True

    task_arn = Unicode("")
    #: set once RunTask answered, so progress() can follow the task it names
    _submitted = Any()
    #: whether the hub wants to hear that the task stopped (between start_polling and stop_polling)
    _polling = Bool(False)
    choice_service = Unicode("")
    choice_size = Unicode("")
    #: the server's own task-definition revision and its content hash (calliope_hub.ecs.taskdefs)
    task_definition = Unicode("")
    spec_hash = Unicode("")
    #: the user's EFS home (calliope_hub.ecs.storage): kept across stops, so every start reuses it
    home_access_point = Unicode("")
    home_file_system = Unicode("")

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
        if self.home_access_point:
            state.update(home_access_point=self.home_access_point, home_file_system=self.home_file_system)
        if self.task_arn:
            state.update(
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

    def clear_state(self) -> None:
        super().clear_state()
        self.task_arn = self.choice_service = self.choice_size = ""

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

    def _secret_prefix(self) -> str:
        settings = self.runtime.settings
        return server_prefix(settings.secret_root, self.hub_id, self.user.name, self.name)

    async def _server_definition(self, choice: Choice, secrets: ServerSecrets, deadline: float) -> str:
        """This server's task definition (its own family: its secrets' names), registered only when new."""
        settings, definitions = self.runtime.settings, self.runtime.task_definitions
        assert definitions is not None
        base = self.catalog.task_definition(choice.service.name, local=settings.local_commands)
        family = server_family(choice.service.family, self.hub_id, self.user.name, self.name)
        request = server_definition(
            base,
            family,
            secrets.references,
            execution_role_arn=settings.execution_role_arn,
            task_role_arn=settings.task_role_arn,
            labels=ServerLabels(self.hub_id, self.user.name, self.name),
        )
        storage, homes = choice.service.storage, self.runtime.homes
        if storage is not None and homes is not None:
            placed = storage.file_system_ids == ("auto",) or self.home_file_system in storage.file_system_ids
            if not (self.home_access_point and placed):  # none yet, or the catalog moved the user's shard
                try:  # idempotent by ClientToken: a retry or another server of this user gets the same one
                    home = await homes.ensure(storage, self.user.name)
                except StorageError as e:
                    raise web.HTTPError(503, f"Your home directory could not be prepared: {e}") from None
                self.home_access_point, self.home_file_system = home.access_point_id, home.file_system_id
                self._persist_state()  # recorded before anything else can fail
            request = with_home(request, storage.mount_path, self.home_file_system, self.home_access_point)
        if self.task_definition and self.spec_hash:
            definitions.remember(self.spec_hash, self.task_definition)
        self.task_definition = await self._until_taken(
            "RegisterTaskDefinition", lambda: definitions.ensure(request), deadline
        )
        self.spec_hash = content_hash(request)
        return self.task_definition

    async def _store_secrets(self, secret_env: dict[str, str], deadline: float) -> ServerSecrets:
        """Write this start's token to the server's parameters, before anything names them."""
        secrets = ServerSecrets.plan(self._secret_prefix(), secret_env)
        store = self.runtime.secrets
        assert store is not None
        await self._until_taken("PutParameter", lambda: store.put(secrets), deadline)
        return secrets

    async def _forget_secrets(self) -> None:
        """Delete the server's parameters once its task is gone (its token is revoked by the hub too)."""
        prefix, store = self._secret_prefix(), self.runtime.secrets
        assert store is not None
        try:
            await store.delete([f"{prefix}/{name}" for name in self.runtime.settings.secret_environment])
        except SecretStoreError as e:
            self.log.warning("%s: parameters under %s not deleted: %s", self._log_name, prefix, e)

    async def _run_task(self, choice: Choice) -> str:
        api = await self._ecs()
        # Throttles and outages are waited out while start_timeout leaves room for the task itself.
        deadline = asyncio.get_running_loop().time() + self.start_timeout * 0.8
        plain_env, secret_env = split_environment(self.get_env(), self.runtime.settings.secret_environment)
        secrets = await self._store_secrets(secret_env, deadline)
        definition = await self._server_definition(choice, secrets, deadline)
        local = self.runtime.settings.local_commands
        request = run_task_request(
            choice, self._identity(choice), self._placement(), plain_env, self.get_args(), local=local
        )
        request["taskDefinition"] = definition  # the server's own revision, not the catalog family's
        # The same request, so the same clientToken: a retry whose first try did start a task gets that task.
        answer = await self._until_taken("RunTask", lambda: api.run_task(request), deadline)
        if not answer.get("tasks"):
            reasons = "; ".join(f.get("reason", "?") for f in answer.get("failures", []))
            raise web.HTTPError(503, f"ECS did not start the task: {reasons or 'no task returned'}")
        return str(answer["tasks"][0]["taskArn"])

    async def _until_taken(self, what: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`call` again after throttles and ECS outages, with backoff, until `deadline` (the loop's clock).

        A user must never see ECS's quota as a failed spawn; a request ECS refuses for its own
        content (a bad subnet, no capacity) fails at once with ECS's message.
        """
        loop, delay = asyncio.get_running_loop(), 1.0
        while True:
            try:
                return await call()
            except (EcsApiError, SecretStoreError) as e:
                if not transient(e) or loop.time() + delay > deadline:
                    raise web.HTTPError(503, f"AWS did not take {what}: {e}", reason="AWS unavailable") from None
                self.log.warning("%s: %s not taken (%s); again in %.1fs", self._log_name, what, e, delay)
            await asyncio.sleep(delay)
            delay = next_delay(delay)

    async def start(self) -> str:
        choice = self.choose(self.user_options)
        self.port = choice.service.port
        loop = asyncio.get_running_loop()
        began = loop.time()
        outcome = "error"
        try:
            self.task_arn = await self._run_task(choice)
            self.choice_service, self.choice_size = choice.service.name, choice.size_name
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
        if not self.task_arn:
            await self._ecs()
            await self._forget_secrets()  # a start that failed before RunTask answered
            return
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
        await self._forget_secrets()

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
