"""EcsApi with real aiobotocore: against moto's ECS server, and against a scripted loopback
endpoint for the answers moto never gives (throttling, paging, MISSING, task not found)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from calliope_hub.ecs.api import DescribeResult, EcsApi, EcsApiError, EcsTarget, aws_client
from calliope_hub.ecs.snapshot import TaskSnapshot
from calliope_hub.ecsfacts import Quota
from calliope_hub.observability.metrics import ECS_API_CALLS, ECS_THROTTLES

REGION = "us-east-1"  # moto_target's region too
HUB = "calliope-hub/test-hub"
THROTTLED = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
EMPTY_DESCRIBE = (200, {"tasks": [], "failures": []})


class ScriptedEndpoint:
    """A loopback ECS endpoint answering each operation from a script; the last answer repeats."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        operation = request.headers["X-Amz-Target"].rsplit(".", 1)[-1]
        self.requests.append((operation, json.loads(await request.text())))
        script = self.answers[operation]
        status, body = script.pop(0) if len(script) > 1 else script[0]
        return web.json_response(body, status=status, content_type="application/x-amz-json-1.1")

    def sent(self, operation: str) -> list[dict[str, Any]]:
        return [body for op, body in self.requests if op == operation]


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedEndpoint, EcsTarget]]:
    endpoint = ScriptedEndpoint()
    app = web.Application()
    app.router.add_post("/", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield endpoint, EcsTarget(region=REGION, endpoint_url=f"http://{host}:{port}")
    finally:
        await runner.cleanup()


def counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


async def start_tasks(api: EcsApi, cluster: str, network: dict[str, Any], count: int) -> list[str]:
    """`count` tasks of a FARGATE/awsvpc definition, 10 a RunTask (ECS's limit)."""
    await api.ensure_cluster(cluster)
    await api.register_task_definition(
        {
            "family": "lab",
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": "256",
            "memory": "512",
            "containerDefinitions": [{"name": "lab", "image": "calliope/lab", "essential": True, "memory": 512}],
        }
    )
    arns: list[str] = []
    for batch in range(0, count, 10):
        answer = await api.run_task(
            {
                "cluster": cluster,
                "taskDefinition": "lab",
                "count": min(10, count - batch),
                "launchType": "FARGATE",
                "startedBy": HUB,
                "tags": [{"key": "calliope:user", "value": "ada"}],
                "networkConfiguration": network,
            }
        )
        arns.extend(t["taskArn"] for t in answer["tasks"])
    return arns


async def test_run_describe_list_stop(any_api: EcsApi, cluster_name: str, network: dict[str, Any]) -> None:
    arns = await start_tasks(any_api, cluster_name, network, count=105)
    described = await any_api.describe_tasks(cluster_name, arns[:100])
    snapshots = [TaskSnapshot.from_ecs(t, observed_at=0) for t in described.tasks]
    assert sorted(s.arn for s in snapshots) == sorted(arns[:100]) and not described.missing
    assert all(s.tags == {"calliope:user": "ada"} and s.started_by == HUB for s in snapshots)
    assert sorted(await any_api.list_tasks(cluster_name, started_by=HUB)) == sorted(arns)  # two pages
    assert await any_api.list_tasks(cluster_name, started_by="calliope-hub/someone-else") == []

    stopped = await any_api.stop_task(cluster_name, arns[0], "Stopped by Calliope Hub")
    assert stopped is not None and stopped["task"]["desiredStatus"] == "STOPPED"
    assert stopped["task"]["stoppedReason"] == "Stopped by Calliope Hub"
    assert arns[0] in await any_api.list_tasks(cluster_name, desired_status="STOPPED")
    assert any_api.calls[("RunTask", "ok")] == 11 and any_api.calls[("DescribeTasks", "ok")] == 1
    assert any_api.calls[("StopTask", "ok")] == 1 and not any_api.throttles


@pytest.mark.local_ecs_only(reason="moto never answers MISSING for tasks")
async def test_unknown_tasks_are_missing(any_api: EcsApi, cluster_name: str, network: dict[str, Any]) -> None:
    (arn,) = await start_tasks(any_api, cluster_name, network, count=1)
    unknown = arn.rsplit("/", 1)[0] + "/" + "0" * 32
    result = await any_api.describe_tasks(cluster_name, [arn, unknown])
    assert [t["taskArn"] for t in result.tasks] == [arn] and result.missing == [unknown]


async def test_ensure_cluster_creates_once(moto_api: EcsApi, cluster_name: str) -> None:
    first = await moto_api.ensure_cluster(cluster_name)
    assert first.endswith(f":cluster/{cluster_name}")
    assert await moto_api.ensure_cluster(cluster_name) == first
    assert moto_api.calls[("CreateCluster", "ok")] == 1


async def test_unknown_cluster_is_an_ecs_api_error(moto_api: EcsApi) -> None:
    before = counter(ECS_API_CALLS, "DescribeTasks", "error")
    with pytest.raises(EcsApiError) as caught:
        await moto_api.describe_tasks("no-such-cluster", ["arn:aws:ecs:us-east-1:123456789012:task/x/1"])
    assert caught.value.code == "ClusterNotFoundException" and not caught.value.throttled
    assert moto_api.calls[("DescribeTasks", "error")] == 1
    assert counter(ECS_API_CALLS, "DescribeTasks", "error") == before + 1


async def test_an_unreachable_endpoint_is_an_ecs_api_error() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = await EcsApi.create(EcsTarget(REGION, f"http://127.0.0.1:{port}"), max_attempts=1, connect_timeout=1)
    try:
        with pytest.raises(EcsApiError) as caught:
            await api.list_tasks("any")
    finally:
        await api.close()
    assert caught.value.code == "EndpointConnectionError"
    assert api.calls[("ListTasks", "error")] == 1


async def test_list_tasks_follows_next_token(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    pages = [[f"arn:task/{p}-{i}" for i in range(n)] for p, n in enumerate((100, 100, 5))]
    endpoint.answers["ListTasks"] = [
        (200, {"taskArns": pages[0], "nextToken": "t1"}),
        (200, {"taskArns": pages[1], "nextToken": "t2"}),
        (200, {"taskArns": pages[2]}),
    ]
    api = await EcsApi.create(target)
    try:
        arns = await api.list_tasks("c", started_by=HUB, family="lab")
    finally:
        await api.close()
    assert arns == pages[0] + pages[1] + pages[2]
    sent = endpoint.sent("ListTasks")
    assert [body.get("nextToken") for body in sent] == [None, "t1", "t2"]
    assert all(
        body["maxResults"] == 100
        and body["startedBy"] == HUB
        and body["family"] == "lab"
        and body["desiredStatus"] == "RUNNING"
        for body in sent
    )


async def test_describe_separates_missing_from_other_failures(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    failures = [{"arn": "arn:task/gone", "reason": "MISSING"}, {"arn": "arn:task/odd", "reason": "INTERNAL"}]
    endpoint.answers["DescribeTasks"] = [(200, {"tasks": [{"taskArn": "arn:task/ok"}], "failures": failures})]
    api = await EcsApi.create(target)
    try:
        result = await api.describe_tasks("c", ["arn:task/ok", "arn:task/gone", "arn:task/odd"])
        assert await api.describe_tasks("c", []) == type(result)(tasks=[])
        with pytest.raises(ValueError, match="at most 100"):
            await api.describe_tasks("c", [f"arn:task/{i}" for i in range(101)])
    finally:
        await api.close()
    assert result.missing == ["arn:task/gone"] and result.failures == failures
    assert endpoint.sent("DescribeTasks") == [
        {"cluster": "c", "tasks": ["arn:task/ok", "arn:task/gone", "arn:task/odd"], "include": ["TAGS"]}
    ]


async def test_describe_all_is_one_call_per_hundred_and_one_answer_per_chunk(
    scripted: tuple[ScriptedEndpoint, EcsTarget],
) -> None:
    endpoint, target = scripted
    throttled = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    endpoint.answers["DescribeTasks"] = [(200, {"tasks": [], "failures": []}), throttled, (200, {"tasks": []})]
    api = await EcsApi.create(target, max_attempts=1)
    try:
        answers = await api.describe_all("c", [f"arn:task/{i}" for i in range(250)], concurrency=1)
        assert await api.describe_all("c", []) == []
        with pytest.raises(ValueError, match="concurrency"):
            await api.describe_all("c", ["arn:task/1"], concurrency=0)
    finally:
        await api.close()
    assert [len(call["tasks"]) for call in endpoint.sent("DescribeTasks")] == [100, 100, 50]
    assert isinstance(answers[1], EcsApiError) and answers[1].throttled  # that chunk is unknown, not stopped
    assert [type(a).__name__ for a in answers] == ["DescribeResult", "EcsApiError", "DescribeResult"]


async def test_describe_all_guards_each_call_once_it_holds_its_turn(
    scripted: tuple[ScriptedEndpoint, EcsTarget],
) -> None:
    """`within` (the watcher's timeout) wraps every call; an EcsApiError it raises is that chunk's answer."""
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [(200, {"tasks": []})] * 3
    guarded: list[int] = []

    async def within(call: Awaitable[DescribeResult]) -> DescribeResult:
        answer = await call
        guarded.append(len(guarded))
        if len(guarded) == 2:  # the guard refuses this one, as a timeout would
            raise EcsApiError("DescribeTasks", "TimeoutError", "not done within 10s")
        return answer

    api = await EcsApi.create(target, max_attempts=1)
    try:
        answers = await api.describe_all("c", [f"arn:task/{i}" for i in range(250)], concurrency=1, within=within)
    finally:
        await api.close()
    assert guarded == [0, 1, 2] and len(endpoint.sent("DescribeTasks")) == 3
    assert [type(a).__name__ for a in answers] == ["DescribeResult", "EcsApiError", "DescribeResult"]


async def test_stopping_a_task_ecs_forgot_answers_none(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    not_found = {"__type": "InvalidParameterException", "message": "The referenced task was not found."}
    endpoint.answers["StopTask"] = [(400, not_found), (400, {"__type": "AccessDeniedException", "message": "no"})]
    api = await EcsApi.create(target, max_attempts=1)
    try:
        assert await api.stop_task("c", "arn:task/gone", "Stopped by Calliope Hub") is None
        with pytest.raises(EcsApiError) as caught:
            await api.stop_task("c", "arn:task/gone", "Stopped by Calliope Hub")
    finally:
        await api.close()
    assert caught.value.code == "AccessDeniedException" and not caught.value.task_gone


async def test_throttles_that_retries_swallow_are_counted(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [THROTTLED, THROTTLED, EMPTY_DESCRIBE]
    before = counter(ECS_THROTTLES, "DescribeTasks")
    api = await EcsApi.create(target, retry_mode="standard", max_attempts=5)
    try:
        result = await api.describe_tasks("c", ["arn:task/1"])
    finally:
        await api.close()
    assert result.tasks == [] and len(endpoint.sent("DescribeTasks")) == 3
    assert api.calls == {("DescribeTasks", "ok"): 1}
    assert api.throttles["DescribeTasks"] == 2 and api.attempts["DescribeTasks"] == 3
    assert counter(ECS_THROTTLES, "DescribeTasks") == before + 2


async def test_throttling_beyond_the_retries_is_a_throttled_error(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [THROTTLED]
    api = await EcsApi.create(target, max_attempts=2)
    try:
        with pytest.raises(EcsApiError) as caught:
            await api.describe_tasks("c", ["arn:task/1"])
    finally:
        await api.close()
    assert caught.value.throttled and caught.value.code == "ThrottlingException"
    assert api.calls == {("DescribeTasks", "throttled"): 1} and api.throttles["DescribeTasks"] == 2


async def test_ssm_calls_and_throttles_are_counted_with_ecs(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    """The aws_client beside ECS (SSM here) counts its calls and throttles in the same metrics."""
    endpoint, target = scripted
    endpoint.answers["PutParameter"] = [THROTTLED, (200, {"Version": 1})]
    endpoint.answers["DeleteParameters"] = [THROTTLED]
    before = [counter(ECS_API_CALLS, "PutParameter", "ok"), counter(ECS_THROTTLES, "PutParameter")]
    failed = counter(ECS_API_CALLS, "DeleteParameters", "throttled")
    async with aws_client("ssm", target, max_attempts=2) as ssm:
        await ssm.put_parameter(Name="/t/a", Value="v", Type="SecureString")
        with pytest.raises(ClientError):
            await ssm.delete_parameters(Names=["/t/a"])
    assert [counter(ECS_API_CALLS, "PutParameter", "ok"), counter(ECS_THROTTLES, "PutParameter")] == [
        before[0] + 1,
        before[1] + 1,
    ]
    assert counter(ECS_API_CALLS, "DeleteParameters", "throttled") == failed + 1
    assert len(endpoint.sent("DeleteParameters")) == 2


class FakeTime:
    """A clock that only moves when the limiter sleeps, so the test measures tokens, not time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_limiter_holds_back_the_101st_read(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [EMPTY_DESCRIBE]
    endpoint.answers["ListTasks"] = [(200, {"taskArns": []})]
    time = FakeTime()
    api = await EcsApi.create(target, clock=time.clock, sleep=time.sleep)
    try:
        await asyncio.gather(*(api.describe_tasks("c", ["arn:task/1"]) for _ in range(100)))
        assert time.sleeps == [] and not api.limited
        await api.list_tasks("c")  # ListTasks draws on the same cluster-read bucket
    finally:
        await api.close()
    assert time.sleeps == [pytest.approx(1 / 20)] and api.limited == {"ListTasks": 1}
    assert len(endpoint.requests) == 101


async def test_without_quotas_nothing_is_held_back(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [EMPTY_DESCRIBE]
    time = FakeTime()
    api = await EcsApi.create(target, client_quotas=None, clock=time.clock, sleep=time.sleep)
    try:
        await asyncio.gather(*(api.describe_tasks("c", ["arn:task/1"]) for _ in range(150)))
    finally:
        await api.close()
    assert time.sleeps == [] and api.calls == {("DescribeTasks", "ok"): 150}


async def test_botocore_retries_wait_for_their_own_tokens(scripted: tuple[ScriptedEndpoint, EcsTarget]) -> None:
    """Each HTTP attempt, retries included, takes a quota token: 2 throttles + 1 answer cost 3, not 1."""
    endpoint, target = scripted
    endpoint.answers["DescribeTasks"] = [THROTTLED, THROTTLED, EMPTY_DESCRIBE]
    time = FakeTime()
    quota = {"cluster-read": Quota(burst=1, rate=10)}
    api = await EcsApi.create(target, client_quotas=quota, clock=time.clock, sleep=time.sleep)
    try:
        await api.describe_tasks("c", ["arn:task/1"])
    finally:
        await api.close()
    assert api.attempts["DescribeTasks"] == 3
    # The first attempt had the burst's one token; each retry waited a tenth of a second for its own.
    assert api.limited == {"DescribeTasks": 2} and sum(time.sleeps) == pytest.approx(0.2)


async def test_bad_retry_mode_is_refused(moto_target: EcsTarget) -> None:
    with pytest.raises(ValueError, match="retry_mode"):
        await EcsApi.create(moto_target, retry_mode="sometimes")


async def test_the_limiter_keeps_under_a_real_quota(local_ecs_factory: Callable[..., Any]) -> None:
    """Local ECS enforces a small read quota; the limited client is never throttled, the naive one is."""
    server = local_ecs_factory(throttle="read=15:20")
    target = EcsTarget(REGION, server.endpoint_url)
    limited = await EcsApi.create(target, client_quotas={"cluster-read": Quota(burst=10, rate=20)})
    naive = await EcsApi.create(target, client_quotas=None, max_attempts=1)
    try:
        await limited.ensure_cluster("quota")
        await asyncio.gather(*(limited.list_tasks("quota") for _ in range(30)))
        answers = await asyncio.gather(*(naive.list_tasks("quota") for _ in range(30)), return_exceptions=True)
    finally:
        await limited.close()
        await naive.close()
    assert limited.calls[("ListTasks", "ok")] == 30 and not limited.throttles
    assert limited.limited["ListTasks"] > 0
    throttled = [a for a in answers if isinstance(a, EcsApiError) and a.throttled]
    assert throttled and naive.calls[("ListTasks", "throttled")] == len(throttled) == naive.throttles["ListTasks"]
