"""POST /hub/api/calliope/ecs-events: EventBridge API destinations deliver task state changes here.

Why a handler inside the hub and not a JupyterHub service: the events must reach this
process's TaskWatcher, which lives in the hub's event loop. A service is another process
and would need a second channel back into the hub. `JupyterHub.extra_handlers` is the
only in-process route (deprecated since JupyterHub 3.1, still supported in 6.x); the one
line that registers it is in `hubconfig.render` and `events_config_lines`.

Auth is either the shared secret an EventBridge connection sends as an API-key header,
compared in constant time, or a JupyterHub token holding the `custom:calliope:ecs-events`
scope (for `calliope-hub monitor` or other in-house senders).
"""

from __future__ import annotations

import hmac
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from tornado import web
from traitlets import Bool, Float, Integer, Unicode, validate
from traitlets.config import Configurable

from calliope_hub.ecs.api import EcsTarget
from calliope_hub.events.ingest import (
    EventFormatError,
    EventIngest,
    QueueFull,
    parse_delivery,
    sort_delivery,
)
from calliope_hub.observability.metrics import EVENTS

ROUTE = "/api/calliope/ecs-events"  # under the hub prefix: /hub/api/calliope/ecs-events
SCOPE = "custom:calliope:ecs-events"
DEFAULT_HEADER = "X-Calliope-Events-Secret"


def events_url(hub_url: str) -> str:
    """Where a hub at `hub_url` takes task state change events."""
    return f"{hub_url.rstrip('/')}/hub{ROUTE}"


class CalliopeEvents(Configurable):
    """Event-driven task state: the endpoint's auth and queue, and how the watcher sweeps."""

    enabled = Bool(
        False, help="Events are delivered (EventBridge, SQS or the monitor): slow the sweep to a reconcile."
    ).tag(config=True)
    secret = Unicode(
        "", help="Shared secret senders put in `header_name` ('' = only scoped tokens are accepted)."
    ).tag(config=True)
    header_name = Unicode(DEFAULT_HEADER, help="Header that carries the shared secret.").tag(config=True)
    queue_size = Integer(10_000, help="Events waiting to be applied; past it the endpoint answers 503.").tag(
        config=True
    )
    reconcile_interval = Float(
        300.0, help="Seconds between full sweeps while events flow (they can be lost)."
    ).tag(config=True)
    sweeps = Unicode(
        "hub", help="'hub': this hub sweeps; 'off': no sweeps at all (`calliope-hub monitor` does them)."
    ).tag(config=True)
    confirm_window = Float(
        0.15, help="Seconds STOPPED events are collected before one DescribeTasks confirms them."
    ).tag(config=True)

    sqs_queue_url = Unicode(
        "", help="SQS queue EventBridge delivers task state changes to ('' = no SQS consumer)."
    ).tag(config=True)
    sqs_endpoint_url = Unicode("", help="SQS endpoint ('' = AWS's own for the spawner's region).").tag(
        config=True
    )
    sqs_max_receives = Integer(5, help="Deliveries after which a failing SQS message is dropped.").tag(
        config=True
    )

    @validate("sweeps")
    def _validate_sweeps(self, proposal: dict) -> str:
        if proposal["value"] not in ("hub", "off"):
            raise ValueError(f"sweeps must be 'hub' or 'off', not {proposal['value']!r}")
        return proposal["value"]

    def watcher_options(self, poll_interval: float, jitter: float) -> dict[str, Any]:
        """TaskWatcher keyword arguments for a spawner whose poll interval is `poll_interval`."""
        if not self.enabled:
            return {"sweep_interval": poll_interval, "jitter": jitter}
        return {
            "sweep_interval": self.reconcile_interval,
            "jitter": jitter,
            "events": True,
            "sweeping": self.sweeps == "hub",
            "confirm_window": self.confirm_window,
        }

    def start_sqs(self, region: str) -> None:
        """Start this process's SQS consumer when a queue is configured (idempotent)."""
        if self.sqs_queue_url:
            from calliope_hub.events.sqs import SqsEventConsumer

            target = EcsTarget(region, self.sqs_endpoint_url or None)
            SqsEventConsumer.ensure_started(target, self.sqs_queue_url, self.sqs_max_receives)


def events_config_lines(secret: str, header_name: str = DEFAULT_HEADER, sweeps: str = "hub") -> list[str]:
    """jupyterhub_config.py lines that turn events on with the endpoint and its scope."""
    return [
        "from calliope_hub.hub.events_handler import ROUTE, SCOPE, EcsEventsHandler",
        "c.JupyterHub.extra_handlers = [(ROUTE, EcsEventsHandler)]",
        "c.JupyterHub.custom_scopes = {SCOPE: {'description': 'Deliver ECS task state change events'}}",
        "c.CalliopeEvents.enabled = True",
        f"c.CalliopeEvents.secret = {secret!r}",
        f"c.CalliopeEvents.header_name = {header_name!r}",
        f"c.CalliopeEvents.sweeps = {sweeps!r}",
    ]


class EcsEventsHandler(APIHandler):
    """Validate, queue, answer: the watcher applies the events after the answer."""

    @property
    def events_config(self) -> CalliopeEvents:
        settings = self.settings
        if "calliope_events" not in settings:
            settings["calliope_events"] = CalliopeEvents(config=self.config)
        return settings["calliope_events"]

    def _authorize(self) -> None:
        config = self.events_config
        given = self.request.headers.get(config.header_name)
        if config.secret and given is not None and hmac.compare_digest(given.encode(), config.secret.encode()):
            return
        if given is None and self.current_user is not None:
            if SCOPE in self.expanded_scopes:
                return
            EVENTS.labels("unauthorized").inc()
            raise web.HTTPError(403, f"this token lacks the {SCOPE} scope")
        EVENTS.labels("unauthorized").inc()
        raise web.HTTPError(401, f"a valid {config.header_name} header or a token with {SCOPE} is required")

    async def post(self) -> None:
        self._authorize()
        try:
            delivery = sort_delivery(parse_delivery(self.request.body))
        except EventFormatError as e:
            EVENTS.labels("invalid").inc()
            raise web.HTTPError(400, str(e)) from None
        if delivery.ignored:
            EVENTS.labels("ignored").inc(delivery.ignored)
        try:
            EventIngest.shared(self.events_config.queue_size).submit(delivery.changes)
        except QueueFull as e:
            raise web.HTTPError(503, str(e)) from None
        self.set_status(202)
        self.finish({"accepted": len(delivery.changes), "ignored": delivery.ignored})
