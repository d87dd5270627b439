"""The pool keeper against local ECS in process mode: fill, claim, races, bad claims, deaths, restarts.

Every warm task is a real launcher process; a claim makes it the real Chat stand-in server.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import boto3
import psutil
from prometheus_client import REGISTRY

from calliope_hub.ecs.identity import read_tags, started_by
from calliope_hub.ecs.orphans import OrphanSweeper, Ownership, ServerKey
from calliope_hub.pool.config import PoolSpec
from calliope_hub.pool.definition import POOL_TAG
from calliope_hub.pool.keeper import STARTING, WAITING, PoolKeeper
from calliope_hub.pool.launcher import CLAIM_PATH
from calliope_hub.pool.secret import NONCE_VARIABLE, claim_secret
from tests.pool.conftest import CHAT_SMALL, CLUSTER, PoolRig, eventually, filled, identity, user_environment


def described(rig: PoolRig, arn: str) -> dict:
    ecs = boto3.client("ecs", endpoint_url=rig.local.endpoint_url, region_name="us-east-1")  # the test's own view
    return ecs.describe_tasks(cluster=CLUSTER, tasks=[arn], include=["TAGS"])["tasks"][0]


def pool_tag(task: dict) -> str:
    return next(tag["value"] for tag in task.get("tags", []) if tag["key"] == POOL_TAG)


async def serves(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def idle_arns(keeper: PoolKeeper, pool: PoolSpec = CHAT_SMALL) -> set[str]:
    return {task.arn for task in keeper.tasks(pool, WAITING)}


async def test_a_claim_hands_over_the_environment_and_retags_the_task(rig: PoolRig) -> None:
    keeper = rig.keeper()
    await filled(keeper, CHAT_SMALL, 1)
    (warm,) = keeper.tasks(CHAT_SMALL, WAITING)
    assert pool_tag(described(rig, warm.arn)) == "idle"
    choice = rig.catalog.choose({"service": "chat", "size": "small"})

    outcome = await keeper.claim(choice, identity("alice"), user_environment("alice"))

    assert outcome.arn == warm.arn and outcome.message == "Warm server claimed"
    task = described(rig, warm.arn)
    assert pool_tag(task) == "claimed"
    assert read_tags(task["tags"]) == {
        "hub": "pooltest",
        "user": "alice",
        "server": "",
        "service": "chat",
        "size": "small",
    }
    await eventually(lambda: serves(f"http://{warm.ip}:8000/user/alice/api/status"), 30, "alice's Chat answers")
    assert "token-of-alice" not in str(task), "the token never crossed the ECS API"
    assert warm.arn not in {t.arn for t in keeper.tasks(CHAT_SMALL)}, "a claimed task leaves the pool"
    await filled(keeper, CHAT_SMALL, 1)
    assert idle_arns(keeper) != {warm.arn}, "the pool refilled with a new task"


async def test_two_spawns_race_for_one_warm_task_and_one_gets_it(rig: PoolRig) -> None:
    pool = CHAT_SMALL
    keeper = rig.keeper(pool)
    await filled(keeper, pool, 1)
    choice = rig.catalog.choose({"service": "chat", "size": "small"})

    first, second = await asyncio.gather(
        keeper.claim(choice, identity("alice"), user_environment("alice")),
        keeper.claim(choice, identity("bob"), user_environment("bob")),
    )

    winners = [o for o in (first, second) if o.arn is not None]
    assert len(winners) == 1, (first, second)
    loser = second if winners[0] is first else first
    assert loser.arn is None and "cold" in loser.message, "the other spawn is told it starts cold"


async def test_two_hubs_racing_for_one_task_claim_it_once_and_the_winner_keeps_it(rig: PoolRig) -> None:
    """The launcher is the last word: two keepers that both believe a task idle cannot both claim it."""
    ours = rig.keeper()
    await filled(ours, CHAT_SMALL, 1)
    theirs = rig.fresh_watcher().keeper()  # a second hub that adopted the same idle task
    await theirs.fill_once()
    await eventually(lambda: idle_arns(theirs) == idle_arns(ours), 30, "the second hub sees the task idle")
    (arn,) = idle_arns(ours)
    choice = rig.catalog.choose({"service": "chat", "size": "small"})

    outcomes = await asyncio.gather(
        ours.claim(choice, identity("alice"), user_environment("alice")),
        theirs.claim(choice, identity("bob"), user_environment("bob")),
    )

    assert [o.arn for o in outcomes].count(arn) == 1, outcomes
    winner = "alice" if outcomes[0].arn else "bob"
    await asyncio.sleep(1.0)  # past the loser's suspect grace (0.5 s): it must not stop the winner's task
    task = described(rig, arn)
    assert task["desiredStatus"] == "RUNNING" and read_tags(task["tags"])["user"] == winner


async def test_a_wrong_secret_is_refused_and_the_task_stays_in_the_pool(rig: PoolRig) -> None:
    keeper = rig.keeper()
    await filled(keeper, CHAT_SMALL, 1)
    (warm,) = keeper.tasks(CHAT_SMALL, WAITING)
    # Someone who read the task's overrides (the nonce is there) but holds no pool key
    forged = claim_secret("a guessed key", warm.nonce)
    async with aiohttp.ClientSession() as http:
        for secret in (forged, "", warm.nonce):
            async with http.post(
                f"http://{warm.ip}:8000{CLAIM_PATH}",
                json={"environment": {"JUPYTERHUB_API_URL": "http://attacker"}, "args": []},
                headers={"Authorization": f"Bearer {secret}"},
            ) as answer:
                assert answer.status == 403

    assert idle_arns(keeper) == {warm.arn} and pool_tag(described(rig, warm.arn)) == "idle"
    choice = rig.catalog.choose({"service": "chat", "size": "small"})
    assert (await keeper.claim(choice, identity("alice"), user_environment("alice"))).arn == warm.arn


def launcher_pid(nonce: str) -> int:
    for process in psutil.Process().children(recursive=True):
        try:
            if process.environ().get(NONCE_VARIABLE) == nonce:
                return int(process.pid)
        except psutil.Error:
            continue
    raise AssertionError("no launcher process with that nonce")


async def test_a_launcher_that_dies_before_its_claim_is_replaced_and_no_spawn_hangs(rig: PoolRig) -> None:
    keeper = rig.keeper()
    await filled(keeper, CHAT_SMALL, 1)
    (warm,) = keeper.tasks(CHAT_SMALL, WAITING)
    os.kill(launcher_pid(warm.nonce), signal.SIGKILL)
    choice = rig.catalog.choose({"service": "chat", "size": "small"})

    # claimed before ECS reports the death: the claim fails and the spawn is told to start cold
    outcome = await asyncio.wait_for(keeper.claim(choice, identity("alice"), user_environment("alice")), 30)

    assert outcome.arn is None and "failed" in outcome.message
    await eventually(lambda: described(rig, warm.arn)["lastStatus"] == "STOPPED", 30, "the dead task is STOPPED")
    await filled(keeper, CHAT_SMALL, 1)
    assert warm.arn not in idle_arns(keeper), "a new task replaced it"


async def test_a_launcher_killed_while_idle_is_noticed_and_replaced(rig: PoolRig) -> None:
    keeper = rig.keeper()
    await filled(keeper, CHAT_SMALL, 1)
    (warm,) = keeper.tasks(CHAT_SMALL, WAITING)
    os.kill(launcher_pid(warm.nonce), signal.SIGKILL)
    await eventually(lambda: warm.arn not in {t.arn for t in keeper.tasks(CHAT_SMALL)}, 30, "the keeper dropped it")
    await filled(keeper, CHAT_SMALL, 1)
    assert idle_arns(keeper) and warm.arn not in idle_arns(keeper)


async def test_a_restarted_hub_adopts_its_idle_tasks_and_can_claim_them(rig: PoolRig) -> None:
    pool = CHAT_SMALL.__class__("chat", "small", min_idle=2, max=2)
    before = rig.keeper(pool)
    await filled(before, pool, 2)
    arns = {t.arn for t in before.tasks(pool, WAITING)}
    await before.close()  # the hub stops; its warm tasks keep running

    after = rig.fresh_watcher().keeper(pool)
    await filled(after, pool, 2)

    assert {t.arn for t in after.tasks(pool)} == arns, "adopted, none started, none lost"
    choice = rig.catalog.choose({"service": "chat", "size": "small"})
    assert (await after.claim(choice, identity("alice"), user_environment("alice"))).arn in arns


async def test_an_idle_task_past_its_age_is_recycled(rig: PoolRig) -> None:
    pool = CHAT_SMALL.__class__("chat", "small", min_idle=1, max=1, max_idle_age=1.0)
    keeper = rig.keeper(pool)
    await filled(keeper, pool, 1)
    (old,) = keeper.tasks(pool, WAITING)
    recycled = {"pool": pool.name, "reason": "recycled"}
    before = REGISTRY.get_sample_value("calliope_pool_lost_total", recycled) or 0.0
    await asyncio.sleep(1.1)
    await keeper.fill_once()
    assert old.arn not in {t.arn for t in keeper.tasks(pool)}
    assert REGISTRY.get_sample_value("calliope_pool_lost_total", recycled) == before + 1, "counted as recycled"
    assert [t.state for t in keeper.tasks(pool)] == [STARTING], "a fresh one is on its way"
    await eventually(lambda: described(rig, old.arn)["desiredStatus"] == "STOPPED", 10, "the old one stopped")


class NobodyOwnsAnything:
    """The hub's side of the sweep when no spawner holds any task (what a lost spawn state looks like)."""

    def ownership(self) -> Ownership:
        return Ownership()

    def ownership_of(self, arn: str, key: ServerKey) -> Ownership:
        return Ownership()

    async def adopt(self, key: ServerKey, task: dict) -> bool:
        return False


