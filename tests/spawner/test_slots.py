"""Slot task definitions (calliope_hub.ecs.slots) on local ECS in sim mode, with real aiobotocore and boto3.

A service without per-user storage (chat) runs every server from a small pool of shared
definitions, each naming one SSM parameter. What must hold:

- a slot's parameter is never written while a task that may still read it is PENDING, in a
  burst, and after a restart that forgot every lease (checked at every write, against ECS);
- slots in use follow spawns in flight, and are reused: the second wave registers nothing;
- the token leaves SSM once ECS has read it;
- a restarted hub finds its slots again instead of registering them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from calliope_hub.ecs.secrets import SecretStore
from calliope_hub.ecs.slots import PENDING_STATES
from tests.spawner.conftest import SpawnerMaker

CHAT = {"service": "chat", "size": "small"}


class SlotWrites:
    """At every write of a slot parameter, asks ECS (boto3) whether a task naming it is still PENDING."""

    def __init__(self, endpoint_url: str):
        self.ecs = boto3.client("ecs", endpoint_url=endpoint_url, region_name="us-east-1")
        self.ssm = boto3.client("ssm", endpoint_url=endpoint_url, region_name="us-east-1")
        self.writes: list[str] = []
        self.violations: list[tuple[str, str, str]] = []
        self._names: dict[str, str] = {}

    def parameter_of(self, definition_arn: str) -> str:
        if definition_arn not in self._names:
            definition = self.ecs.describe_task_definition(taskDefinition=definition_arn)["taskDefinition"]
            secrets = definition["containerDefinitions"][0].get("secrets") or [{"valueFrom": ""}]
            self._names[definition_arn] = secrets[0]["valueFrom"]
        return self._names[definition_arn]

    def check(self, name: str) -> None:
        self.writes.append(name)
        arns = self.ecs.list_tasks(cluster="calliope")["taskArns"]
        for start in range(0, len(arns), 100):
            for task in self.ecs.describe_tasks(cluster="calliope", tasks=arns[start : start + 100])["tasks"]:
                if task["lastStatus"] in PENDING_STATES and self.parameter_of(task["taskDefinitionArn"]) == name:
                    self.violations.append((name, task["taskArn"], task["lastStatus"]))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = SecretStore.put_value

        async def put_value(store: SecretStore, name: str, value: str, *, prepaid: bool = False) -> None:
            if "/slots/" in name:
                await asyncio.to_thread(self.check, name)
            await original(store, name, value, prepaid=prepaid)

        monkeypatch.setattr(SecretStore, "put_value", put_value)

    def present(self, name: str) -> bool:
        try:
            self.ssm.get_parameter(Name=name)
        except ClientError as e:
            return e.response["Error"]["Code"] != "ParameterNotFound"
        return True


def registrations(local: Any) -> int:
    return int(local.stats()["calls"].get("RegisterTaskDefinition", {}).get("ok", 0))


@dataclass
class SlotRig:
    """Local ECS (sim) with every slot write checked against it, and one pretend hub's spawners on it."""

    local: Any
    writes: SlotWrites
    make: SpawnerMaker
    before: int  # RegisterTaskDefinition calls before the test's spawns

    def registered(self) -> int:
        """Task definitions registered since the rig was set up."""
        return registrations(self.local) - self.before


@pytest.fixture
def slot_rig(
    local_ecs_factory: Any, spawners_on: Any, monkeypatch: pytest.MonkeyPatch
) -> Callable[[float, float], Awaitable[SlotRig]]:
    """`await slot_rig(provisioning_s, pending_s)`: how long each sim task dwells before RUNNING."""

    async def rig(provisioning: float, pending: float) -> SlotRig:
        local = local_ecs_factory(sim_provisioning_s=provisioning, sim_pending_s=pending)
        writes = SlotWrites(local.endpoint_url)
        writes.install(monkeypatch)
        make = await spawners_on(local.endpoint_url)
        return SlotRig(local, writes, make, registrations(local))

    return rig


def chat(make: SpawnerMaker, user: str) -> Any:
    """A spawner as the hub hands it over: with the server's new API token."""
    spawner = make(user, user_options=CHAT)
    spawner.api_token = secrets.token_hex(16)
    return spawner


async def start_all(make: SpawnerMaker, users: list[str]) -> list[Any]:
    spawners = [chat(make, user) for user in users]
    await asyncio.gather(*(spawner.start() for spawner in spawners))
    return spawners


async def slots_released(make: SpawnerMaker) -> None:
    """Every lease has been given back (its task left PENDING, its parameter cleared)."""
    runtime = make.runtime
    assert runtime is not None and runtime.task_definitions is not None
    pool = runtime.task_definitions.slots
    for _ in range(200):
        if pool.in_use == 0 and pool.holding == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pool.in_use} slots still leased, {pool.holding} holds")


async def test_a_burst_leases_one_slot_per_spawn_in_flight_and_the_next_reuses_them(
    slot_rig: Callable[[float, float], Awaitable[SlotRig]],
) -> None:
    rig = await slot_rig(0.3, 1.0)
    make, writes = rig.make, rig.writes

    first = await start_all(make, [f"a{i}" for i in range(4)])
    assert all("/slots/chat/small/" in spawner.slot_parameter for spawner in first)
    definitions = {spawner.task_definition for spawner in first}
    assert len(definitions) == 4, "four spawns in flight hold four slots"
    assert rig.registered() == 4
    await slots_released(make)
    for spawner in first:
        assert not writes.present(spawner.slot_parameter), "the token left SSM once ECS read it"

    second = await start_all(make, [f"b{i}" for i in range(4)])
    assert {spawner.task_definition for spawner in second} == definitions, "the slots are reused"
    assert rig.registered() == 4, "the second wave registers nothing"
    assert len(writes.writes) == 8 and not writes.violations, writes.violations
    await asyncio.gather(*(spawner.stop() for spawner in first + second))


async def test_a_restart_finds_the_slots_and_waits_for_a_pending_task(
    slot_rig: Callable[[float, float], Awaitable[SlotRig]], spawners_on: Any
) -> None:
    """A hub that dies with a lease held: the next one vets the slot and waits until ECS read the secret."""
    rig = await slot_rig(0.2, 3.0)
    make, local = rig.make, rig.local

    dying = chat(make, "ada")
    starting = asyncio.ensure_future(dying.start())
    while not dying.task_arn:
        await asyncio.sleep(0.05)
    await make.close()  # the hub dies: its runtime (and every lease it held) is gone; the task is PENDING
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    ecs = boto3.client("ecs", endpoint_url=local.endpoint_url, region_name="us-east-1")
    status = ecs.describe_tasks(cluster="calliope", tasks=[dying.task_arn])["tasks"][0]["lastStatus"]
    assert status in PENDING_STATES, status

    restarted = await spawners_on(local.endpoint_url)
    second = chat(restarted, "bea")
    await second.start()
    assert second.task_definition == dying.task_definition, "the slot is found again, after ada's task read it"
    assert rig.registered() == 1, "a restart registers nothing"
    assert not rig.writes.violations, rig.writes.violations
    runtime = restarted.runtime
    assert runtime is not None and runtime.api is not None
    assert any(op == "ListTasks" for op, _ in runtime.api.calls), "the slot was vetted"
    await second.stop()
