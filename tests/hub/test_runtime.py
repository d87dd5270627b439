"""The HubRuntime builds everything once from config, checks it at the first spawner, and closes all of it.

In process, against a real local ECS (sim) and moto's SQS: the same objects a hub builds,
with the spawners of one pretend hub sharing one runtime (tests/spawner/conftest.py).
The whole-hub half (a real JupyterHub shut down by SIGTERM) is in test_hub_shutdown.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.exceptions import ProfileNotFound
from sqlalchemy import text
from traitlets import TraitError
from traitlets.config import Config

from calliope_hub.catalog import CatalogConfigError
from calliope_hub.ecsfacts import CLIENT_QUOTA_SHARE
from calliope_hub.hub.config import CalliopeEvents, CloudWatchEmf, ECSSpawnerConfig, OrphanSweep
from calliope_hub.hub.dbindexes import INDEXES
from calliope_hub.hub.runtime import HubRuntime
from calliope_hub.observability import emf
from calliope_hub.spawner import ECSSpawner
from tests.hubtest import eventually
from tests.spawner.conftest import SpawnerMaker, prepare


def open_sessions(client: Any) -> list[aiohttp.ClientSession]:
    """The aiohttp sessions an aiobotocore client holds (aiobotocore keeps them per proxy)."""
    return list((client._endpoint.http_session._sessions or {}).values())


def sqs_queue(endpoint_url: str) -> str:
    sqs = boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")  # test set-up only
    return str(sqs.create_queue(QueueName="calliope-runtime-test")["QueueUrl"])


def events_config(queue_url: str, moto: str, queue_size: int = 77) -> Config:
    return Config(
        {
            "CalliopeEvents": {
                "enabled": True,
                "queue_size": queue_size,
                "sqs_queue_url": queue_url,
                "sqs_endpoint_url": moto,
            }
        }
    )


def stop_task_calls(runtime: HubRuntime) -> int:
    assert runtime.api is not None
    return sum(n for (op, _), n in runtime.api.calls.items() if op == "StopTask")


async def test_close_leaves_no_client_session_and_no_task(
    local_ecs: Any, moto_ecs: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    await prepare(local_ecs.endpoint_url)
    maker = SpawnerMaker(local_ecs.endpoint_url)
    config = events_config(sqs_queue(moto_ecs), moto_ecs)
    config.CloudWatchEmf.enabled, config.CloudWatchEmf.path = True, str(tmp_path / "emf.jsonl")
    sessions = await _start_with_everything_on(maker, config)

    await maker.close()

    assert maker.runtime is None and emf._writer is None, "the EMF writer is the runtime's and goes with it"
    assert '"SpawnDuration"' in (tmp_path / "emf.jsonl").read_text()
    assert all(s.closed for s in sessions), "the ECS and SQS clients are closed"
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == [], "no task is left pending"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]


async def _start_with_everything_on(maker: SpawnerMaker, config: Config) -> list[aiohttp.ClientSession]:
    """A spawn with events, SQS and EMF on; the clients' open sessions."""
    spawner = maker(config=config, user_options={"service": "lab"})
    runtime = spawner.runtime
    assert maker("bob").runtime is runtime, "one runtime per hub"
    await spawner.start()
    assert runtime.api is not None and runtime.ingest is not None and runtime.sqs is not None
    # c.CalliopeEvents.queue_size sizes the one queue, also with SQS on (it used to be ignored then)
    assert runtime.ingest._queue.maxsize == 77
    sqs = runtime.sqs
    await eventually(lambda: _polled(sqs), 10, "the SQS consumer polling")
    sessions = open_sessions(runtime.api._client) + open_sessions(sqs._client)
    assert sessions and not any(s.closed for s in sessions)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()], "the runtime runs loops"
    return sessions


async def test_jupyterhubs_shutdown_cancellation_closes_it(local_ecs: Any) -> None:
    """JupyterHub's shutdown_cancel_tasks: after cleanup(), cancel every task and await them all."""
    await prepare(local_ecs.endpoint_url)
    maker = SpawnerMaker(local_ecs.endpoint_url)
    spawner = maker(user_options={"service": "chat"})
    await spawner.start()
    runtime = spawner.runtime
    assert runtime.api is not None
    sessions = open_sessions(runtime.api._client)

    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)

    assert runtime.closed and sessions and all(s.closed for s in sessions)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def _polled(consumer: Any) -> bool:
    return consumer._task is not None and not consumer._task.done()


async def test_a_task_known_stopped_gets_no_stop_task(local_ecs: Any) -> None:
    await prepare(local_ecs.endpoint_url)
    maker = SpawnerMaker(local_ecs.endpoint_url)
    spawner = maker(user_options={"service": "lab", "size": "small"})
    try:
        await spawner.start()
        spawner.start_polling()
        notified: list[int | None] = []

        async def poll_and_notify() -> int | None:
            notified.append(await spawner.poll())
            return notified[-1]

        spawner.poll_and_notify = poll_and_notify  # what the hub does on a stop, minus its own bookkeeping
        status, _ = local_ecs.kill(spawner.task_arn.rsplit("/", 1)[-1], exit_code=3)
        assert status == 202
        await eventually(lambda: _truthy(notified), 10, "the stop callback")
        assert notified == [3], "poll() answers with the snapshot the watcher handed the callback"

        before = stop_task_calls(spawner.runtime)
        await spawner.stop()
        assert stop_task_calls(spawner.runtime) == before, "no StopTask for a task ECS reported STOPPED"
    finally:
        await maker.close()


