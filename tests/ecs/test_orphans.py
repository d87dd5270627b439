"""The orphan sweeper against real local ECS, and a property over random interleavings.

The hub's side (`Owners`) is a small table here, so each test says exactly who owns what;
ECS is local ECS through the real EcsApi, except in the property test, where a faithful
in-memory ECS runs random hub events *inside* every ECS call the sweeper makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calliope_hub.catalog import Catalog, Placement, TaskIdentity, run_task_request
from calliope_hub.ecs.api import DescribeResult, EcsApi, EcsApiError, EcsTarget
from calliope_hub.ecs.orphans import ORPHAN_STOP_REASON, OrphanSweeper, Ownership, ServerKey
from calliope_hub.ecs.taskdefs import prepare_cluster
from calliope_hub.observability.metrics import ORPHANS
from tests.hubtest import eventually

CLUSTER = "calliope"
HUB = "orphan-test"
GRACE = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TableOwners:
    """The hub's view as a plain table: ARNs in state, servers starting, records that lost an ARN."""

    def __init__(self) -> None:
        self.table = Ownership()
        self.adopted: dict[ServerKey, str] = {}

    def ownership(self) -> Ownership:
        return Ownership(set(self.table.arns), set(self.table.starting), set(self.table.adoptable))

    def ownership_of(self, arn: str, key: ServerKey) -> Ownership:
        return self.ownership()  # exact for a table: the whole of it includes the one task

    async def adopt(self, key: ServerKey, task: dict[str, Any]) -> bool:
        if key not in self.table.adoptable:
            return False
        self.table.adoptable.discard(key)
        self.table.arns.add(task["taskArn"])
        self.adopted[key] = task["taskArn"]
        return True


@pytest.fixture
async def api(local_ecs: Any) -> AsyncIterator[EcsApi]:
    api = await EcsApi.create(EcsTarget("us-east-1", local_ecs.endpoint_url), max_attempts=1)
    await prepare_cluster(api, Catalog.load(), CLUSTER, local=True)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def run(api: EcsApi) -> Callable[..., Any]:
    """`await run(user, server="", hub=HUB, pool=None)`: a task as the hub starts it, but by hand.

    With `pool` ("idle" or "claimed") it is tagged as a warm-pool task; an idle one has no user yet.
    """
    catalog = Catalog.load()
    attempts = iter(range(1, 10**6))

    async def run_one(user: str, server: str = "", hub: str = HUB, pool: str | None = None) -> str:
        choice = catalog.choose({})
        identity = TaskIdentity(hub, user, server, choice.service.name, choice.size_name, next(attempts))
        request = run_task_request(choice, identity, Placement(CLUSTER, subnets=("subnet-local",)), {})
        if hub != HUB:  # another hub id that sanitises to the same startedBy
            request["startedBy"] = TaskIdentity(HUB, user, server, "lab", "s", 0).started_by
        if pool is not None:
            owner_tags = () if pool == "claimed" else ("calliope:user", "calliope:server")
            tags = [tag for tag in request["tags"] if tag["key"] not in owner_tags]
            request["tags"] = [*tags, {"key": "calliope:pool", "value": pool}]
        return (await api.run_task(request))["tasks"][0]["taskArn"]

    return run_one


def sweeper_for(api: Any, owners: Any, clock: Clock, **options: Any) -> OrphanSweeper:
    started_by = TaskIdentity(HUB, "", "", "", "", 0).started_by
    return OrphanSweeper(
        api, CLUSTER, hub_id=HUB, started_by=started_by, owners=owners, clock=clock, grace_period=GRACE, **options
    )


async def described(api: EcsApi, arns: list[str]) -> dict[str, dict[str, Any]]:
    return {t["taskArn"]: t for t in (await api.describe_tasks(CLUSTER, arns)).tasks}


async def described_when_answered(api: EcsApi, arns: list[str]) -> dict[str, dict[str, Any]] | None:
    """`described`, or None while local ECS still throttles (a fault a test turned on)."""
    try:
        return await described(api, arns)
    except EcsApiError as e:
        if e.throttled:
            return None
        raise


