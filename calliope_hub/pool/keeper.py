"""PoolKeeper: keeps each pool's idle tasks, and hands one to a spawn that claims it.

One keeper per hub (the HubRuntime builds it when pools are configured). Two halves:

- **Filling** runs only in the hub that holds the sweep lock (`run(may_fill=lock.try_acquire)`),
  so two hubs never fill one pool. The first round adopts this hub's idle pool tasks already
  in ECS (a restart or a failover loses none), then every round recycles tasks idle past
  `max_idle_age`, stops idle tasks above the target, and starts the missing ones: RunTask
  through the one EcsApi (its quota buckets), at most `refill_rate` a second, and not at all
  for `spawn_priority_window` after a spawn found no warm task, so cold starts get the quota.
- **Claiming** (`claim`) takes an idle task in one synchronous step (two spawns of this hub
  can never take the same one), POSTs the user's environment to its launcher with the
  task's claim secret, and retags it with the user's identity. The launcher serves one
  request at a time and accepts one claim, so even two hubs cannot both claim a task.
  Whatever fails, the spawn gets `arn=None` and a message, and starts cold.

A task is trusted only while ECS says it runs and its launcher answered "waiting". A task
that stops before its claim is dropped and replaced; one whose claim fails is stopped if it
still carries `calliope:pool=idle` (a stranger claimed it, or it is broken) and left alone if
it carries a user (another hub claimed it: it is that user's server now).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiohttp

from ..catalog import Catalog, Choice, Placement, TaskIdentity
from ..ecs.api import DescribeResult, EcsApiError
from ..ecs.identity import POOL_CLAIMED, POOL_IDLE, POOL_TAG, read_tags, started_by
from ..ecs.launch import ClaimOutcome
from ..ecs.secrets import SecretStore, ServerSecrets
from ..ecs.snapshot import TaskSnapshot
from ..ecs.status import TaskWatcher
from ..ecs.status.store import TaskNotWatched
from ..ecs.taskdefs import TaskDefinitions
from ..ecsfacts import Quota, TokenBucket
from ..observability.metrics import POOL_CLAIMS, POOL_FALLBACKS, POOL_LOST, POOL_TASKS
from .config import PoolSettings, PoolSpec
from .definition import key_parameter, pool_definition, pool_run_task, pool_state, task_nonce
from .launcher import CLAIM_PATH, STATUS_PATH
from .secret import AUTH_SCHEME, KEY_VARIABLE, claim_secret, new_nonce, pool_key

log = logging.getLogger(__name__)

STARTING, WAITING, CLAIMING = "starting", "idle", "claiming"
RECYCLE_REASON = "Warm task recycled by Calliope Hub"
FAILED_REASON = "Warm task failed its claim"
NOT_READY_REASON = "Warm task's launcher never answered"
#: seconds a new warm task may take to be RUNNING (a Fargate cold start is 20-90 s)
READY_TIMEOUT = 600.0
#: seconds the launcher may take to answer once its task is RUNNING
PROBE_TIMEOUT = 60.0
PROBE_INTERVAL = 0.5
#: seconds after a failed claim before a still-idle-tagged task is judged a stranger's or broken, and stopped
SUSPECT_GRACE = 30.0


class PoolApi(Protocol):
    """The EcsApi calls the keeper makes."""

    async def run_task(self, request: dict[str, Any]) -> dict[str, Any]: ...
    async def stop_task(self, cluster: str, arn: str, reason: str) -> dict[str, Any] | None: ...
    async def list_tasks(
        self, cluster: str, *, started_by: str | None = ..., desired_status: str = ...
    ) -> list[str]: ...
    async def describe_tasks(self, cluster: str, arns: Sequence[str]) -> DescribeResult: ...
    async def describe_all(self, cluster: str, arns: Sequence[str]) -> list[DescribeResult | EcsApiError]: ...
    async def tag_resource(self, arn: str, tags: Sequence[Mapping[str, str]]) -> None: ...


@dataclass(frozen=True)
class PoolParts:
    """The hub's collaborators the keeper uses, all owned and closed by the HubRuntime."""

    api: PoolApi
    watcher: TaskWatcher
    catalog: Catalog
    definitions: TaskDefinitions
    secrets: SecretStore
    placement: Placement
    hub_id: str
    secret_root: str
    local: bool
    execution_role_arn: str = ""
    task_role_arn: str = ""


