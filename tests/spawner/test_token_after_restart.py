"""A server's API token is revoked at stop even when the hub restarted in between (issue 9 item 3).

JupyterHub revokes `spawner.api_token` after stop(), but a restarted hub's spawner has it
empty (the hub keeps only a hash), so the token of a server adopted after a restart would
outlive its task. The spawner keeps the token's row ID (not the token) in its state and
revokes that row once ECS says the task is STOPPED.
"""

from __future__ import annotations

from jupyterhub import orm

from tests.spawner.conftest import SpawnerMaker


async def test_a_restarted_hub_revokes_the_token_of_a_server_it_stops(local_ecs, spawners_on) -> None:
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
    restarted = SpawnerMaker(local_ecs.endpoint_url)
    restarted.database = make.database
    try:
        second = restarted("ada")
        second.load_state(state)
        assert second.api_token == ""
        await second.stop()
    finally:
        await restarted.close()
    assert orm.APIToken.find(session, token) is None, "the server's token is revoked with its task"
    assert orm.APIToken.find(session, other) is not None, "the user's other tokens stay"