def orphan_count(action: str) -> float:
    return ORPHANS.labels(action)._value.get()


async def test_unowned_tasks_are_stopped_on_the_second_sweep_and_owned_ones_never(
    api: EcsApi, run: Callable[..., Any]
) -> None:
    owners, clock = TableOwners(), Clock()
    orphans = [await run(f"nobody-{i}") for i in range(3)]
    owned = await run("alice")
    starting = await run("bob", "gpu")  # RunTask has not answered bob's spawner yet
    foreign = await run("carol", hub="other-hub")
    owners.table.arns.add(owned)
    owners.table.starting.add(("bob", "gpu"))
    sweeper = sweeper_for(api, owners, clock)
    found_before, stopped_before = orphan_count("found"), orphan_count("stopped")

    first = await sweeper.sweep()
    assert sorted(first.found) == sorted(orphans) and first.stopped == []
    clock.now += GRACE
    second = await sweeper.sweep()

    assert sorted(second.stopped) == sorted(orphans) and second.found == []
    tasks = await described(api, [*orphans, owned, starting, foreign])
    for arn in orphans:
        assert tasks[arn]["desiredStatus"] == "STOPPED"
        assert tasks[arn]["stoppedReason"] == ORPHAN_STOP_REASON
    for arn in (owned, starting, foreign):
        assert tasks[arn]["desiredStatus"] == "RUNNING"
    assert orphan_count("found") - found_before == 3
    assert orphan_count("stopped") - stopped_before == 3


async def test_a_task_whose_spawner_state_was_wiped_is_readopted(api: EcsApi, run: Callable[..., Any]) -> None:
    owners, clock = TableOwners(), Clock()
    arn = await run("dana")
    owners.table.adoptable.add(("dana", ""))  # the hub records dana's server as running, without an ARN
    sweeper = sweeper_for(api, owners, clock)
    adopted_before = orphan_count("adopted")

    await sweeper.sweep()
    clock.now += GRACE
    report = await sweeper.sweep()

    assert report.adopted == [arn] and report.stopped == []
    assert owners.adopted == {("dana", ""): arn}
    assert (await described(api, [arn]))[arn]["desiredStatus"] == "RUNNING"
    assert orphan_count("adopted") - adopted_before == 1
    assert (await sweeper.sweep()).found == []  # owned again: no longer a candidate


async def test_a_task_owned_during_the_grace_period_starts_its_grace_over(api: EcsApi, run: Callable[..., Any]) -> None:
    owners, clock = TableOwners(), Clock()
    arn = await run("erin")
    sweeper = sweeper_for(api, owners, clock)
    await sweeper.sweep()
    owners.table.arns.add(arn)  # RunTask answered late: the spawner has it now
    clock.now += GRACE
    await sweeper.sweep()
    owners.table.arns.discard(arn)  # its spawner stopped tracking it
    assert (await sweeper.sweep()).found == [arn]
    assert (await described(api, [arn]))[arn]["desiredStatus"] == "RUNNING"


async def test_dry_run_only_logs_and_counts(api: EcsApi, run: Callable[..., Any], caplog: Any) -> None:
    owners, clock = TableOwners(), Clock()
    arns = [await run("frank"), await run("gina")]
    owners.table.adoptable.add(("gina", ""))
    sweeper = sweeper_for(api, owners, clock, action="dry-run")
    found_before = orphan_count("found")

    await sweeper.sweep()
    clock.now += GRACE
    report = await sweeper.sweep()

    assert sorted(report.would_act) == sorted(arns) and report.stopped == report.adopted == []
    assert owners.adopted == {}
    assert all(t["desiredStatus"] == "RUNNING" for t in (await described(api, arns)).values())
    assert orphan_count("found") - found_before == 2
    assert "would stop (dry run)" in caplog.text and "would re-adopt (dry run)" in caplog.text


