"""A server's API token is revoked at stop even when the hub restarted in between (issue 9 item 3).

JupyterHub revokes `spawner.api_token` after stop(), but a restarted hub's spawner has it
empty (the hub keeps only a hash), so the token of a server adopted after a restart would
outlive its task. The spawner keeps the token's row ID (not the token) in its state and
revokes that row in run_post_stop_hook, which JupyterHub awaits on every stop path, also when
poll() found the task already stopped and stop() was never called.
"""

from __future__ import annotations

import boto3
import pytest
from jupyterhub import orm

from calliope_hub.spawner import ECSSpawner
from tests.hubtest import eventually
from tests.spawner.conftest import SpawnerMaker


async def stop_as_jupyterhub_does(spawner: ECSSpawner) -> None:
    """User.stop in JupyterHub 6.1.1: stop() only while poll() says running; the post-stop hook always."""
    try:
        if await spawner.poll() is None:
            await spawner.stop()
    finally:
        await spawner.run_post_stop_hook()
        spawner.clear_state()


@pytest.mark.parametrize("task", ["running", "already-stopped"])
async def test_a_restarted_hub_revokes_the_token_of_a_server_it_stops(local_ecs, spawners_on, task) -> None:
    make: SpawnerMaker = await spawners_on(local_ecs.endpoint_url)
    first = make("ada", user_options={"service": "chat", "size": "small"})
    session = make.database.session
    session.add(orm.OAuthClient(identifier="jupyterhub"))  # what a hub's database always has; tokens need it
    session.commit()
    token = first.orm_spawner.user.new_api_token(note="Server at /user/ada/")
    other = first.orm_spawner.user.new_api_token(note="ada's own token")
    first.api_token = token
    await first.start()
    state = first.get_state()
    assert state["api_token_id"] == orm.APIToken.find(session, token).id
    assert token not in repr(state), "only the row ID is kept, never the token"

    await make.close()  # the hub restarts: same database, a new runtime and spawner object
    if task == "already-stopped":  # it crashed while no hub watched: JupyterHub will not call stop()
        ecs = boto3.client("ecs", endpoint_url=local_ecs.endpoint_url, region_name="us-east-1")
        ecs.stop_task(cluster=state["cluster"], task=state["task_arn"], reason="crashed")
    restarted = SpawnerMaker(local_ecs.endpoint_url)
    restarted.database = make.database
    try:
        second = restarted("ada")
        second.load_state(state)
        assert second.api_token == ""
        if task == "already-stopped":
            await eventually(lambda: _stopped(second), 30, "the restarted hub sees the task stopped")
        await stop_as_jupyterhub_does(second)
    finally:
        await restarted.close()
    assert orm.APIToken.find(session, token) is None, "the server's token is revoked with its task"
    assert orm.APIToken.find(session, other) is not None, "the user's other tokens stay"


async def _stopped(spawner: ECSSpawner) -> bool:
    return await spawner.poll() is not None
