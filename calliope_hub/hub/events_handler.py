"""POST /hub/api/calliope/ecs-events: EventBridge API destinations deliver task state changes here.

Why a handler inside the hub and not a JupyterHub service: the events must reach this
process's TaskWatchers, which live in the hub's event loop. A service is another process
and would need a second channel back into the hub. `JupyterHub.extra_handlers` is the
only in-process route (deprecated since JupyterHub 3.1, still supported in 6.x); the one
line that registers it comes from `events_config_lines`.

Auth is either the shared secret an EventBridge connection sends as an API-key header,
compared in constant time, or a JupyterHub token holding the `custom:calliope:ecs-events`
scope (for `calliope-hub monitor` or other in-house senders).

The body is streamed and stops being kept once it passes `MAX_BODY_BYTES`: the rest is read
and dropped (up to tornado's own limit), then answered 413. Refusing before the body is read
would close the connection under configurable-http-proxy, which then answers 503, and
EventBridge retries 5xx. What is kept goes through ingestion's front half, which bounds
nesting and numbers, so every malformed delivery is a 4xx with its reason, never a 500.

The handler validates and queues into the HubRuntime's ingestion queue, then answers; the
queue's worker applies. Before any spawner has built the runtime there is nothing to watch,
so a valid delivery is acknowledged and counted as ignored.
"""

from __future__ import annotations

import hmac

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from calliope_hub.ecs.status import TaskWatcher
from calliope_hub.events.ingest import MAX_BODY_BYTES, EventFormatError, QueueFull, count, receive_delivery
from calliope_hub.events.wire import DEFAULT_HEADER, ROUTE, SCOPE
from calliope_hub.hub.config import CalliopeEvents
from calliope_hub.hub.runtime import HubRuntime

__all__ = ["ROUTE", "SCOPE", "EcsEventsHandler", "events_config_lines"]


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


@web.stream_request_body
class EcsEventsHandler(APIHandler):
    """Validate, queue, answer: the runtime's ingestion worker applies the events after the answer."""

    _body: bytearray
    _too_large: bool

    @property
    def events_config(self) -> CalliopeEvents:
        """Read once per hub: the config is fixed while the hub runs."""
        settings = self.settings
        if "calliope_events" not in settings:
            settings["calliope_events"] = CalliopeEvents(config=self.config)
        config: CalliopeEvents = settings["calliope_events"]
        return config

    def _authorize(self) -> None:
        config = self.events_config
        given = self.request.headers.get(config.header_name)
        if config.secret and given is not None and hmac.compare_digest(given.encode(), config.secret.encode()):
            return
        if given is None and self.current_user is not None:
            if SCOPE in self.expanded_scopes:
                return
            count("unauthorized")
            raise web.HTTPError(403, f"this token lacks the {SCOPE} scope")
        count("unauthorized")
        raise web.HTTPError(401, f"a valid {config.header_name} header or a token with {SCOPE} is required")

    async def prepare(self) -> None:
        self._body, self._too_large = bytearray(), False
        await super().prepare()

    def data_received(self, chunk: bytes) -> None:
        if not self._too_large:
            self._body += chunk
            self._too_large = len(self._body) > MAX_BODY_BYTES
            if self._too_large:
                self._body = bytearray()

    def _refuse_size(self) -> None:
        count("invalid")
        raise web.HTTPError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")

    async def post(self) -> None:
        self._authorize()
        if self._too_large:
            self._refuse_size()
        runtime = HubRuntime.of_handler(self.settings)
        ingest = runtime.ingest if runtime is not None else None
        try:
            delivery = receive_delivery(bytes(self._body), ingest.watchers_of if ingest is not None else _no_watchers)
        except EventFormatError as e:
            raise web.HTTPError(400, str(e)) from None
        if delivery.changes and ingest is not None:
            try:
                ingest.submit(delivery.changes)
            except QueueFull as e:
                raise web.HTTPError(503, str(e)) from None
        self.set_status(202)
        self.finish({"accepted": len(delivery.changes), "ignored": delivery.ignored})


def _no_watchers(cluster_arn: str) -> list[TaskWatcher]:
    return []
