"""A server's API token by its row ID, so a hub that restarted can still revoke it when the task stops.

JupyterHub revokes a server's token after stop() through `Spawner.api_token`, which only the
hub process that started the server holds (the database keeps a hash): after a restart it is
empty, and the token would outlive its task. So the spawner keeps the token's row ID, never the
token, in its state, and revokes that row itself once the task is gone.
"""

from __future__ import annotations

from typing import Any

from jupyterhub import orm
from sqlalchemy import inspect as orm_session_of


def token_row_id(orm_spawner: Any, api_token: str) -> int:
    """The row ID of the server's `api_token` (0 when there is none, or no such row)."""
    if not api_token or orm_spawner is None:
        return 0
    token = orm.APIToken.find(orm_session_of(orm_spawner).session, api_token)
    return int(token.id) if token is not None else 0


def revoke_by_row_id(orm_spawner: Any, token_id: int, user_name: str) -> str | None:
    """Delete the token row `token_id` if it is `user_name`'s: its api_id, or None when nothing was revoked.

    Only the user's own token goes: a row ID from a stale state can never revoke another user's.
    """
    session = orm_session_of(orm_spawner).session
    token = session.get(orm.APIToken, token_id)
    if token is None or token.user is None or token.user.name != user_name:
        return None
    session.delete(token)
    session.commit()
    return str(token.api_id)
