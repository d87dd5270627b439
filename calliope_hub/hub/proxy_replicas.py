"""CHPReplicas: one JupyterHub Proxy that keeps N external configurable-http-proxy instances in sync.

configurable-http-proxy keeps its routing table in memory (CHP#465), so two of them behind a
load balancer only serve the same users if the hub writes every route to both. This Proxy
does exactly that, with JupyterHub's own CHP client (one per replica) doing the wire work:

- `add_route` / `delete_route` go to every replica at once, each bounded by `replica_timeout`.
  A replica that is down or slow is logged and marked for repair; it never holds up a spawn.
  Only when no replica took a route does the call fail (then no user could reach the server).
- `get_all_routes` is the union of the replicas' tables, with each route's latest
  `last_activity` (users reach a server through any replica).
- `check_routes` runs JupyterHub's stock check against each replica's own table, so a route
  missing on one replica is added there and a stale one removed there.
- Repair: every replica carries a marker route (not a JupyterHub route, so no check deletes
  it), written after a full check succeeded. Every `check_interval` the hub asks each replica
  for that one route (a tiny request, whatever the table's size): a replica that restarted
  empty has lost it, and one that missed a write was marked; both get a full check, so a
  restarted replica has every route back within one interval.

Use: `c.JupyterHub.proxy_class = "calliope-chp-replicas"`,
`c.CHPReplicas.api_urls = ["http://proxy-a:8001", "http://proxy-b:8001"]`, and the proxies'
shared token in `CONFIGPROXY_AUTH_TOKEN` (or `c.CHPReplicas.auth_token`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import ClientResponseError
from jupyterhub.proxy import ConfigurableHTTPProxy, Proxy
from traitlets import Float, List, Unicode, default, validate

T = TypeVar("T")

#: the marker route's CHP path (not a JupyterHub route: it carries no 'jupyterhub' key)
MARKER_PATH = "/_calliope_replica_marker"
MARKER_TARGET = "http://127.0.0.1:9"


class NoReplicaAnswered(RuntimeError):
    """Every replica failed the same call: nothing can route it."""


class CHPReplicas(Proxy):
    """N externally run configurable-http-proxy replicas, written in step and repaired by the hub."""

    api_urls = List(
        Unicode(), minlen=1, help="The replicas' API URLs (configurable-http-proxy --api-ip/--api-port)."
    ).tag(config=True)
    auth_token = Unicode(help="The replicas' shared API token (default: CONFIGPROXY_AUTH_TOKEN).").tag(config=True)
    replica_timeout = Float(
        5.0, min=0.1, max=120.0, help="Seconds one replica may take for one route change before it is skipped."
    ).tag(config=True)
    check_interval = Float(
        5.0, min=0.5, max=3600.0, help="Seconds between the checks that find and repair a restarted replica."
    ).tag(config=True)
    check_timeout = Float(120.0, min=1.0, help="Seconds a full check of one replica (every route) may take.").tag(
        config=True
    )

    @default("should_start")
    def _default_should_start(self) -> bool:
        return False

    @validate("should_start")
    def _only_external(self, proposal: dict[str, Any]) -> bool:
        if proposal["value"]:
            raise ValueError("CHPReplicas.should_start must be False: the replicas run on their own")
        return False

    @default("auth_token")
    def _default_auth_token(self) -> str:
        return os.environ.get("CONFIGPROXY_AUTH_TOKEN", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.auth_token:
            raise ValueError("CHPReplicas.auth_token or CONFIGPROXY_AUTH_TOKEN is required")
        self.replicas = {url: self._client(url) for url in self.api_urls}
        #: replicas that missed a write or a check since their last full check
        self.dirty: set[str] = set(self.api_urls)
        self._repairing: asyncio.Task[None] | None = None

    def _client(self, api_url: str) -> ConfigurableHTTPProxy:
        """JupyterHub's own CHP client for one replica (wire format, retries, route specs)."""
        return ConfigurableHTTPProxy(
            api_url=api_url,
            auth_token=self.auth_token,
            should_start=False,
            app=self.app,
            hub=self.hub,
            db_factory=self.db_factory,
            public_url=self.public_url,
            host_routing=self.host_routing,
            extra_routes=self.extra_routes,
            log=self.log,
        )

    # ---- fan-out ---------------------------------------------------------------------------

    async def _each(self, what: str, call: Callable[[ConfigurableHTTPProxy], Awaitable[T]]) -> dict[str, T]:
        """`call` on every replica at once; the answers of those that answered in time."""

        async def one(url: str) -> T:
            return await asyncio.wait_for(call(self.replicas[url]), self.replica_timeout)

        urls = list(self.replicas)
        outcomes = await asyncio.gather(*(one(url) for url in urls), return_exceptions=True)
        answers: dict[str, T] = {}
        for url, outcome in zip(urls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.dirty.add(url)
                self.log.warning("proxy replica %s missed %s (%r); repaired at its next check", url, what, outcome)
            else:
                answers[url] = outcome
        if not answers:
            raise NoReplicaAnswered(f"no proxy replica answered {what}: {', '.join(urls)}")
        return answers

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        await self._each(f"add {routespec}", lambda r: r.add_route(routespec, target, dict(data or {})))

    async def delete_route(self, routespec: str) -> None:
        await self._each(f"delete {routespec}", lambda r: r.delete_route(routespec))

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        """The union of the replicas' routes; a route's activity is its latest on any replica."""
        merged: dict[str, dict[str, Any]] = {}
        for routes in (await self._each("get routes", lambda r: r.get_all_routes())).values():
            for spec, route in routes.items():
                known = merged.setdefault(spec, route)
                seen, latest = route["data"].get("last_activity"), known["data"].get("last_activity")
                if seen and (not latest or seen > latest):
                    known["data"]["last_activity"] = seen
        return merged

    # ---- check and repair ------------------------------------------------------------------

    async def check_routes(self, user_dict: Any, service_dict: Any, routes: Any = None) -> None:
        """JupyterHub's check on each replica, against that replica's own table."""
        await asyncio.gather(*(self._check_replica(url, user_dict, service_dict) for url in self.replicas))
        self._ensure_repair_loop()

    async def _check_replica(self, url: str, user_dict: Any, service_dict: Any) -> bool:
        replica = self.replicas[url]
        try:
            await asyncio.wait_for(replica.check_routes(user_dict, service_dict), self.check_timeout)
            await asyncio.wait_for(replica.api_request(MARKER_PATH, "POST", {"target": MARKER_TARGET}), 10)
        except Exception as e:
            self.dirty.add(url)
            self.log.warning(
                "proxy replica %s could not be checked (%r); next try in %.0fs", url, e, self.check_interval
            )
            return False
        self.dirty.discard(url)
        return True

    async def _needs_repair(self, url: str) -> bool:
        """A replica that missed a write, or that lost its marker (it restarted with an empty table)."""
        if url in self.dirty:
            return True
        try:
            answer = await asyncio.wait_for(self.replicas[url].api_request(MARKER_PATH), self.replica_timeout)
        except ClientResponseError as e:
            return e.status == 404
        except Exception:
            return True
        answer.release()
        return False

    def _ensure_repair_loop(self) -> None:
        """Started by the hub's first check_routes (JupyterHub starts no loop for an external proxy)."""
        if self._repairing is None or self._repairing.done():
            self._repairing = asyncio.get_running_loop().create_task(self._repair_forever(), name="calliope proxies")

    async def _repair_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            for url in list(self.replicas):
                if await self._needs_repair(url):
                    self.log.warning("proxy replica %s lost routes or missed a change: checking every route", url)
                    if await self._check_replica(url, self.app.users, self.app._service_map):
                        self.log.info("proxy replica %s repaired", url)