async def test_more_than_one_page_and_one_describe_batch(api: EcsApi, run: Callable[..., Any]) -> None:
    owners, clock = TableOwners(), Clock()
    arns = [await run(f"many-{i}") for i in range(105)]
    owners.table.arns.update(arns[:50])
    report = await sweeper_for(api, owners, clock).sweep()
    assert report.listed == 105 and sorted(report.found) == sorted(arns[50:])


async def test_an_idle_warm_pool_task_is_left_to_the_pool_and_a_claimed_one_is_swept(
    api: EcsApi, run: Callable[..., Any]
) -> None:
    owners, clock = TableOwners(), Clock()
    idle = await run("", pool="idle")
    claimed = await run("hal", pool="claimed")  # its user's server no longer holds it
    sweeper = sweeper_for(api, owners, clock)
    assert (await sweeper.sweep()).found == [claimed]
    clock.now += GRACE
    assert (await sweeper.sweep()).stopped == [claimed]
    assert (await described(api, [idle]))[idle]["desiredStatus"] == "RUNNING"


class ThrottledAfterListing:
    """The real EcsApi, but local ECS throttles everything from just after the sweep's ListTasks."""

    def __init__(self, api: EcsApi, local_ecs: Any):
        self.api, self.local_ecs = api, local_ecs

    async def list_tasks(self, cluster: str, **filters: Any) -> list[str]:
        arns = await self.api.list_tasks(cluster, **filters)
        assert self.local_ecs.request("POST", "/_localecs/faults/throttle", {"seconds": 2})[0] == 200
        return arns

    async def describe_all(self, cluster: str, arns: list[str]) -> list[Any]:
        return await self.api.describe_all(cluster, arns)

    async def stop_task(self, cluster: str, arn: str, reason: str) -> dict[str, Any] | None:
        return await self.api.stop_task(cluster, arn, reason)


async def test_a_throttled_describe_acts_on_nothing_and_keeps_the_grace_clock(
    api: EcsApi, run: Callable[..., Any], local_ecs: Any
) -> None:
    """Unknown is not orphaned: overdue tasks whose DescribeTasks was throttled stay up until ECS answers."""
    owners, clock = TableOwners(), Clock()
    arns = [await run(f"quiet-{i}") for i in range(3)]
    sweeper = sweeper_for(api, owners, clock)
    assert sorted((await sweeper.sweep()).found) == sorted(arns)
    clock.now += GRACE
    sweeper.api = ThrottledAfterListing(api, local_ecs)
    with pytest.raises(EcsApiError) as throttled:
        await sweeper.sweep()
    assert throttled.value.throttled and throttled.value.operation == "DescribeTasks"
    sweeper.api = api
    running = await eventually(lambda: described_when_answered(api, arns), 10, "local ECS answering again")
    assert all(task["desiredStatus"] == "RUNNING" for task in running.values())
    assert sorted((await sweeper.sweep()).stopped) == sorted(arns), "overdue since the first sweep, not the failed one"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="one of stop, dry-run, off"):
        sweeper_for(None, TableOwners(), Clock(), action="delete")


# ---- property: random interleavings of spawns, stops, crashes and sweeps -------------------

EVENTS = ("spawn", "answer", "stop", "crash", "wipe", "die", "by_hand", "foreign", "tick", "idle")
KEYS = [("u0", ""), ("u1", ""), ("u1", "x"), ("u2", "")]


