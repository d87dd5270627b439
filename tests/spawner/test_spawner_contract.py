"""ECSSpawner against two independent ECS implementations: local ECS (sim) and moto."""

from __future__ import annotations

import asyncio

import pytest
from tornado import web

from calliope_hub.ecs.api import EcsApi
from calliope_hub.tools.baseline import NaiveECSSpawner
from tests.spawner.conftest import SpawnerMaker


def run_task_calls(api: EcsApi) -> int:
    return sum(n for (op, _), n in api.calls.items() if op == "RunTask")


async def test_start_poll_stop(spawner_factory, ecs_endpoint):
    spawner = spawner_factory(user_options={"service": "lab", "size": "small"})
    url = await spawner.start()

    assert url.startswith("http://") and url.endswith(":8888")
    assert spawner.task_arn.startswith("arn:aws:ecs:")
    assert spawner_factory.database.commits >= 1, "the task ARN must be committed as soon as RunTask answers"
    assert spawner.orm_spawner.state["task_arn"] == spawner.task_arn
    assert await spawner.poll() is None

    arn = spawner.task_arn
    await spawner.stop()
    watcher = await spawner._status()
    assert watcher.get(arn) is None, "stop() unwatches the task"
    spawner.clear_state()  # as the hub does after stop()
    assert await spawner.poll() == 0


async def test_state_round_trip_reattaches(spawner_factory):
    first = spawner_factory(user_options={"service": "chat", "size": "small"})
    await first.start()
    state = first.get_state()
    assert state["service"] == "chat" and state["size"] == "small"

    # A restarted hub: its runtime closed, a new one whose watcher never saw the task.
    await spawner_factory.close()
    restarted = SpawnerMaker(spawner_factory.endpoint_url, **spawner_factory.network)
    try:
        second = restarted()
        second.load_state(state)
        assert second.task_arn == first.task_arn
        assert await second.poll() is None, "a running task is adopted, not stopped"
        await second.stop()
    finally:
        await restarted.close()


async def test_tags_and_started_by(spawner_factory, ecs_endpoint):
    spawner = spawner_factory(hub_id="hub-7", user_options={"service": "waiide", "size": "medium"})
    await spawner.start()
    api = await spawner._ecs()
    task = (await api.describe_tasks("calliope", [spawner.task_arn])).tasks[0]
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags["calliope:hub"] == "hub-7"
    assert tags["calliope:user"] == "alice"
    assert tags["calliope:service"] == "waiide"
    assert tags["calliope:size"] == "medium"
    assert task["startedBy"] == "calliope-hub/hub-7"
    assert task["overrides"]["cpu"] == "2048" and task["overrides"]["memory"] == "8192"
    await spawner.stop()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"service": "notebook"}, "notebook"),
        ({"service": "lab", "size": "huge"}, "huge"),
        ({"service": "chat", "size": "large"}, "does not offer size 'large'"),
        ({"service": "lab", "image": "evil/miner"}, "image"),
        ({"service": "lab", "command": ["sh"]}, "command"),
        ({"service": "lab", "cpu": "16384"}, "cpu"),
    ],
)
async def test_bad_options_are_a_400_and_start_nothing(spawner_factory, ecs_endpoint, options, message):
    spawner = spawner_factory(user_options=options)
    api = await spawner._ecs()
    before = run_task_calls(api)

    with pytest.raises(web.HTTPError) as caught:
        await spawner._run_apply_user_options(options)
    assert caught.value.status_code == 400
    assert message in caught.value.log_message
    with pytest.raises(web.HTTPError):
        await spawner.start()

    assert run_task_calls(api) == before
    assert spawner.task_arn == ""


async def test_task_that_fails_to_start_names_the_reason(local_ecs_factory, spawners_on):
    """Local ECS only: moto runs nothing, so its tasks never fail on their own."""
    failing = local_ecs_factory(sim_fail_fraction=1.0)
    make = await spawners_on(failing.endpoint_url)
    spawner = make(user_options={"service": "lab", "size": "small"})

    with pytest.raises(web.HTTPError) as caught:
        await spawner.start()
    # The user reads ECS's own stoppedReason, not a generic timeout.
    message = (
        "The ECS task stopped (TaskFailedToStart, no exit code): CannotPullContainerError: simulated failure to start"
    )
    assert caught.value.log_message == message
    assert caught.value.jupyterhub_message == message, "what JupyterHub's progress stream shows"
    assert spawner.task_arn, "the ARN stays in state so the hub can clean up"


async def test_progress_follows_the_lifecycle(local_ecs_factory, spawners_on):
    ecs = local_ecs_factory(sim_provisioning_s=0.3, sim_pending_s=0.3)
    make = await spawners_on(ecs.endpoint_url)
    spawner = make(user_options={"service": "lab", "size": "small"})

    events = []

    async def follow() -> None:
        # A hub reads progress until the spawn ends; past RUNNING it says the server is starting.
        async for event in spawner.progress():
            events.append(event)
            if event["message"].startswith("RUNNING"):
                return

    follower = asyncio.create_task(follow())
    await spawner.start()
    await asyncio.wait_for(follower, 10)

    messages = [e["message"] for e in events]
    assert messages[0] == "Task submitted to ECS"
    assert any(m.startswith("RUNNING") for m in messages)
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    await spawner.stop()


async def test_naive_baseline_polls_one_task_per_call(spawner_factory, ecs_endpoint):
    """The benchmark's baseline: once running, each poll() is its own DescribeTasks, with no limiter."""
    naive = SpawnerMaker(ecs_endpoint, NaiveECSSpawner, **spawner_factory.network)
    spawner = naive(user_options={"service": "chat", "size": "small"})
    try:
        await _poll_twice_and_stop(spawner)
    finally:
        await naive.close()


async def _poll_twice_and_stop(spawner) -> None:
    await spawner.start()
    watcher = await spawner._status()
    assert watcher.get(spawner.task_arn) is None, "the stock pattern has no shared watcher"

    api = await spawner._ecs()
    assert api._limiter is None, "the stock pattern meets ECS's quota head on"
    before = api.calls[("DescribeTasks", "ok")]
    assert await spawner.poll() is None
    assert await spawner.poll() is None
    assert api.calls[("DescribeTasks", "ok")] == before + 2
    await spawner.stop()
