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
from tornado import web
from traitlets import Any, Bool, Unicode, default

from .catalog import Catalog, CatalogError, Choice, Placement, TaskIdentity, run_task_request
from .ecs.api import EcsApi, EcsApiError
from .ecs.secrets import SecretStoreError, ServerSecrets, server_prefix, split_environment
from .ecs.snapshot import TaskSnapshot
from .ecs.status import TaskWatcher
from .ecs.taskdefs import ServerLabels, server_definition, server_family
from .ecs.taskdefs import spec_hash as content_hash
from .hub.config import ECSSpawnerConfig
from .hub.runtime import HubRuntime
from .observability import emf, metrics

STOP_REASON = "Stopped by Calliope Hub"

#: lastStatus -> (progress %, what the user is told while the task is in it)
LIFECYCLE_PROGRESS: dict[str, tuple[int, str]] = {
    "PROVISIONING": (20, "Provisioning capacity and a network interface"),
    "PENDING": (40, "Pulling the image"),
    "ACTIVATING": (60, "Attaching the network interface"),
    "RUNNING": (80, "Task running; waiting for the server to answer"),
}


def exit_status(snapshot: TaskSnapshot | None) -> int | None:
    """JupyterHub's poll() answer: None while running or unknown (unknown is not stopped)."""
    if snapshot is None or not snapshot.stopped:
        return None
    return snapshot.exit_code if snapshot.exit_code is not None else 0


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

    def clear_state(self) -> None:
        super().clear_state()
        self.task_arn = self.choice_service = self.choice_size = ""

    def _persist_state(self) -> None:
        """Commit the task ARN now, so a hub that dies mid-start can still find the task."""
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

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

    async def _server_definition(self, choice: Choice, secrets: ServerSecrets) -> str:
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
        if self.task_definition and self.spec_hash:
            definitions.remember(self.spec_hash, self.task_definition)
        try:
            self.task_definition = await definitions.ensure(request)
        except EcsApiError as e:
            raise web.HTTPError(503, f"ECS did not register the server's task definition: {e}") from None
        self.spec_hash = content_hash(request)
        return self.task_definition

    async def _store_secrets(self, secret_env: dict[str, str]) -> ServerSecrets:
        """Write this start's token to the server's parameters, before anything names them."""
        secrets = ServerSecrets.plan(self._secret_prefix(), secret_env)
        assert self.runtime.secrets is not None
        try:
            await self.runtime.secrets.put(secrets)
        except SecretStoreError as e:
            raise web.HTTPError(503, f"The server's token could not be stored: {e}") from None
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
        plain_env, secret_env = split_environment(self.get_env(), self.runtime.settings.secret_environment)
        secrets = await self._store_secrets(secret_env)
        definition = await self._server_definition(choice, secrets)
        local = self.runtime.settings.local_commands
        request = run_task_request(
            choice, self._identity(choice), self._placement(), plain_env, self.get_args(), local=local
        )
        request["taskDefinition"] = definition  # the server's own revision, not the catalog family's
        try:
            answer = await api.run_task(request)
        except EcsApiError as e:
            raise web.HTTPError(503, f"ECS did not start the task: {e}") from None
        if not answer.get("tasks"):
            reasons = "; ".join(f.get("reason", "?") for f in answer.get("failures", []))
            raise web.HTTPError(503, f"ECS did not start the task: {reasons or 'no task returned'}")
        return str(answer["tasks"][0]["taskArn"])

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
            outcome = "ok"
            return f"http://{snapshot.ip}:{self.port}"
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
            reason = snapshot.stopped_reason or snapshot.stop_code or "no reason given"
            raise web.HTTPError(500, f"The ECS task stopped while starting: {reason}")
        return snapshot

    async def progress(self) -> AsyncIterator[dict]:
        await self._submitted.wait()
        yield {"progress": 10, "message": "Task submitted to ECS"}
        watcher = await self._status()
        seen = ""
        while True:
            snapshot = await watcher.wait_for(self.task_arn, _status_other_than(seen), self.start_timeout)
            seen = snapshot.last_status
            if snapshot.stopped:
                return
            if seen in LIFECYCLE_PROGRESS:
                percent, message = LIFECYCLE_PROGRESS[seen]
                yield {"progress": percent, "message": f"{seen}: {message}"}
            if seen == "RUNNING":
                return

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
        if not self.task_arn:
            await self._ecs()
            await self._forget_secrets()  # a start that failed before RunTask answered
            return
        watcher = await self._status()
        known = watcher.get(self.task_arn)
        if known is not None and known.stopped:
            self.log.info("%s: task %s already STOPPED; no StopTask", self._log_name, self.task_arn)
        elif await self._stop_task() and not now:
            await self._wait_until_stopped(watcher)
        watcher.unwatch(self.task_arn)
        await self._forget_secrets()

    async def _stop_task(self) -> bool:
        """StopTask; False when ECS no longer knows the task."""
        api = await self._ecs()
        try:
            stopping = await api.stop_task(self.cluster, self.task_arn, STOP_REASON)
        except EcsApiError as e:
            if not e.task_gone:
                raise
            stopping = None
        if stopping is None:
            self.log.info("%s: task %s was already gone", self._log_name, self.task_arn)
            return False
        return True

    async def _wait_until_stopped(self, watcher: TaskWatcher) -> None:
        watcher.watch(self.task_arn)
        try:
            await watcher.wait_for(self.task_arn, lambda s: s.stopped, self.stop_wait_timeout)
        except TimeoutError:
            self.log.warning(
                "%s: task %s not STOPPED after %.0fs; ECS will finish stopping it",
                self._log_name,
                self.task_arn,
                self.stop_wait_timeout,
            )


def _status_other_than(seen: str) -> Callable[[TaskSnapshot], bool]:
    return lambda snapshot: snapshot.last_status != seen


def _apply_catalog_choice(spawner: ECSSpawner, user_options: dict) -> None:
    """JupyterHub's apply_user_options hook: a bad choice is a 400 before anything starts."""
    spawner.choose(user_options)
