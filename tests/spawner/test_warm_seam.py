"""The launch path's seam for warm tasks (calliope_hub.ecs.launch.WarmPool): claimed first, launched otherwise.

The pool (calliope_hub.pool) plugs in here; this pins the contract it relies on, with a real
runtime over local ECS: a claim's ARN is the launch's answer and nothing reaches ECS or SSM;
no claim falls through to the normal launch.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

from calliope_hub.catalog import Choice, TaskIdentity
from calliope_hub.ecs.launch import ClaimOutcome, LaunchRequest, ServerRecord


class OneWarmTask:
    """Hands out one task, then none; records what it was asked."""

    def __init__(self, arn: str):
        self.arn: str | None = arn
        self.asked: list[tuple[str, ...]] = []

    async def claim(
        self, choice: Choice, identity: TaskIdentity, environment: Mapping[str, str], args: Sequence[str]
    ) -> ClaimOutcome:
        self.asked.append((choice.service.name, identity.user, environment["JUPYTERHUB_API_TOKEN"], *args))
        arn, self.arn = self.arn, None
        return ClaimOutcome(arn, "Warm server claimed" if arn else "No warm server free: starting one cold")


async def test_a_claimed_warm_task_is_the_launch_and_no_claim_launches(local_ecs, spawners_on) -> None:
    make = await spawners_on(local_ecs.endpoint_url)
    spawner = make("ada", user_options={"service": "chat", "size": "small"})
    spawner.api_token = "t" * 32
    await spawner._ecs()
    pool = OneWarmTask("arn:aws:ecs:us-east-1:000000000000:task/calliope/warm")
    launcher = spawner._launcher()
    launcher.parts = dataclasses.replace(launcher.parts, warm=pool)
    choice = spawner.choose(spawner.user_options)
    request = LaunchRequest(choice, spawner._identity(choice), spawner._placement(), spawner.get_env(), ["--x"])
    deadline = asyncio.get_running_loop().time() + 20

    claimed = await launcher.launch(request, ServerRecord(), deadline)
    assert claimed == "arn:aws:ecs:us-east-1:000000000000:task/calliope/warm"
    assert pool.asked == [("chat", "ada", "t" * 32, "--x")], "the pool gets the choice, who, the token and args"
    assert launcher.claim == ClaimOutcome(claimed, "Warm server claimed"), "what the spawner tells the user"
    calls = local_ecs.stats()["calls"]
    assert "RunTask" not in calls and "PutParameter" not in calls, "a claim reaches neither ECS nor SSM"

    launched = await launcher.launch(request, ServerRecord(), deadline)
    assert launched != claimed and launched.startswith("arn:aws:ecs:"), "no claim: a normal launch"
    assert local_ecs.stats()["calls"]["RunTask"]["ok"] == 1
    assert launcher.claim.message == "No warm server free: starting one cold"