async def test_the_orphan_sweep_leaves_idle_warm_tasks_alone_and_sweeps_a_claimed_one_nobody_owns(
    rig: PoolRig,
) -> None:
    pool = CHAT_SMALL.__class__("chat", "small", min_idle=2, max=2)
    keeper = rig.keeper(pool)
    await filled(keeper, pool, 2)
    choice = rig.catalog.choose({"service": "chat", "size": "small"})
    claimed = (await keeper.claim(choice, identity("alice"), user_environment("alice"))).arn
    (idle,) = idle_arns(keeper, pool)
    sweeper = OrphanSweeper(
        rig.api, CLUSTER, hub_id="pooltest", started_by=started_by("pooltest"), owners=NobodyOwnsAnything(),
        grace_period=0.0,
    )  # fmt: skip

    report = await sweeper.sweep()

    assert report.stopped == [claimed], "a claimed task is a server like any other: unowned, it is swept"
    assert described(rig, idle)["desiredStatus"] == "RUNNING" and idle_arns(keeper, pool) == {idle}


async def test_refills_wait_while_spawns_start_cold(rig: PoolRig) -> None:
    """Spawns win the RunTask quota: after a spawn found the pool empty, no refill for spawn_priority_window."""
    keeper = rig.keeper(spawn_priority_window=600.0)
    choice = rig.catalog.choose({"service": "chat", "size": "small"})
    outcome = await keeper.claim(choice, identity("alice"), user_environment("alice"))
    assert outcome.arn is None and outcome.message == "No warm chat/small server free: starting one cold"

    await keeper.fill_once()

    assert keeper.tasks(CHAT_SMALL) == [], "the cold start keeps the quota"
    assert (await rig.api.list_tasks(CLUSTER)) == []


async def test_a_warm_task_unwatched_by_someone_else_while_starting_still_becomes_idle(rig: PoolRig) -> None:
    """The runtime's release of primed tasks may unwatch any task; the keeper watches its own again."""
    keeper = rig.keeper()
    await keeper.fill_once()
    (starting,) = keeper.tasks(CHAT_SMALL, STARTING)
    rig.watcher.unwatch(starting.arn)

    await filled(keeper, CHAT_SMALL, 1)

    assert idle_arns(keeper) == {starting.arn}, "the same task, not a replacement"