class ModelHub:
    """ECS tasks and the hub's spawners, moved by random events; plays both EcsApi and Owners.

    Every ECS call runs the next few events, so hub changes land *between* the sweeper's
    reads and its actions. StopTask checks the property as it is called: the task is in no
    spawner's state, is not tagged for a server that is starting, and is this hub's.
    """

    def __init__(self, events: list[tuple[str, int]], clock: Clock):
        self.events = iter(events)
        self.clock = clock
        self.tasks: dict[str, dict[str, Any]] = {}  # arn -> {"key", "hub", "desired", "ip"}
        self.state: dict[ServerKey, str] = {}  # spawner state ARNs
        self.server_ip: dict[ServerKey, str] = {}  # server records (the route's address)
        self.inflight: dict[ServerKey, str] = {}  # pending spawns: RunTask sent, not answered
        self.violations: list[str] = []

    # -- the random hub ------------------------------------------------------------------

    def step(self, n: int) -> None:
        for _ in range(n):
            event = next(self.events, None)
            if event is None:
                return
            name, i = event
            getattr(self, f"_{name}")(KEYS[i % len(KEYS)])

    def _new_task(self, key: ServerKey, hub: str = HUB) -> str:
        arn = f"arn:aws:ecs:us-east-1:1:task/{CLUSTER}/{len(self.tasks):032x}"
        self.tasks[arn] = {"key": key, "hub": hub, "desired": "RUNNING", "ip": f"10.0.0.{len(self.tasks)}"}
        return arn

    def _spawn(self, key: ServerKey) -> None:
        if key not in self.inflight and key not in self.server_ip:
            self.inflight[key] = self._new_task(key)

    def _answer(self, key: ServerKey) -> None:
        if key in self.inflight:
            arn = self.state[key] = self.inflight.pop(key)
            self.server_ip[key] = self.tasks[arn]["ip"]

    def _stop(self, key: ServerKey) -> None:
        if key in self.state and key not in self.inflight:
            self.tasks[self.state.pop(key)]["desired"] = "STOPPED"
            self.server_ip.pop(key, None)

    def _crash(self, key: ServerKey) -> None:
        """The hub dies mid-spawn: RunTask's answer is lost; the restart ends the server record."""
        if key in self.inflight:
            del self.inflight[key]
            self.server_ip.pop(key, None)

    def _wipe(self, key: ServerKey) -> None:
        self.state.pop(key, None)

    def _die(self, key: ServerKey) -> None:
        if key in self.state:
            self.tasks[self.state[key]]["desired"] = "STOPPED"

    def _by_hand(self, key: ServerKey) -> None:
        self._new_task(key)

    def _foreign(self, key: ServerKey) -> None:
        """Another hub whose id sanitises to our startedBy."""
        self._new_task(key, hub="other-hub")

    def _idle(self, key: ServerKey) -> None:
        return None

    def _tick(self, key: ServerKey) -> None:
        self.clock.now += GRACE / 2

    # -- Owners --------------------------------------------------------------------------

    def ownership(self) -> Ownership:
        adoptable = {k for k in self.server_ip if k not in self.state and k not in self.inflight}
        return Ownership(set(self.state.values()), set(self.inflight), adoptable)

    def ownership_of(self, arn: str, key: ServerKey) -> Ownership:
        return self.ownership()

    async def adopt(self, key: ServerKey, task: dict[str, Any]) -> bool:
        arn = task["taskArn"]
        if key in self.state or key in self.inflight or self.server_ip.get(key) != self.tasks[arn]["ip"]:
            return False
        self.state[key] = arn
        return True

    # -- EcsApi --------------------------------------------------------------------------

    async def list_tasks(
        self, cluster: str, *, started_by: str | None = None, desired_status: str = "RUNNING"
    ) -> list[str]:
        self.step(2)
        return [arn for arn, t in self.tasks.items() if t["desired"] == desired_status]

    async def describe_all(self, cluster: str, arns: list[str]) -> list[DescribeResult]:
        self.step(2)
        return [DescribeResult(tasks=[self._describe(arn) for arn in arns])]

    def _describe(self, arn: str) -> dict[str, Any]:
        t = self.tasks[arn]
        user, server = t["key"]
        return {
            "taskArn": arn,
            "lastStatus": "RUNNING" if t["desired"] == "RUNNING" else "STOPPED",
            "desiredStatus": t["desired"],
            "containers": [{"networkInterfaces": [{"privateIpv4Address": t["ip"]}]}],
            "tags": [
                {"key": "calliope:hub", "value": t["hub"]},
                {"key": "calliope:user", "value": user},
                {"key": "calliope:server", "value": server},
            ],
        }

    async def stop_task(self, cluster: str, arn: str, reason: str) -> dict[str, Any]:
        task = self.tasks[arn]  # judged as the call is made; the hub moves on while it travels
        if arn in self.state.values() or task["key"] in self.inflight or task["hub"] != HUB:
            self.violations.append(f"stopped {arn} ({task})")
        self.step(1)
        task["desired"] = "STOPPED"
        return {"task": {"taskArn": arn}}

    def unclaimed_live_tasks(self) -> set[str]:
        """Live tasks of this hub that are neither owned nor tagged for a server now starting."""
        claimed = set(self.state.values())
        return {
            arn
            for arn, t in self.tasks.items()
            if t["desired"] == "RUNNING" and t["hub"] == HUB and arn not in claimed and t["key"] not in self.inflight
        }