@dataclass(eq=False)
class WarmTask:
    """One warm task as the keeper knows it (compared by identity)."""

    arn: str
    pool: PoolSpec
    nonce: str
    born: float  # keeper clock at RunTask
    state: str = STARTING
    ip: str | None = None


class PoolKeeper:
    """Fills pools (in the hub holding the lock) and serves claims; see the module's docstring."""

    def __init__(
        self,
        parts: PoolParts,
        settings: PoolSettings,
        *,
        master: bytes,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        suspect_grace: float = SUSPECT_GRACE,
    ):
        self.parts = parts
        self.suspect_grace = suspect_grace
        self.settings = settings
        self._clock, self._wall = clock, wall
        self._pools = {(pool.service, pool.size): pool for pool in settings.pools}
        self._keys = {pool.name: pool_key(master, parts.hub_id, pool.service, pool.size) for pool in settings.pools}
        self._zone = ZoneInfo(settings.timezone)
        self._refills = TokenBucket(Quota(burst=max(1.0, settings.refill_rate), rate=settings.refill_rate), clock)
        self._tasks: dict[str, WarmTask] = {}
        self._definitions: dict[str, str] = {}
        self._prepared = False
        self._quiet_until = float("-inf")
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    # ---- reads ------------------------------------------------------------------------------

    def tasks(self, pool: PoolSpec, *states: str) -> list[WarmTask]:
        return [t for t in self._tasks.values() if t.pool == pool and (not states or t.state in states)]

    def _publish(self) -> None:
        for pool in self._pools.values():
            for state in (STARTING, WAITING, CLAIMING):
                POOL_TASKS.labels(pool.name, state).set(len(self.tasks(pool, state)))

    # ---- filling ----------------------------------------------------------------------------

    async def run(self, may_fill: Callable[[], Awaitable[bool]]) -> None:
        """Fill every `interval` (sooner after a claim or a loss) while `may_fill()`; survives errors."""
        while True:
            delay = self.settings.interval
            try:
                if await may_fill():
                    delay = min(delay, await self.fill_once())
                elif self._prepared:
                    self._forget_all()  # another hub fills now, and adopts these
            except Exception:
                log.exception("pool fill failed; the next round runs as scheduled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    async def fill_once(self) -> float:
        """One round: prepare (once), recycle, top up. Returns the seconds until another round helps."""
        if not self._prepared:
            await self._prepare()
        for warm in self._tasks.values():  # idempotent; survives anyone's unwatch (the runtime's release of primes)
            self.parts.watcher.watch(warm.arn, on_stopped=self._on_stopped)
        now = self._clock()
        for pool in self._pools.values():
            await self._trim(pool, now)
        self._publish()
        if now < self._quiet_until:
            return self._quiet_until - now  # spawns are starting cold: the RunTask quota is theirs
        moment = datetime.fromtimestamp(self._wall(), self._zone)
        for pool in self._pools.values():
            pending = len(self.tasks(pool, STARTING, WAITING))
            wanted = min(pool.target(moment) - pending, pool.max - len(self.tasks(pool)))
            for _ in range(max(0, wanted)):
                if not self._refills.try_take():
                    return max(self._refills.delay_for(), 0.05)
                await self._start_one(pool)
        self._publish()
        return self.settings.interval

    async def _prepare(self) -> None:
        """Write each pool's key to SSM, register its definition, adopt this hub's idle pool tasks."""
        parts = self.parts
        for pool in self._pools.values():
            parameter = key_parameter(parts.secret_root, parts.hub_id, pool)
            await parts.secrets.put(
                ServerSecrets(values={parameter: self._keys[pool.name]}, references=[])
            )  # the same value on every start: a restarted hub's tasks stay claimable
            request = pool_definition(
                parts.catalog,
                pool,
                hub_id=parts.hub_id,
                parameter=parameter,
                local=parts.local,
                execution_role_arn=parts.execution_role_arn,
                task_role_arn=parts.task_role_arn,
            )
            self._definitions[pool.name] = await parts.definitions.ensure(request)
        await self._adopt()
        self._prepared = True

    async def _adopt(self) -> None:
        """Take back this hub's idle pool tasks (after a restart or failover); stop those no pool wants."""
        parts = self.parts
        arns = await parts.api.list_tasks(parts.placement.cluster, started_by=started_by(self.parts.hub_id))
        known = [arn for arn in arns if arn not in self._tasks]
        for answer in await parts.api.describe_all(parts.placement.cluster, known):
            if isinstance(answer, EcsApiError):
                raise answer  # unknown is not idle: the next round tries again
            for task in answer.tasks:
                self._adopt_one(task)

    def _adopt_one(self, task: Mapping[str, Any]) -> None:
        raw_tags = task.get("tags") or ()
        tags = read_tags(raw_tags)
        if pool_state(raw_tags) != POOL_IDLE or tags.get("hub") != self.parts.hub_id:
            return
        pool = self._pools.get((tags.get("service", ""), tags.get("size", "")))
        nonce = task_nonce(task)
        if pool is None or not nonce or task.get("desiredStatus") == "STOPPED":
            self._in_background(self._stop(str(task["taskArn"]), RECYCLE_REASON))
            return
        created = task.get("createdAt")
        epoch = created.timestamp() if isinstance(created, datetime) else float(created or self._wall())
        warm = WarmTask(str(task["taskArn"]), pool, nonce, born=self._clock() - max(0.0, self._wall() - epoch))
        self._track(warm)
        log.info("warm task %s of %s adopted", warm.arn, pool.name)

    async def _start_one(self, pool: PoolSpec) -> None:
        parts = self.parts
        choice = parts.catalog.choose({"service": pool.service, "size": pool.size})
        nonce = new_nonce()
        request = pool_run_task(
            choice,
            parts.placement,
            hub_id=parts.hub_id,
            definition=self._definitions[pool.name],
            nonce=nonce,
            local=parts.local,
            entry=self.settings.entry_points.get(pool.service, ""),
        )
        try:
            answer = await parts.api.run_task(request)
        except EcsApiError as e:
            log.warning("warm task for %s not started (%s); the next round tries again", pool.name, e)
            return
        if not answer.get("tasks"):
            log.warning("warm task for %s not started: %s", pool.name, answer.get("failures"))
            return
        self._track(WarmTask(str(answer["tasks"][0]["taskArn"]), pool, nonce, born=self._clock()))

    def _track(self, warm: WarmTask) -> None:
        self._tasks[warm.arn] = warm
        self.parts.watcher.watch(warm.arn, on_stopped=self._on_stopped)
        self._in_background(self._until_waiting(warm))

    async def _until_waiting(self, warm: WarmTask) -> None:
        """RUNNING by ECS's word, then the launcher's "waiting": only then may a spawn claim it."""
        snapshot = await self._until_running(warm)
        if snapshot is not None and snapshot.stopped:
            return  # _on_stopped drops it
        if snapshot is not None and await self._waiting(warm.pool, snapshot.ip):
            if warm.state == STARTING and self._tasks.get(warm.arn) is warm:
                warm.state, warm.ip = WAITING, snapshot.ip
                self._publish()
            return
        if self._tasks.pop(warm.arn, None) is not None:
            POOL_LOST.labels(warm.pool.name, "not-ready").inc()
            await self._stop_if_still_idle(warm, NOT_READY_REASON)
            self._wake.set()

    async def _until_running(self, warm: WarmTask) -> TaskSnapshot | None:
        """ECS's RUNNING (or STOPPED) for `warm`, None on READY_TIMEOUT; watched again if someone unwatched it."""
        watcher = self.parts.watcher
        while True:
            try:
                return await watcher.wait_for(warm.arn, lambda s: s.running, READY_TIMEOUT)
            except TimeoutError:
                return None
            except TaskNotWatched:
                if self._tasks.get(warm.arn) is not warm:
                    return None  # dropped meanwhile
                watcher.watch(warm.arn, on_stopped=self._on_stopped)  # the keeper owns its warm tasks

    async def _waiting(self, pool: PoolSpec, ip: str | None) -> bool:
        """Whether the launcher at `ip` answers "waiting" within PROBE_TIMEOUT."""
        if ip is None:
            return False
        url = f"http://{ip}:{self.parts.catalog.services[pool.service].port}{STATUS_PATH}"
        deadline = self._clock() + PROBE_TIMEOUT
        while self._clock() < deadline:
            try:
                async with self._session().get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200 and (await response.json()).get("state") == "waiting":
                        return True
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(PROBE_INTERVAL)
        return False

    async def _on_stopped(self, snapshot: TaskSnapshot) -> None:
        """A warm task ended before any claim (its launcher died, or ECS stopped it): replace it."""
        warm = self._tasks.pop(snapshot.arn, None)
        if warm is None:
            return  # claimed (the spawner owns it now) or already dropped
        self.parts.watcher.unwatch(snapshot.arn)
        POOL_LOST.labels(warm.pool.name, "stopped").inc()
        log.warning(
            "warm task %s of %s stopped before a claim: %s", snapshot.arn, warm.pool.name, snapshot.stopped_reason
        )
        self._publish()
        self._wake.set()

    async def _trim(self, pool: PoolSpec, now: float) -> None:
        """Stop idle tasks past max_idle_age, then idle tasks above the target (oldest first)."""
        idle = sorted(self.tasks(pool, WAITING), key=lambda t: t.born)
        old = [t for t in idle if now - t.born >= pool.max_idle_age]
        target = pool.target(datetime.fromtimestamp(self._wall(), self._zone))
        young = [t for t in idle if t not in old]
        surplus = young[: max(0, len(young) - target)]  # starting ones are counted once they are idle
        for warm, reason in [*((t, "recycled") for t in old), *((t, "surplus") for t in surplus)]:
            self._drop(warm)
            POOL_LOST.labels(pool.name, reason).inc()
            await self._stop(warm.arn, RECYCLE_REASON)

    def _drop(self, warm: WarmTask) -> None:
        self._tasks.pop(warm.arn, None)
        self.parts.watcher.unwatch(warm.arn)

    def _forget_all(self) -> None:
        for warm in list(self._tasks.values()):
            self._drop(warm)
        self._prepared = False
        self._publish()

    # ---- claiming ---------------------------------------------------------------------------

    async def claim(
        self, choice: Choice, identity: TaskIdentity, environment: Mapping[str, str], args: Sequence[str] = ()
    ) -> ClaimOutcome:
        """A warm task for this spawn, already the user's (retagged), or None and why to start cold."""
        pool = self._pools.get((choice.service.name, choice.size_name))
        if pool is None:
            return ClaimOutcome(None, "")
        warm = self._take_idle(pool)
        if warm is None:
            POOL_FALLBACKS.labels(pool.name, "empty").inc()
            self._quiet_until = self._clock() + self.settings.spawn_priority_window
            return ClaimOutcome(None, f"No warm {pool.name} server free: starting one cold")
        self._publish()
        failure = await self._hand_over(warm, environment, args)
        if failure is None:
            failure = await self._retag(warm, identity)
        self._tasks.pop(warm.arn, None)
        self._publish()
        self._wake.set()
        if failure is not None:
            POOL_CLAIMS.labels(pool.name, failure).inc()
            POOL_LOST.labels(pool.name, "failed-claim").inc()
            POOL_FALLBACKS.labels(pool.name, "failed").inc()
            return ClaimOutcome(None, f"The warm server's claim failed ({failure}): starting one cold")
        POOL_CLAIMS.labels(pool.name, "claimed").inc()
        log.info("warm task %s of %s claimed for %r/%r", warm.arn, pool.name, identity.user, identity.server_name)
        return ClaimOutcome(warm.arn, "Warm server claimed")

    def _take_idle(self, pool: PoolSpec) -> WarmTask | None:
        """The oldest idle task ECS still reports running, marked claiming: no await, so no race in this hub."""
        for warm in sorted(self.tasks(pool, WAITING), key=lambda t: t.born):
            snapshot = self.parts.watcher.get(warm.arn)
            if snapshot is not None and snapshot.running:
                warm.state = CLAIMING
                return warm
        return None

    async def _hand_over(self, warm: WarmTask, environment: Mapping[str, str], args: Sequence[str]) -> str | None:
        """POST the claim; None when the launcher took it, else the failure's name (the task is dealt with)."""
        port = self.parts.catalog.services[warm.pool.service].port
        secret = claim_secret(self._keys[warm.pool.name], warm.nonce)
        # As a cold start does (catalog.run_task_request): spawner args follow the service's own command only.
        passed = list(args) if self.parts.catalog.services[warm.pool.service].command else []
        body = {"environment": {k: v for k, v in environment.items() if k != KEY_VARIABLE}, "args": passed}
        try:
            async with self._session().post(
                f"http://{warm.ip}:{port}{CLAIM_PATH}",
                json=body,
                headers={"Authorization": f"{AUTH_SCHEME} {secret}"},
                timeout=aiohttp.ClientTimeout(total=self.settings.claim_timeout),
            ) as response:
                if response.status == 200:
                    return None
                failure = "refused"
                log.warning("warm task %s refused its claim: HTTP %d", warm.arn, response.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            failure = "unreachable"
            # str(), never repr(): aiohttp's repr of a response error carries the request's headers, the claim secret
            log.warning("warm task %s did not take its claim: %s: %s", warm.arn, type(e).__name__, e)
        self._drop(warm)
        self._in_background(self._stop_if_still_idle(warm, FAILED_REASON, grace=self.suspect_grace))
        return failure

    async def _stop_if_still_idle(self, warm: WarmTask, reason: str, *, grace: float = 0.0) -> None:
        """Stop a task whose launcher failed us if, `grace` later, ECS still tags it an idle pool task.

        A refused or unanswered claim (or a launcher not "waiting") means it is gone, broken, or
        was claimed first: by another hub (which retags it with its user), or by a stranger. Only
        ECS's tags tell these apart, and only once the winner had time to write them.
        """
        await asyncio.sleep(grace)
        try:
            described = await self.parts.api.describe_tasks(self.parts.placement.cluster, [warm.arn])
        except EcsApiError as e:
            log.warning("warm task %s: not described after its failed claim (%s); left to the recycle", warm.arn, e)
            return
        for task in described.tasks:
            if pool_state(task.get("tags") or ()) == POOL_IDLE and task.get("lastStatus") != "STOPPED":
                await self._stop(warm.arn, reason)

    async def _retag(self, warm: WarmTask, identity: TaskIdentity) -> str | None:
        """The user's calliope:* tags and calliope:pool=claimed: from now on the task is a server like any other."""
        try:
            await self.parts.api.tag_resource(warm.arn, [*identity.tags(), {"key": POOL_TAG, "value": POOL_CLAIMED}])
        except EcsApiError as e:
            # An untagged server would be invisible to adoption: it holds the user's token, so it goes.
            log.error("warm task %s claimed but not retagged (%s): stopped, the spawn starts cold", warm.arn, e)
            self._drop(warm)
            await self._stop(warm.arn, FAILED_REASON)
            return "untagged"
        return None

    # ---- plumbing ---------------------------------------------------------------------------

    async def _stop(self, arn: str, reason: str) -> None:
        try:
            await self.parts.api.stop_task(self.parts.placement.cluster, arn, reason)
        except EcsApiError as e:
            log.warning("warm task %s: StopTask failed (%s); the recycle or the orphan sweep tries again", arn, e)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def _in_background(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancel the readiness waits and close the HTTP client; warm tasks keep running for the next hub."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
