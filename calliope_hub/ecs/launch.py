"""The launch path: a catalog choice to a task ECS took, with no secret in the ECS API.

The spawner (calliope_hub.spawner) speaks JupyterHub's Spawner API and nothing else; how a
server reaches ECS lives here, below the hub layer (no jupyterhub, no tornado):

1. the server's secrets (its JupyterHub API token) go to SSM Parameter Store, never into
   RunTask overrides (calliope_hub.ecs.secrets);
2. its task definition names them in `secrets` (calliope_hub.ecs.taskdefs), with the user's
   EFS home mounted when the service has one (calliope_hub.ecs.storage);
3. RunTask, with the same clientToken on every retry, so a retry whose first try did start a
   task gets that task.

Every AWS call is retried through throttles and outages until a deadline inside
start_timeout (`until_taken`): a user never sees ECS's quota as a failed spawn, and a request
AWS refuses for its own content fails at once with AWS's words, as a `LaunchError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..catalog import Catalog, Choice, Placement, TaskIdentity, encode_tag_value, run_task_request
from .api import EcsApi, EcsApiError
from .secrets import (
    JUPYTERHUB_SECRET_ENV,
    SecretStore,
    SecretStoreError,
    ServerSecrets,
    server_prefix,
    split_environment,
)
from .slots import Slot, SlotKey, secrets_resolved, slot_parameter
from .status import TaskNotWatched, TaskWatcher
from .storage import Homes, StorageError
from .taskdefs import (
    ServerLabels,
    TaskDefinitions,
    server_definition,
    server_family,
    slot_family,
    spec_hash,
    with_home,
)

log = logging.getLogger(__name__)

#: seconds between retries of a call AWS did not take: doubled from 1 up to this, jittered
RETRY_CAP = 30.0
#: seconds a slot's lease waits for its task between checks; it holds through every timeout (unknown is not resolved)
SLOT_HOLD_CHECK = 300.0
#: seconds a slot found busy at vetting is waited for inline before the spawn takes (or grows) another
SLOT_VET_WAIT = 10.0
#: AWS's own server-side failure codes; any other "...Exception" code is the request's fault and is not retried
_SERVER_SIDE_CODES = frozenset({"ServerException", "ServiceUnavailableException", "InternalFailure"})

T = TypeVar("T")


class LaunchError(Exception):
    """A launch that did not happen: `status` is what the hub answers (503: AWS's trouble).

    `unsure`: AWS never answered (retries ran out on throttles or an outage), so the call may
    have taken effect; a RunTask then may have started a task nobody watches.
    """

    def __init__(self, status: int, message: str, reason: str = "", *, unsure: bool = False):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.unsure = unsure


#: what a call to AWS may raise that until_taken judges
AwsError = EcsApiError | SecretStoreError | StorageError


def transient(error: AwsError) -> bool:
    """A throttle, an AWS server-side failure or a broken connection: worth the same request again.

    SSM and EFS errors carry their service's own rule; ECS's codes all end in "Exception", so
    any other code (a botocore or aiohttp exception's name) means ECS never answered.
    """
    if not isinstance(error, EcsApiError):
        return error.transient
    code = error.code
    return error.throttled or code in _SERVER_SIDE_CODES or not code.endswith("Exception")


def next_delay(delay: float) -> float:
    """Exponential backoff with jitter in its upper half, so retrying hubs do not march in step."""
    return min(RETRY_CAP, delay * 2) * random.uniform(0.5, 1.0)


async def until_taken(
    what: str, call: Callable[[], Awaitable[T]], deadline: float, name: str = "", *, failure: str = ""
) -> T:
    """`call` again after throttles and AWS outages, with backoff, until `deadline` (the loop's clock).

    A request AWS refuses for its own content (a bad subnet, no capacity) fails at once, as a
    LaunchError saying `failure` (what the user reads) or that AWS did not take `what`.
    """
    loop, delay = asyncio.get_running_loop(), 1.0
    while True:
        try:
            return await call()
        except (EcsApiError, SecretStoreError, StorageError) as e:
            if not transient(e) or loop.time() + delay > deadline:
                message = f"{failure}: {e}" if failure else f"AWS did not take {what}: {e}"
                raise LaunchError(503, message, reason="AWS unavailable", unsure=transient(e)) from None
            log.warning("%s: %s not taken (%s); again in %.1fs", name, what, e, delay)
        await asyncio.sleep(delay)
        delay = next_delay(delay)


@dataclass(frozen=True)
class LaunchSettings:
    """The hub's settings the launch path reads (calliope_hub.hub.config.RuntimeSettings.launch_settings)."""

    hub_id: str
    secret_root: str
    secret_environment: tuple[str, ...]
    local_commands: bool
    execution_role_arn: str = ""
    task_role_arn: str = ""


@dataclass(frozen=True)
class LaunchParts:
    """The hub's shared collaborators, all owned and closed by the HubRuntime."""

    catalog: Catalog
    api: EcsApi
    definitions: TaskDefinitions
    secrets: SecretStore
    homes: Homes | None
    watcher: TaskWatcher
    settings: LaunchSettings
    #: warm tasks to claim before launching one (the pool's seam); None = always launch
    warm: WarmPool | None = None


@dataclass
class ServerRecord:
    """What a launch keeps in the spawner's state: the server's definition and the user's home.

    The home is kept across stops so every start reuses it; the launcher's `persist` (the
    spawner's commit of its state) gets the record as soon as a new home exists, before
    anything else can fail.
    """

    task_definition: str = ""
    spec_hash: str = ""
    home_access_point: str = ""
    home_file_system: str = ""
    #: the slot parameter the last start's token went through ('' = the server's own parameters)
    slot_parameter: str = ""


@dataclass(frozen=True)
class ClaimOutcome:
    """A claim's answer to the spawn: the claimed task's ARN, or None (start cold), and what to tell the user."""

    arn: str | None
    message: str = ""


class WarmPool(Protocol):
    """The seam for warm tasks (calliope_hub.pool): a task already running for this choice, or a cold start.

    `environment` is JupyterHub's whole environment, the token included: a claimed task must get it
    without the ECS API, as a launched one does (docs/security.md). `args` are the spawner's
    (c.Spawner.args), which a cold start puts on the command.
    """

    async def claim(
        self, choice: Choice, identity: TaskIdentity, environment: Mapping[str, str], args: Sequence[str]
    ) -> ClaimOutcome: ...


@dataclass(frozen=True)
class LaunchRequest:
    """One server start: who, what, where, and the environment JupyterHub made for it."""

    choice: Choice
    identity: TaskIdentity
    placement: Placement
    environment: Mapping[str, str] = field(repr=False)  # it holds the server's API token: never in a repr
    args: Sequence[str]

    @property
    def labels(self) -> ServerLabels:
        return ServerLabels(self.identity.hub_id, self.identity.user, self.identity.server_name)


def slot_token(secret_env: Mapping[str, str]) -> str | None:
    """The one value a slot carries: JupyterHub's token under its names, and no other secret; else None."""
    values = set(secret_env.values())
    if len(values) != 1 or not set(secret_env) <= set(JUPYTERHUB_SECRET_ENV):
        return None
    return values.pop()


class Launcher:
    """Launches one server's tasks; the spawner makes one per start with the runtime's parts."""

    def __init__(
        self, parts: LaunchParts, *, name: str = "", persist: Callable[[ServerRecord], None] = lambda record: None
    ):
        self.parts = parts
        self.name = name  # JupyterHub's _log_name, so our lines name the server
        self._persist = persist
        #: the warm pool's answer to the last launch (None: no pool asked), for the spawner's progress and metrics
        self.claim: ClaimOutcome | None = None

    def _prefix(self, user: str, server: str) -> str:
        """Where a server's own parameters live: under this hub's secret root."""
        settings = self.parts.settings
        return server_prefix(settings.secret_root, settings.hub_id, user, server)

    async def launch(self, request: LaunchRequest, record: ServerRecord, deadline: float) -> str:
        """A warm task claimed for `request`, else RunTask (after its secrets and definition): the task's ARN.

        A service without per-user storage goes through a slot definition (calliope_hub.ecs.slots)
        when the only secret is JupyterHub's token; anything else through the server's own.
        """
        settings, warm = self.parts.settings, self.parts.warm
        if warm is not None:
            outcome = await warm.claim(request.choice, request.identity, request.environment, request.args)
            self.claim = outcome
            if outcome.arn is not None:
                return outcome.arn
        plain_env, secret_env = split_environment(request.environment, settings.secret_environment)
        token = slot_token(secret_env)
        # No slot until one is leased: a start that fails from here on leaves forget_secrets the server's own
        # parameters to delete, not a slot's (a slot's lease clears its own).
        record.slot_parameter = ""
        if request.choice.service.storage is None and token is not None:
            return await self._launch_in_slot(request, plain_env, token, record, deadline)
        secrets = ServerSecrets.plan(self._prefix(request.identity.user, request.identity.server_name), secret_env)
        store = self.parts.secrets
        await until_taken("PutParameter", lambda: store.put(secrets), deadline, self.name)
        definition = await self._server_definition(request, secrets, record, deadline)
        return await self._run_task(request, plain_env, definition, deadline)

    # ---- slots: the shared definition, one lease per spawn in flight ------------------------

    async def _launch_in_slot(
        self, request: LaunchRequest, plain_env: Mapping[str, str], token: str, record: ServerRecord, deadline: float
    ) -> str:
        """Lease a slot, write the token into its parameter, RunTask with its definition, hold until ECS read it."""
        parts = self.parts
        store, pool = parts.secrets, parts.definitions.slots
        # SSM's write quota is the narrowest step (ecsfacts): queue for it first, so only spawns about to
        # write hold a slot, and the pool stays as small as the writes in flight.
        await store.wait_turn("PutParameter")
        slot = await self._lease(request.choice, deadline)
        prepaid = True  # the first try spends the token taken above; a retry takes its own

        async def put() -> None:
            nonlocal prepaid
            paid, prepaid = prepaid, False
            await store.put_value(slot.parameter, token, prepaid=paid)

        try:
            await until_taken("PutParameter", put, deadline, self.name)
            arn = await self._run_task(request, plain_env, slot.definition, deadline)
        except BaseException as e:  # a refusal, or the spawn cancelled (JupyterHub's start_timeout) mid-call
            await asyncio.shield(self._clear(slot))
            # An unanswered (or cancelled) RunTask may have started a task that will read the parameter: vet first.
            unsure = not isinstance(e, LaunchError) or e.unsure
            pool.suspect(slot) if unsure else pool.give_back(slot)
            raise
        # No spec_hash: the slot's ARN must never be remembered as a per-server definition's.
        record.task_definition, record.spec_hash, record.slot_parameter = slot.definition, "", slot.parameter
        pool.hold(self._release_when_read(slot, [arn]), f"calliope slot {slot.parameter}")
        return arn

    def _slot_definition(self, choice: Choice, index: int) -> dict[str, Any]:
        """Slot `index` of (service, size): the catalog's definition naming the slot's parameter."""
        settings = self.parts.settings
        base = self.parts.catalog.task_definition(choice.service.name, local=settings.local_commands)
        parameter = slot_parameter(settings.secret_root, settings.hub_id, choice.service.name, choice.size_name, index)
        family = slot_family(choice.service.family, settings.hub_id, choice.size_name, index)
        definition = server_definition(
            base,
            family,
            [{"name": name, "valueFrom": parameter} for name in JUPYTERHUB_SECRET_ENV],
            execution_role_arn=settings.execution_role_arn,
            task_role_arn=settings.task_role_arn,
        )
        definition["tags"] = [
            {"key": "calliope:hub", "value": encode_tag_value(settings.hub_id)},
            {"key": "calliope:slot", "value": encode_tag_value(f"{choice.service.name}/{choice.size_name}/{index}")},
        ]
        return definition

    async def _lease(self, choice: Choice, deadline: float) -> Slot:
        """A slot no task can still read: a free one, else a vetted one, else the next one, registered if new."""
        pool = self.parts.definitions.slots
        shared = self._slot_definition(choice, 0)
        key = SlotKey(choice.service.name, choice.size_name, spec_hash({**shared, "family": ""}))
        while True:
            slot = pool.take(key)
            if slot is not None:
                return slot
            slot = pool.take_unvetted(key)
            if slot is None:
                slot = await self._grow(choice, key, deadline)
            try:
                idle = await self._idle(slot, deadline)
            except BaseException:  # failed, or cancelled (JupyterHub cancels a start at start_timeout): vet again
                pool.suspect(slot)
                raise
            if idle:
                return slot

    async def _grow(self, choice: Choice, key: SlotKey, deadline: float) -> Slot:
        """The pool's next slot: found again (an earlier process registered it) or registered now."""
        pool, definitions, settings = self.parts.definitions.slots, self.parts.definitions, self.parts.settings
        index = pool.grow(key)
        definition = self._slot_definition(choice, index)
        try:
            arn = await until_taken(
                "RegisterTaskDefinition", lambda: definitions.ensure(definition), deadline, self.name
            )
        except BaseException:  # refused, or the start was cancelled: the index is not reused
            pool.abandon()
            raise
        parameter = slot_parameter(settings.secret_root, settings.hub_id, choice.service.name, choice.size_name, index)
        log.info("slot %s of %s/%s: %s", index, choice.service.name, choice.size_name, arn)
        return Slot(key, index, parameter, str(definition["family"]), arn)

    async def _idle(self, slot: Slot, deadline: float) -> bool:
        """Vetting: whether no task of the slot's family can still read its parameter.

        Tasks listed are waited for a little; when some are still PENDING the slot is held
        until they are not (then freed), and False sends the spawn to another slot.
        """
        api, cluster, watcher = self.parts.api, self.parts.watcher.cluster, self.parts.watcher
        arns = await until_taken("ListTasks", lambda: api.list_tasks(cluster, family=slot.family), deadline, self.name)
        if not arns:
            return True
        for arn in arns:
            watcher.watch(arn)
        waits = [watcher.wait_for(arn, secrets_resolved, SLOT_VET_WAIT) for arn in arns]
        answers = await asyncio.gather(*waits, return_exceptions=True)
        if all(not isinstance(answer, BaseException) for answer in answers):
            return True
        pool = self.parts.definitions.slots
        pool.outcomes["vetted-busy"] += 1
        pool.hold(self._release_when_read(slot, arns), f"calliope slot {slot.parameter} (vetting)")
        return False

    async def _release_when_read(self, slot: Slot, arns: Sequence[str]) -> None:
        """Hold the lease until every task in `arns` has resolved its secrets; then clear and free the slot."""
        watcher = self.parts.watcher
        for arn in arns:
            watcher.watch(arn)
            while True:
                try:
                    await watcher.wait_for(arn, secrets_resolved, SLOT_HOLD_CHECK)
                    break
                except TimeoutError:  # still PENDING, or ECS did not answer: the lease holds
                    continue
                except TaskNotWatched:  # the server's stop saw it STOPPED, or ECS no longer knows it
                    break
        await self._clear(slot)
        self.parts.definitions.slots.give_back(slot)

    async def _clear(self, slot: Slot) -> None:
        """The token leaves SSM once ECS read it; a failed delete leaves it to the next leaseholder's overwrite."""
        try:
            await self.parts.secrets.clear(slot.parameter)
        except SecretStoreError as e:
            log.warning("slot parameter %s not cleared: %s", slot.parameter, e)

    async def _run_task(
        self, request: LaunchRequest, plain_env: Mapping[str, str], definition: str, deadline: float
    ) -> str:
        run = run_task_request(
            request.choice,
            request.identity,
            request.placement,
            plain_env,
            request.args,
            local=self.parts.settings.local_commands,
        )
        run["taskDefinition"] = definition  # the server's own revision, not the catalog family's
        # The same request, so the same clientToken: a retry whose first try did start a task gets that task.
        api = self.parts.api
        answer = await until_taken("RunTask", lambda: api.run_task(run), deadline, self.name)
        if not answer.get("tasks"):
            reasons = "; ".join(f.get("reason", "?") for f in answer.get("failures", []))
            raise LaunchError(503, f"ECS did not start the task: {reasons or 'no task returned'}")
        return str(answer["tasks"][0]["taskArn"])

    async def _server_definition(
        self, request: LaunchRequest, secrets: ServerSecrets, record: ServerRecord, deadline: float
    ) -> str:
        """This server's task definition (its own family: its secrets' names), registered only when new."""
        parts, identity, choice = self.parts, request.identity, request.choice
        settings = parts.settings
        base = parts.catalog.task_definition(choice.service.name, local=settings.local_commands)
        family = server_family(choice.service.family, identity.hub_id, identity.user, identity.server_name)
        definition = server_definition(
            base,
            family,
            secrets.references,
            execution_role_arn=settings.execution_role_arn,
            task_role_arn=settings.task_role_arn,
            labels=request.labels,
        )
        storage = choice.service.storage
        if storage is not None and parts.homes is not None:
            homes = parts.homes
            placed = storage.file_system_ids == ("auto",) or record.home_file_system in storage.file_system_ids
            if not (record.home_access_point and placed):  # none yet, or the catalog moved the user's shard
                # Idempotent by ClientToken: a retry or another server of this user gets the same one.
                home = await until_taken(
                    "CreateAccessPoint",
                    lambda: homes.ensure(storage, identity.user),
                    deadline,
                    self.name,
                    failure="Your home directory could not be prepared",
                )
                record.home_access_point, record.home_file_system = home.access_point_id, home.file_system_id
                self._persist(record)  # recorded before anything else can fail
            definition = with_home(definition, storage.mount_path, record.home_file_system, record.home_access_point)
        definitions = parts.definitions
        if record.task_definition and record.spec_hash:
            definitions.remember(record.spec_hash, record.task_definition)
        record.task_definition = await until_taken(
            "RegisterTaskDefinition", lambda: definitions.ensure(definition), deadline, self.name
        )
        record.spec_hash = spec_hash(definition)
        return record.task_definition

    async def forget_secrets(self, user: str, server: str, record: ServerRecord) -> None:
        """Delete the server's parameters once its task is gone (its token is revoked by the hub too).

        A start through a slot has none: its lease clears the slot's parameter once ECS read it.
        """
        if record.slot_parameter:
            return
        prefix = self._prefix(user, server)
        try:
            await self.parts.secrets.delete([f"{prefix}/{name}" for name in self.parts.settings.secret_environment])
        except SecretStoreError as e:
            log.warning("%s: parameters under %s not deleted: %s", self.name, prefix, e)
