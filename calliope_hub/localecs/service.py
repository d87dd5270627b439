"""`LocalEcs`: local ECS as one object to embed (the CLI, `make up`, tests, benchmarks).

It wires a runner, the control plane, the event sinks and the HTTP listener together,
and takes all of them down again in `stop()`, so nothing it started outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from calliope_hub.localecs.config import LocalEcsConfig, parse_throttle
from calliope_hub.localecs.model import Task
from calliope_hub.localecs.server import EcsHttp
from calliope_hub.localecs.sim import SimRunner
from calliope_hub.localecs.state import ControlPlane

log = logging.getLogger(__name__)


class LocalEcs:
    """An ECS-compatible endpoint on this machine: `await start()` gives its URL."""

    def __init__(self, config: LocalEcsConfig | None = None):
        self.config = config or LocalEcsConfig()
        self.endpoint_url: str | None = None
        #: the self-signed certificate's path when `config.tls` is on (clients pass it as `verify`).
        self.certificate: Path | None = None
        self.plane: ControlPlane | None = None
        self.http: EcsHttp | None = None
        self.sinks: list[Any] = []
        self._event_of: Any = None
        self._app_runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ssl: ssl.SSLContext | None = None
        self._port = self.config.port
        self._reopen: asyncio.TimerHandle | None = None
        self._started = time.monotonic()

    async def start(self) -> str:
        config = self.config
        config.validate()
        try:
            self.plane = self._control_plane()
            await self._start_sinks()
            self.http = EcsHttp(
                self.plane, parse_throttle(config.throttle), self._refuse, self._describe, config.access_key_id
            )
            self._app_runner = web.AppRunner(self.http.application(), access_log=None, handle_signals=False)
            await self._app_runner.setup()
            if config.tls:
                self._ssl = self._tls_context()
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        scheme = "https" if self._ssl else "http"
        self.endpoint_url = f"{scheme}://{config.host}:{self._port}"
        return self.endpoint_url

    def _control_plane(self) -> ControlPlane:
        config = self.config
        if config.mode == "sim":
            runner: Any = SimRunner(
                provisioning_s=config.sim_provisioning_s,
                pending_s=config.sim_pending_s,
                activating_s=config.sim_activating_s,
                deactivating_s=config.sim_deactivating_s,
                stopping_s=config.sim_stopping_s,
                deprovisioning_s=config.sim_deprovisioning_s,
                jitter=config.sim_jitter,
                fail_fraction=config.sim_fail_fraction,
                stop_rate_per_hour=config.sim_stop_rate,
            )
            dwell = runner.dwell
        else:
            from calliope_hub.localecs.process import ProcessRunner

            runner, dwell = ProcessRunner(data_dir=config.data_dir), config.process_dwell()
        return ControlPlane(
            runner,
            region=config.region,
            account=config.account,
            cidr=config.cidr,
            retention_s=config.retention_s,
            stop_timeout_s=config.stop_timeout_s,
            dwell=dwell,
            access_point_limit=config.efs_access_point_limit,
            efs_journal=config.data_dir / "efs" / "objects.jsonl" if config.data_dir else None,
        )

    async def _start_sinks(self) -> None:
        config = self.config
        if not config.events_url:
            return
        from calliope_hub.localecs import events

        sink = events.HttpEventSink(
            config.events_url,
            config.events_header,
            duplicate=config.event_duplicate,
            reorder=config.event_reorder,
        )
        await sink.start()
        self.sinks.append(sink)
        self._event_of = events.task_state_change_event
        assert self.plane is not None
        self.plane.listeners.append(self._publish)

    def _publish(self, task: Task) -> None:
        event = self._event_of(task.wire(), region=self.config.region, account=self.config.account)
        for sink in self.sinks:
            sink.publish(event)

    def _tls_context(self) -> ssl.SSLContext:
        from calliope_hub.localecs import tls

        directory = self.config.tls_dir or Path(tempfile.mkdtemp(prefix="calliope-local-ecs-tls-"))
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = tls.self_signed_certificate(directory, self.config.host)
        self.certificate = cert
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    async def _listen(self) -> None:
        assert self._app_runner is not None and self._app_runner.server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._app_runner.server, self.config.host, self._port, ssl=self._ssl, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _refuse(self, seconds: float) -> None:
        """The 'refuse' outage: close the listening socket, reopen it on the same port later."""
        if self._server is not None:
            self._server.close()
        if self._reopen is not None:
            self._reopen.cancel()
        loop = asyncio.get_running_loop()
        self._reopen = loop.call_later(seconds, lambda: asyncio.ensure_future(self._reopen_listener()))

    async def _reopen_listener(self) -> None:
        self._reopen = None
        try:
            await self._listen()
        except OSError:
            log.exception("local ECS could not listen on port %s again after an outage", self._port)

    def _describe(self) -> dict:
        assert self.plane is not None
        return {
            "mode": self.config.mode,
            "throttle": self.config.throttle,
            "endpoint": self.endpoint_url,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "events": [sink.stats() for sink in self.sinks],
        }

    async def stop(self) -> None:
        """Stop listening, stop every task's containers, flush nothing further."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.plane is not None:
            await self.plane.close()
            self.plane = None
        for sink in self.sinks:
            await sink.close()
        self.sinks.clear()
        if self._app_runner is not None:
            await self._app_runner.cleanup()
            self._app_runner = None
