"""Where and how task state change events reach a hub: the route, the auth header and scope.

The hub's handler, `calliope-hub monitor`, `calliope-hub up` and the tests all address the
endpoint through these, so a sender and the receiver can never disagree on a path or a name.
The event's own shape is an ECS fact local ECS shares: `calliope_hub.ecsfacts.task_state_change_event`.
"""

from __future__ import annotations

#: The endpoint, under the hub prefix: /hub/api/calliope/ecs-events.
ROUTE = "/api/calliope/ecs-events"
#: The JupyterHub scope a token needs to deliver events without the shared secret.
SCOPE = "custom:calliope:ecs-events"
#: The header an EventBridge connection (or the monitor) sends the shared secret in.
DEFAULT_HEADER = "X-Calliope-Events-Secret"


def events_url(hub_url: str) -> str:
    """Where a hub at `hub_url` takes task state change events."""
    return f"{hub_url.rstrip('/')}/hub{ROUTE}"
