"""The only door from the hub to ECS: one shared aiobotocore client, kept under the quota.

Every spawner and the TaskWatcher go through `EcsApi`, so there is one HTTP connection pool,
one set of client-side token buckets and one place that counts calls. The buckets mirror
AWS's per-account quotas (calliope_hub.ecsfacts): a call waits for its token instead of being
throttled, because a throttled ECS answer costs a round trip and a backoff, and the bucket
is shared by everything else in the account.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from calliope_hub.ecsfacts import AWS_QUOTAS, CATEGORIES, DESCRIBE_LIMIT, LIST_PAGE_LIMIT, Quota, QuotaBuckets
from calliope_hub.observability.metrics import ECS_API_CALLS, ECS_THROTTLES

log = logging.getLogger(__name__)

#: Error codes that mean "slow down" (the ones botocore's standard retry mode treats so).
THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
#: Bounds ListTasks paging (100 tasks a page, so 100,000 tasks) so it can never loop forever.
MAX_LIST_PAGES = 1000
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class EcsTarget:
    """Which ECS to talk to; one shared client per target."""

    region: str
    endpoint_url: str | None = None
    profile: str | None = None


@dataclass
class DescribeResult:
    """A DescribeTasks answer; `missing` are the ARNs ECS no longer knows (reason MISSING)."""

    tasks: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class EcsApiError(Exception):
    """Any failed ECS call: an ECS error code, a throttle, a timeout or a broken connection."""

    def __init__(self, operation: str, code: str, message: str, *, throttled: bool = False):
        super().__init__(f"{operation}: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message
        self.throttled = throttled

    @property
    def task_gone(self) -> bool:
        """ECS no longer knows the task (StopTask's answer for an unknown or expired ARN)."""
        return self.code == "InvalidParameterException" and "not found" in self.message.lower()

    @classmethod
    def from_exception(cls, operation: str, exc: BaseException) -> EcsApiError:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            return cls(operation, code, str(error.get("Message") or exc), throttled=code in THROTTLE_CODES)
        return cls(operation, type(exc).__name__, str(exc) or type(exc).__name__)


_WRAPPED_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)

#: wraps one DescribeTasks call of `describe_in_chunks` (the TaskWatcher's: a timeout on its own clock)
CallGuard = Callable[[Awaitable[DescribeResult]], Awaitable[DescribeResult]]