async def _truthy(values: list[Any]) -> bool:
    return bool(values)


@pytest.mark.parametrize(
    "config, error, words",
    [
        ({"ECSSpawner": {"region": "mars-1"}}, ValueError, "ECSSpawner.region"),
        ({"ECSSpawner": {"region": "EU (Ireland)"}}, ValueError, "must be an AWS Region ECS runs in"),
        ({"ECSSpawner": {"region": "us-east1"}}, ValueError, "did you mean 'us-east-1'"),
        ({"ECSSpawner": {"subnet": ["subnet-0abc"]}}, ValueError, "no setting 'subnet' .did you mean 'subnets'"),
        ({"ECSSpawner": {"endpoint_url": ""}}, ValueError, "subnets is still the local default"),
        ({"ECSSpawner": {"endpoint_url": "https://ecs.us-east-1.amazonaws.com"}}, ValueError, "set the VPC subnets"),
        ({"ECSSpawner": {"launch_type": "SPOT"}}, TraitError, "launch_type"),
        ({"CalliopeEvents": {"queue_size": 0}}, TraitError, "queue_size"),
        ({"CalliopeEvents": {"sweeps": "sometimes"}}, TraitError, "sweeps"),
        ({"OrphanSweep": {"action": "delete"}}, TraitError, "action"),
        ({"CloudWatchEmf": {"namespace": "no*stars"}}, ValueError, "CloudWatchEmf.namespace"),
        ({"ECSSpawner": {"catalog_path": "/nonexistent/calliope-catalog"}}, CatalogConfigError, "calliope-catalog"),
        ({"ECSSpawner": {"endpoint_url": "localhost:9400"}}, ValueError, "ECSSpawner.endpoint_url"),
        ({"CalliopeEvents": {"sqs_endpoint_url": "sqs here"}}, ValueError, "sqs_endpoint_url"),
        ({"ECSSpawner": {"ssm_endpoint_url": "ssm here"}}, ValueError, "ECSSpawner.ssm_endpoint_url"),
        ({"ECSSpawner": {"secret_parameter_root": "calliope"}}, ValueError, "secret_parameter_root"),
        ({"ECSSpawner": {"secret_parameter_root": "/aws/calliope"}}, ValueError, "secret_parameter_root"),
        ({"ECSSpawner": {"task_commands": "sometimes"}}, TraitError, "task_commands"),
        ({"ECSSpawner": {"aws_profile": "no-such-profile"}}, ProfileNotFound, "no-such-profile"),
        ({"CloudWatchEmf": {"enabled": True, "path": "/nonexistent/dir/emf.jsonl"}}, OSError, "emf.jsonl"),
    ],
)
def test_bad_config_stops_the_first_spawner(
    config: dict[str, Any], error: type[Exception], words: str, tmp_path: Any
) -> None:
    """JupyterHub builds every running server's spawner at start: a bad value stops the hub there.

    Checked before the runtime starts, because JupyterHub's startup check of running servers
    takes any error from poll() for "not running" and would stop them.
    """
    with pytest.raises(error, match=words):
        # the maker sets endpoint_url itself, as a hub's config would
        SpawnerMaker(config.get("ECSSpawner", {}).get("endpoint_url", "http://127.0.0.1:9"))(config=Config(config))


def test_help_lists_the_allowed_values() -> None:
    """Enum traits, so `jupyterhub --help-all` tells an operator what each setting accepts."""
    assert "'FARGATE'" in ECSSpawnerConfig.class_get_help() and "'EC2'" in ECSSpawnerConfig.class_get_help()
    assert "'hub'" in CalliopeEvents.class_get_help() and "'off'" in CalliopeEvents.class_get_help()
    assert "'dry-run'" in OrphanSweep.class_get_help()
    assert "namespace" in CloudWatchEmf.class_get_help()
    assert issubclass(ECSSpawner, ECSSpawnerConfig)


@pytest.mark.parametrize(("higher", "rate"), [(False, 3 * CLIENT_QUOTA_SHARE), (True, 10 * CLIENT_QUOTA_SHARE)])
async def test_the_secret_store_writes_at_the_accounts_parameter_store_throughput(
    local_ecs: Any, higher: bool, rate: float
) -> None:
    """c.ECSSpawner.ssm_higher_throughput reaches the SSM client's bucket: PutParameter caps spawns (ecsfacts)."""
    await prepare(local_ecs.endpoint_url)
    maker = SpawnerMaker(local_ecs.endpoint_url)
    spawner = maker(ssm_higher_throughput=higher)
    try:
        await spawner.runtime.start()
        buckets = spawner.runtime.secrets._buckets
        assert buckets is not None
        assert buckets.buckets["ssm-put-parameter"].quota.rate == pytest.approx(rate)
    finally:
        await maker.close()


async def test_the_hub_database_gets_its_indexes_at_start_with_the_orphan_sweep_off(local_ecs: Any) -> None:
    """JupyterHub's init_spawners loads spawners by user_id whatever the sweep does: the runtime's start
    (which our app awaits before init_spawners) ensures the indexes, not only the sweep's owners."""
    await prepare(local_ecs.endpoint_url)
    maker = SpawnerMaker(local_ecs.endpoint_url)
    db = maker.database.session
    maker.hub_settings.update(db=db, users={})  # inside a real hub
    spawner = maker(config=Config({"OrphanSweep": {"action": "off"}}))
    try:
        await spawner.runtime.start()
        names = {row[0] for row in db.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
        assert set(INDEXES) <= names, names
    finally:
        await maker.close()