#: A spawn of the orphan's own server begins while the sweeper describes it: only the fresh
#: ownership read just before StopTask keeps that task alive.
SPAWN_DURING_DESCRIBE = {
    "plan": [("by_hand", 0), ("sweep", 0), ("tick", 0), ("tick", 0), ("sweep", 0)],
    "during": [("idle", 0)] * 6 + [("spawn", 0)],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.one_of(st.just(("sweep", 0)), st.tuples(st.sampled_from(EVENTS), st.integers(0, 3))),
        max_size=40,
    ),
    during=st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, 3)), max_size=30),
)
@example(**SPAWN_DURING_DESCRIBE)
async def test_no_interleaving_stops_an_owned_or_starting_task(
    plan: list[tuple[str, int]], during: list[tuple[str, int]]
) -> None:
    clock = Clock()
    hub = ModelHub(during, clock)
    sweeper = sweeper_for(hub, hub, clock)
    for name, i in plan:
        if name == "sweep":
            await sweeper.sweep()
        else:
            getattr(hub, f"_{name}")(KEYS[i])
    assert hub.violations == []

    hub.events = iter(())
    # The hub goes quiet: two sweeps a grace period apart settle every orphan, except those
    # tagged for a server that is still starting (they wait for its start to end).
    await sweeper.sweep()
    clock.now += GRACE
    await sweeper.sweep()
    assert hub.violations == []
    assert hub.unclaimed_live_tasks() == set()


async def test_untagged_tasks_with_our_started_by_are_swept_as_the_docs_say(
    api: EcsApi, run: Callable[..., Any]
) -> None:
    """Started by hand with the hub's startedBy and no calliope:* tags (docs/metrics.md): still this hub's."""
    owners, clock = TableOwners(), Clock()
    template = await described(api, [await run("tagged")])
    owners.table.arns.update(template)  # the tagged one is owned: it only lends its request shape
    started_by = TaskIdentity(HUB, "", "", "", "", 0).started_by
    (task,) = template.values()
    base = {"cluster": CLUSTER, "taskDefinition": task["taskDefinitionArn"], "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-local"]}}}  # fmt: skip
    bare = (await api.run_task({**base, "startedBy": started_by}))["tasks"][0]["taskArn"]
    foreign_tags = [{"key": "team", "value": "data"}]
    other_tags = (await api.run_task({**base, "startedBy": started_by, "tags": foreign_tags}))["tasks"][0]["taskArn"]
    not_ours = (await api.run_task({**base, "startedBy": "someone-else"}))["tasks"][0]["taskArn"]
    sweeper = sweeper_for(api, owners, clock)

    first = await sweeper.sweep()
    assert sorted(first.found) == sorted([bare, other_tags])
    clock.now += GRACE
    second = await sweeper.sweep()

    assert sorted(second.stopped) == sorted([bare, other_tags])
    tasks = await described(api, [bare, other_tags, not_ours, *template])
    assert [tasks[a]["stoppedReason"] for a in (bare, other_tags)] == [ORPHAN_STOP_REASON] * 2
    assert tasks[not_ours]["desiredStatus"] == "RUNNING"
    assert all(tasks[a]["desiredStatus"] == "RUNNING" for a in template)
