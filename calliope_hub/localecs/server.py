"""The HTTP face of local ECS: AWS JSON 1.1 on `POST /`, and the `/_localecs/` side door.

Every answer is one botocore understands: an operation's JSON, or an error as
``{"__type": code, "message": text}`` with the status ECS would use, so unmodified boto3,
aiobotocore and the AWS CLI raise the proper ClientError code. Bad input never earns a 500.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from aiohttp import web

from calliope_hub.ecsfacts import Quota, QuotaBuckets
from calliope_hub.localecs import efs_http, ssm
from calliope_hub.localecs.callers import gate
from calliope_hub.localecs.intake import MAX_BODY_BYTES, check_types, decode_object, load_model, read_body
from calliope_hub.localecs.model import ORDER, EcsError, RawJson
from calliope_hub.localecs.operations import OPERATIONS
from calliope_hub.localecs.state import ControlPlane

log = logging.getLogger(__name__)

TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
JSON_TYPE = "application/x-amz-json-1.1"
#: X-Amz-Target prefix -> its operations: ECS, and the SSM Parameter Store subset on the same port.
HANDLERS: dict[str, dict[str, Callable[..., Any]]] = {
    TARGET_PREFIX: dict(OPERATIONS),
    ssm.TARGET_PREFIX: dict(ssm.OPERATIONS),
}
#: the longest outage or forced throttle a fault may ask for, so a test can never wedge a server.
MAX_FAULT_S = 3600


class CallStats:
    """Calls by operation and outcome, and server time per operation: the benchmarks' ground truth."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "throttled": 0, "error": 0})
        self.server_ms: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=20_000))

    def record(self, operation: str, outcome: str, ms: float) -> None:
        self.calls[operation][outcome] += 1
        self.server_ms[operation].append(ms)

    def snapshot(self) -> dict:
        timings = {}
        for operation, samples in self.server_ms.items():
            ordered = sorted(samples)
            timings[operation] = {
                "p50": _quantile(ordered, 0.5),
                "p99": _quantile(ordered, 0.99),
                "count": len(ordered),
            }
        return {"calls": {op: dict(counts) for op, counts in self.calls.items()}, "server_ms": timings}


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class Faults:
    """Outages and forced throttling that tests switch on for a while."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.unavailable_until = 0.0
        self.style = "503"
        self.throttle_until = 0.0

    def unavailable(self) -> bool:
        return self.clock() < self.unavailable_until

    def throttling(self) -> bool:
        return self.clock() < self.throttle_until


def _error_body(code: str, message: str) -> dict:
    return {"__type": code, "message": message}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class EcsHttp:
    """The aiohttp application; `refuse` is how the owner closes and reopens the listener."""

    def __init__(
        self,
        plane: ControlPlane,
        quotas: dict[str, Quota] | None,
        refuse: Callable[[float], None],
        describe: Callable[[], dict],
        access_key_id: str | None = None,
    ):
        self.plane = plane
        #: when set, every AWS call must be signed with this key ID (callers.py)
        self.access_key_id = access_key_id
        self.quotas = quotas
        self.buckets = QuotaBuckets(quotas) if quotas else None
        self.stats = CallStats()
        self.faults = Faults()
        self._refuse = refuse
        self._describe = describe
        load_model()

    def application(self) -> web.Application:
        middlewares = [self._outage, gate(self.access_key_id)]
        app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/", self.ecs)
        app.router.add_route("*", efs_http.PATH_PREFIX + "{tail:.*}", self.efs)
        app.router.add_post("/_localecs/tasks/{task_id}/kill", self.kill)
        app.router.add_post("/_localecs/faults/unavailable", self.fault_unavailable)
        app.router.add_post("/_localecs/faults/throttle", self.fault_throttle)
        app.router.add_post("/_localecs/reset", self.reset)
        app.router.add_get("/_localecs/stats", self.stats_handler)
        return app

    @web.middleware
    async def _outage(self, request: web.Request, handler: Callable[[web.Request], Awaitable]) -> web.StreamResponse:
        if self.faults.unavailable() and not request.path.startswith("/_localecs/"):
            if self.faults.style == "refuse" and request.transport is not None:
                request.transport.abort()  # connections opened before the outage die too
            return web.json_response(
                _error_body("ServiceUnavailableException", "local ECS is unavailable (injected fault)"),
                status=503,
            )
        return await handler(request)

    # ------------------------------------------------------------ ECS

    async def ecs(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.rpartition(".")
        handler = HANDLERS.get(prefix + ".", {}).get(operation)
        name = operation if handler else "Unknown"
        try:
            if handler is None:
                raise EcsError(
                    "UnknownOperationException",
                    f"Unknown operation {target!r}. Send X-Amz-Target: {TARGET_PREFIX}<Operation>, "
                    f"one of {', '.join(OPERATIONS)}.",
                )
            if not self._admit(operation):
                raise EcsError("ThrottlingException", "Rate exceeded")
            params = decode_object(await read_body(request))
            if prefix + "." == TARGET_PREFIX:  # ECS's model; the SSM subset checks its own fields
                check_types(operation, params)
            self.plane.purge_expired()
            body, status, outcome = handler(self.plane, params), 200, "ok"
        except EcsError as error:
            body, status = _error_body(error.code, error.message), error.status
            outcome = "throttled" if error.code == "ThrottlingException" else "error"
        except Exception:
            log.exception("local ECS failed on %s", name)
            body = _error_body("ServerException", f"local ECS failed on {name}; see its log.")
            status, outcome = 500, "error"
        payload = body.data if isinstance(body, RawJson) else json.dumps(body).encode()
        self.stats.record(name, outcome, (time.perf_counter() - started) * 1000)
        return web.Response(
            body=payload, status=status, content_type=JSON_TYPE, headers={"x-amzn-RequestId": str(uuid.uuid4())}
        )

    def _admit(self, operation: str) -> bool:
        """False when a call must be throttled: a forced throttle, or its quota bucket is empty."""
        return not self.faults.throttling() and (self.buckets is None or self.buckets.try_take(operation))

    async def efs(self, request: web.Request) -> web.Response:
        """The EFS subset (REST-JSON under /2015-02-01/), under the same faults, quotas and stats."""
        return await efs_http.handle(request, self.plane, self._admit, self.stats.record)

    # ------------------------------------------------------------ /_localecs/

    async def kill(self, request: web.Request) -> web.Response:
        task = self.plane.tasks.get(request.match_info["task_id"])
        if task is None:
            return _json({"error": "no such task (unknown, or past its retention)"}, 404)
        body = await _optional_json(request)
        exit_code = body.get("exitCode", 137)
        if not isinstance(exit_code, int) or isinstance(exit_code, bool) or not 0 <= exit_code <= 255:
            return _json({"error": "exitCode must be an integer from 0 to 255, as a process's exit status"}, 400)
        if not task.launched or ORDER[task.last_status] >= ORDER["DEPROVISIONING"]:
            return _json({"error": f"task is {task.last_status}: nothing runs to kill"}, 409)
        await self.plane.runner.kill(task.id, exit_code)
        return _json({"taskArn": task.arn, "exitCode": exit_code}, 202)

    async def fault_unavailable(self, request: web.Request) -> web.Response:
        body = await _optional_json(request)
        seconds, style = body.get("seconds"), body.get("style", "503")
        if not _valid_seconds(seconds) or style not in ("refuse", "503"):
            return _json({"error": f"need seconds in (0, {MAX_FAULT_S}] and style 'refuse' or '503'"}, 400)
        self.faults.unavailable_until = self.faults.clock() + seconds
        self.faults.style = style
        if style == "refuse":
            self._refuse(seconds)
        return _json({"unavailable_s": seconds, "style": style})

    async def fault_throttle(self, request: web.Request) -> web.Response:
        seconds = (await _optional_json(request)).get("seconds")
        if not _valid_seconds(seconds):
            return _json({"error": f"need seconds in (0, {MAX_FAULT_S}]"}, 400)
        self.faults.throttle_until = self.faults.clock() + seconds
        return _json({"throttle_s": seconds})

    async def reset(self, request: web.Request) -> web.Response:
        await self.plane.reset()
        self.stats = CallStats()
        self.faults = Faults()
        self.buckets = QuotaBuckets(self.quotas) if self.quotas else None
        return _json({"reset": True})

    async def stats_handler(self, request: web.Request) -> web.Response:
        snapshot = self.stats.snapshot()
        snapshot["tasks"] = {status: n for status, n in self.plane.by_status.items() if n}
        snapshot.update(self._describe())
        return _json(snapshot)


async def _optional_json(request: web.Request) -> dict:
    """The body as a JSON object ({} when empty), within the ECS bounds; anything else is a clear 4xx."""
    try:
        return decode_object(await read_body(request))
    except EcsError as error:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"the body must be a JSON object: {error.message}"}),
            content_type="application/json",
        ) from None


def _valid_seconds(seconds: Any) -> TypeGuard[float]:
    return isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds <= MAX_FAULT_S
