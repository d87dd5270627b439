"""Every calliope_ metric, read from a real JupyterHub's /hub/metrics after a real spawn and stop.

The stack is what `calliope-hub up` runs: a JupyterHub with the ECSSpawner, local ECS (sim)
in a thread sending its task state changes to the hub's events endpoint, the orphan
sweeper at a test cadence, and CloudWatch EMF lines written to a file. A task started by hand
with the hub's startedBy is the orphan; a second of forced throttling at local ECS makes the
throttle counter move.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from calliope_hub.catalog import Catalog, Placement, TaskIdentity, run_task_request
from calliope_hub.ecs.api import EcsApi, EcsTarget
from calliope_hub.ecs.orphans import ORPHAN_STOP_REASON
from calliope_hub.ecs.taskdefs import prepare_cluster
from calliope_hub.events.wire import DEFAULT_HEADER, ROUTE
from calliope_hub.observability import metrics
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config, free_port
from tests.hubtest import eventually, require_proxy, server_ready

HUB_ID = "metrics-test"
CLUSTER = "calliope"
#: metrics that describe the present (they fall back to 0 once nothing runs): read while a server runs
CURRENT_STATE = {"calliope_watched_tasks", "calliope_sweep_tasks"}

#: metrics only a warm pool moves (this hub has none): tests/pool/test_pool_hub.py and test_keeper.py read them
POOL_ONLY = {"calliope_pool_tasks", "calliope_pool_claims", "calliope_pool_fallbacks", "calliope_pool_lost"}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def calliope_metrics() -> dict[str, str]:
    """name -> type of every metric calliope_hub.observability.metrics defines."""
    return {m._name: m._type for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


async def scrape(admin: HubApi) -> Samples:
    """/hub/metrics as {family name: [(labels, value)]}, for the families named calliope_*."""
    answer = await admin.request("GET", "/../metrics")
    assert answer.status == 200, answer.text
    found: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        if family.name.startswith("calliope_"):
            found[family.name] = [(s.labels, s.value) for s in family.samples if not s.name.endswith("_created")]
    return found


def nonzero(samples: Samples, name: str) -> bool:
    return any(value > 0 for _, value in samples.get(name, ()))


@pytest.fixture
async def stack(local_ecs_factory: Callable[..., Any]) -> AsyncIterator[tuple[HubProcess, Any, HubApi]]:
    require_proxy()
    port, secret, token = free_port(), secrets.token_urlsafe(24), secrets.token_hex(16)
    ecs = local_ecs_factory(events_url=f"http://127.0.0.1:{port}/hub{ROUTE}", events_header=(DEFAULT_HEADER, secret))
    settings = HubSettings(
        ecs_endpoint=ecs.endpoint_url,
        hub_id=HUB_ID,
        poll_interval=1,
        events_secret=secret,
        extra=[
            api_token_config(token),
            "c.CalliopeEvents.reconcile_interval = 1",
            "c.OrphanSweep.interval = 0.5",
            "c.OrphanSweep.grace_period = 1",
            "c.CloudWatchEmf.enabled = True",
            "c.CloudWatchEmf.path = 'emf.jsonl'",  # in the hub's working dir
        ],
    )
    async with HubProcess(render(settings), port=port) as hub, HubApi(hub.url, token) as admin:
        yield hub, ecs, admin


async def start_orphan(endpoint_url: str) -> tuple[EcsApi, str]:
    """A task with the hub's startedBy and tags that no spawner ever knew: an orphan."""
    api = await EcsApi.create(EcsTarget("us-east-1", endpoint_url))
    catalog = Catalog.load()
    await prepare_cluster(api, catalog, CLUSTER, local=True)
    choice = catalog.choose({})
    identity = TaskIdentity(HUB_ID, "ghost", "", choice.service.name, choice.size_name, 1)
    request = run_task_request(choice, identity, Placement(CLUSTER, subnets=("subnet-local",)), {})
    return api, (await api.run_task(request))["tasks"][0]["taskArn"]