async def describe_in_chunks(
    describe: Callable[[Sequence[str]], Awaitable[DescribeResult]],
    arns: Sequence[str],
    *,
    concurrency: int = 4,
    within: CallGuard | None = None,
) -> list[DescribeResult | EcsApiError]:
    """The one DescribeTasks chunker: `describe` once per 100 ARNs, at most `concurrency` at once.

    One answer per chunk, in order: a DescribeResult, or the EcsApiError of that chunk, so a
    throttled chunk leaves its tasks unknown (never stopped) while the others count. `within`
    wraps each call once it holds its turn (so a timeout counts from the call, not the queue).
    A function, not only EcsApi's method, so a scripted ECS in the tests chunks exactly as the hub does.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(chunk: Sequence[str]) -> DescribeResult | EcsApiError:
        async with gate:
            call = describe(chunk)
            try:
                return await (within(call) if within else call)
            except EcsApiError as e:
                return e

    chunks = [arns[i : i + DESCRIBE_LIMIT] for i in range(0, len(arns), DESCRIBE_LIMIT)]
    return list(await asyncio.gather(*(one(chunk) for chunk in chunks)))


class EcsApi:
    """One aiobotocore ECS client with client-side quota buckets and call counters.

    `EcsApi.create` makes one; the HubRuntime holds the hub's only instance and closes it. Tests
    and benchmarks inject the clock and sleep.
    """

    def __init__(
        self,
        client: Any,
        *,
        limiter: QuotaBuckets | None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        exit_stack: contextlib.AsyncExitStack | None = None,
    ):
        self._client = client
        self._limiter = limiter
        self._sleep = sleep
        self._exit_stack = exit_stack
        self._limit_locks: dict[tuple[str, ...], asyncio.Lock] = {}
        #: (operation, outcome) -> calls, outcome ok | throttled | error (after botocore's retries).
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        #: operation -> HTTP attempts, retries included.
        self.attempts: collections.Counter[str] = collections.Counter()
        #: operation -> throttled HTTP answers, including those botocore retried away.
        self.throttles: collections.Counter[str] = collections.Counter()
        #: operation -> calls the client-side limiter held back to stay under the quota.
        self.limited: collections.Counter[str] = collections.Counter()
        client.meta.events.register("response-received.ecs", self._on_response_received)
        client.meta.events.register("before-send.ecs", self._charge_retry)

    # ---- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        target: EcsTarget,
        *,
        retry_mode: str = "standard",
        max_attempts: int = 5,
        client_quotas: dict[str, Quota] | None = AWS_QUOTAS,
        connect_timeout: float = 5,
        read_timeout: float = 15,
        max_pool_connections: int = 50,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> EcsApi:
        """A new, unshared client in the running loop; the caller closes it.

        `max_attempts` counts every HTTP attempt (botocore's total_max_attempts): 1 = no retry.
        """
        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError(f"retry_mode must be standard, adaptive or legacy, not {retry_mode!r}")
        config = AioConfig(
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        session = AioSession(profile=target.profile)
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "ecs",
                region_name=target.region,
                endpoint_url=target.endpoint_url,
                config=config,
                **_local_credentials(target),
            )
        )
        limiter = QuotaBuckets(client_quotas, clock) if client_quotas is not None else None
        return cls(client, limiter=limiter, sleep=sleep, exit_stack=stack)

    async def close(self) -> None:
        if self._exit_stack is not None:
            stack, self._exit_stack = self._exit_stack, None
            await stack.aclose()

    # ---- operations -----------------------------------------------------------------------

    async def run_task(self, request: dict[str, Any]) -> dict[str, Any]:
        """RunTask; the raw response (its `tasks` and `failures`)."""
        return await self._call("RunTask", request)

    async def describe_tasks(self, cluster: str, arns: Sequence[str]) -> DescribeResult:
        """DescribeTasks with tags for at most 100 ARNs (ECS's limit)."""
        if len(arns) > DESCRIBE_LIMIT:
            raise ValueError(f"DescribeTasks takes at most {DESCRIBE_LIMIT} ARNs, not {len(arns)}")
        if not arns:
            return DescribeResult(tasks=[])
        response = await self._call("DescribeTasks", {"cluster": cluster, "tasks": list(arns), "include": ["TAGS"]})
        failures = list(response.get("failures") or ())
        missing = [f["arn"] for f in failures if f.get("reason") == "MISSING" and f.get("arn")]
        return DescribeResult(tasks=list(response.get("tasks") or ()), missing=missing, failures=failures)

    async def describe_all(
        self, cluster: str, arns: Sequence[str], *, concurrency: int = 4, within: CallGuard | None = None
    ) -> list[DescribeResult | EcsApiError]:
        """DescribeTasks for any number of ARNs: `describe_in_chunks` over this client."""
        return await describe_in_chunks(
            lambda chunk: self.describe_tasks(cluster, chunk), arns, concurrency=concurrency, within=within
        )

    async def stop_task(self, cluster: str, arn: str, reason: str) -> dict[str, Any] | None:
        """StopTask; the raw response, or None when ECS no longer knows the task."""
        try:
            return await self._call("StopTask", {"cluster": cluster, "task": arn, "reason": reason})
        except EcsApiError as e:
            if e.task_gone:
                return None
            raise

    async def tag_resource(self, arn: str, tags: Sequence[Mapping[str, str]]) -> None:
        """TagResource: add or overwrite `tags` ({key, value}) on a task; a claimed warm task gets its user's."""
        await self._call("TagResource", {"resourceArn": arn, "tags": [dict(tag) for tag in tags]})

    async def list_tasks(
        self,
        cluster: str,
        *,
        started_by: str | None = None,
        family: str | None = None,
        desired_status: str = "RUNNING",
    ) -> list[str]:
        """Every task ARN matching the filters, following nextToken 100 at a time."""
        params: dict[str, Any] = {"cluster": cluster, "maxResults": LIST_PAGE_LIMIT, "desiredStatus": desired_status}
        if started_by:
            params["startedBy"] = started_by
        if family:
            params["family"] = family
        arns: list[str] = []
        for _ in range(MAX_LIST_PAGES):
            response = await self._call("ListTasks", params)
            arns.extend(response.get("taskArns") or ())
            token = response.get("nextToken")
            if not token or token == params.get("nextToken"):
                return arns
            params["nextToken"] = token
        raise EcsApiError("ListTasks", "PagingLimitExceeded", f"more than {MAX_LIST_PAGES} pages")

    async def register_task_definition(self, request: dict[str, Any]) -> dict[str, Any]:
        """RegisterTaskDefinition; the raw response (its `taskDefinition`)."""
        return await self._call("RegisterTaskDefinition", request)

    async def list_task_definitions(self, family: str, *, max_results: int = 100) -> list[str]:
        """The newest ACTIVE revisions of `family` (one page, newest first)."""
        response = await self._call(
            "ListTaskDefinitions",
            {"familyPrefix": family, "status": "ACTIVE", "sort": "DESC", "maxResults": max_results},
        )
        return [str(arn) for arn in response.get("taskDefinitionArns") or ()]

    async def describe_task_definition(self, ref: str) -> tuple[dict[str, Any], dict[str, str]]:
        """DescribeTaskDefinition with TAGS: the definition and its tags as a dict."""
        response = await self._call("DescribeTaskDefinition", {"taskDefinition": ref, "include": ["TAGS"]})
        tags = {str(tag["key"]): str(tag.get("value", "")) for tag in response.get("tags") or ()}
        return dict(response["taskDefinition"]), tags

    async def cluster_is_active(self, name: str) -> bool:
        """Whether the cluster `name` exists and is ACTIVE (DescribeClusters, a read)."""
        response = await self._call("DescribeClusters", {"clusters": [name]})
        return any(cluster.get("status") == "ACTIVE" for cluster in response.get("clusters") or ())

    async def ensure_cluster(self, name: str) -> str:
        """The ARN of the ACTIVE cluster `name`, created when it does not exist."""
        response = await self._call("DescribeClusters", {"clusters": [name]})
        for cluster in response.get("clusters") or ():
            if cluster.get("status") == "ACTIVE":
                return str(cluster["clusterArn"])
        created = await self._call("CreateCluster", {"clusterName": name})
        return str(created["cluster"]["clusterArn"])

    # ---- plumbing -------------------------------------------------------------------------

    async def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One ECS call: wait for quota tokens, call, count, wrap errors into EcsApiError."""
        await self._take_tokens(operation)
        method = getattr(self._client, xform_name(operation))
        try:
            response: dict[str, Any] = await method(**params)
        except _WRAPPED_ERRORS as e:
            error = EcsApiError.from_exception(operation, e)
            self._count(operation, "throttled" if error.throttled else "error")
            raise error from e
        self._count(operation, "ok")
        return response

    async def _take_tokens(self, operation: str) -> None:
        """Wait, without spinning, until the operation's quota tokens are there.

        Waiters queue FIFO per category set, so a burst drains in order and each wakes once
        per token instead of every waiter racing for every token.
        """
        categories = CATEGORIES.get(operation, ())
        if self._limiter is None or not categories:
            return
        lock = self._limit_locks.setdefault(categories, asyncio.Lock())
        if not lock.locked() and self._limiter.try_take(operation):
            return
        self.limited[operation] += 1
        async with lock:
            while not self._limiter.try_take(operation):
                await self._sleep(max(self._limiter.delay_for(operation), 0.001))

    async def _charge_retry(self, *, event_name: str, request: Any = None, **_: Any) -> None:
        """botocore's own retries spend the same quota: each attempt after the first waits for its tokens too.

        aiobotocore awaits this before every HTTP attempt; the first attempt's tokens were taken by `_call`.
        """
        retries = (getattr(request, "context", None) or {}).get("retries") or {}
        if int(retries.get("attempt", 1)) > 1:
            await self._take_tokens(event_name.rsplit(".", 1)[-1])

    def _count(self, operation: str, outcome: str) -> None:
        self.calls[(operation, outcome)] += 1
        ECS_API_CALLS.labels(operation, outcome).inc()

    def _on_response_received(self, *, event_name: str, parsed_response: Any = None, **_: Any) -> None:
        """botocore emits this for every HTTP attempt, so retried throttles are seen too."""
        operation = event_name.rsplit(".", 1)[-1]
        self.attempts[operation] += 1
        code = ((parsed_response or {}).get("Error") or {}).get("Code")
        if code in THROTTLE_CODES:
            self.throttles[operation] += 1
            ECS_THROTTLES.labels(operation).inc()


def aws_client(service: str, target: EcsTarget, *, max_attempts: int = 5, read_timeout: float = 15) -> Any:
    """An aiobotocore client (an async context manager) for another AWS service beside ECS: SSM, EFS, SQS.

    Same region, profile and standard retries as the ECS client; local ECS serves SSM and EFS on its own
    endpoint, so `target` works for all of them. Its calls and throttles are counted in the same
    metrics as ECS's (calliope_ecs_api_calls_total, calliope_ecs_throttles_total), by operation.
    """
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": max_attempts}, connect_timeout=5, read_timeout=read_timeout
    )
    session = AioSession(profile=target.profile)
    # Counted with ECS's calls: a cold spawn's PutParameter is what paces it, so alerts must see its throttles.
    session.register("after-call", _count_call)
    session.register("after-call-error", _count_failed_call)
    session.register("response-received", _count_throttle)
    return session.create_client(
        service,
        region_name=target.region,
        endpoint_url=target.endpoint_url,
        config=config,
        **_local_credentials(target),
    )


def _operation(event_name: str) -> str:
    return event_name.rsplit(".", 1)[-1]


def _count_call(*, event_name: str, http_response: Any = None, parsed: Any = None, **_: Any) -> None:
    """botocore emits after-call once per call, after its retries, whatever the answer."""
    if http_response is not None and http_response.status_code < 300:
        outcome = "ok"
    else:
        code = ((parsed or {}).get("Error") or {}).get("Code")
        outcome = "throttled" if code in THROTTLE_CODES else "error"
    ECS_API_CALLS.labels(_operation(event_name), outcome).inc()


def _count_failed_call(*, event_name: str, **_: Any) -> None:
    """A call that got no answer at all (connection refused, timed out)."""
    ECS_API_CALLS.labels(_operation(event_name), "error").inc()


def _count_throttle(*, event_name: str, parsed_response: Any = None, **_: Any) -> None:
    """Every HTTP attempt's answer, so throttles that botocore's retries then hide are counted too."""
    if ((parsed_response or {}).get("Error") or {}).get("Code") in THROTTLE_CODES:
        ECS_THROTTLES.labels(_operation(event_name)).inc()


def _local_credentials(target: EcsTarget) -> dict[str, str]:
    """Placeholder credentials for a loopback endpoint (local ECS, moto) when none are set.

    Nothing on loopback checks signatures, and a newcomer's `make up` should not need AWS keys.
    """
    host = urlsplit(target.endpoint_url or "").hostname
    if host not in _LOOPBACK_HOSTS or target.profile or os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    return {"aws_access_key_id": "calliope-local", "aws_secret_access_key": "calliope-local"}