async def test_every_calliope_metric_moves_through_a_spawn_and_a_stop(stack: tuple[HubProcess, Any, HubApi]) -> None:
    hub, ecs, admin = stack
    api, orphan = await start_orphan(ecs.endpoint_url)
    try:
        assert (await admin.request("POST", "/users/mia")).status == 201
        assert (await admin.request("POST", "/users/mia/server", {"user_options": {}})).status in (201, 202)
        await eventually(lambda: server_ready(admin, "mia"))
        assert ecs.request("POST", "/_localecs/faults/throttle", {"seconds": 1.5})[0] == 200
        # The watcher's next sweep (poll_interval 1 s) meets the throttle.
        await eventually(lambda: _moved(admin, "calliope_ecs_throttles"), 10, "a throttled ECS call counted")
        running: Samples = {}

        async def present_state_shown() -> bool:
            running.update(await scrape(admin))  # a sweep slowed by the throttle may still be retrying
            return all(nonzero(running, name) for name in CURRENT_STATE)

        await eventually(present_state_shown, seconds=10)
        assert await server_ready(admin, "mia")  # several sweeps passed: an owned task is never an orphan

        assert (await admin.request("DELETE", "/users/mia/server")).status in (202, 204)
        await eventually(lambda: _not_ready(admin, "mia"))

        async def orphan_stopped() -> bool:
            task = (await api.describe_tasks(CLUSTER, [orphan])).tasks[0]
            return task["desiredStatus"] == "STOPPED" and task.get("stoppedReason") == ORPHAN_STOP_REASON

        await eventually(orphan_stopped)
        final: Samples = {}

        async def every_metric_moved() -> bool:  # the stop's STOPPED event arrives and is judged meanwhile
            final.update(await scrape(admin))
            return not unmoved(running, final)

        try:
            await eventually(every_metric_moved, 15, "every calliope metric moved")
        except AssertionError as late:
            raise AssertionError(
                f"zero or absent on /hub/metrics: {unmoved(running, final)}\n{hub.log_tail()}"
            ) from late
    finally:
        await api.close()

    assert len(calliope_metrics()) >= 9
    assert "RUNNING" in {labels.get("last_status") for labels, v in running["calliope_watched_tasks"] if v}
    orphans = {labels["action"]: value for labels, value in final["calliope_orphans"]}
    assert orphans["found"] >= 1 and orphans["stopped"] >= 1
    spawns = {(labels["service"], labels["outcome"]) for labels, v in final["calliope_spawn_duration_seconds"] if v}
    assert ("lab", "ok") in spawns

    # One EmfWriter wrote these; tests/test_emf.py checks its lines against the EMF specification.
    emf = [json.loads(line) for line in (hub.workdir / "emf.jsonl").read_text().splitlines()]
    assert all(r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CalliopeHub" for r in emf)
    assert [r["ServiceType"] for r in emf if "SpawnDuration" in r] == ["lab"]
    assert any(r.get("Operation") == "Poll" and r["TaskCount"] >= 1 for r in emf)


async def _not_ready(admin: HubApi, user: str) -> bool:
    return not await server_ready(admin, user)


async def _moved(admin: HubApi, name: str) -> bool:
    return nonzero(await scrape(admin), name)


def unmoved(running: Samples, final: Samples) -> list[str]:
    """Metrics still zero or absent: present-state ones as read while the server ran, the rest at the end."""
    return [
        name
        for name in calliope_metrics()
        if name not in POOL_ONLY and not nonzero(running if name in CURRENT_STATE else final, name)
    ]


def test_histograms_ignore_non_finite_values() -> None:
    """One NaN or infinity in a histogram's sum stays there for the life of the process: never observed."""
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram("calliope_test_finite_seconds", "test", registry=CollectorRegistry())
    for value in (float("inf"), float("-inf"), float("nan")):
        assert metrics.observe_finite(histogram, value) is False
    assert metrics.observe_finite(histogram, 1.5) is True
    samples = {s.name: s.value for family in histogram.collect() for s in family.samples}
    assert samples["calliope_test_finite_seconds_sum"] == 1.5
    assert samples["calliope_test_finite_seconds_count"] == 1
