"""`calliope-hub monitor`: the sweeps, outside the hub, for operators who want no polling in it.

It finds this hub's tasks by their `startedBy` (ListTasks, RUNNING and STOPPED, paged),
describes them 100 at a time, and pushes every task whose `version` moved to the hub's
events endpoint as an EventBridge "ECS Task State Change" event, with the shared secret.
The hub is configured with `c.CalliopeEvents.sweeps = "off"`: it runs no sweep at all and
still confirms every STOPPED it is told about with its own DescribeTasks, so a monitor
that is wrong (or impersonated) cannot end a live server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from typing import Any

import aiohttp

from calliope_hub.ecs.api import EcsApi, EcsApiError, EcsTarget
from calliope_hub.ecsfacts import started_by, task_state_change_event
from calliope_hub.events.wire import DEFAULT_HEADER, events_url

log = logging.getLogger(__name__)
SECRET_ENV = "CALLIOPE_EVENTS_SECRET"
#: events per POST (the hub refuses deliveries of more than 1,000)
PUSH_BATCH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--hub-url", default="http://127.0.0.1:8000", help="the hub's public URL (default %(default)s)")
    add("--secret", default=os.environ.get(SECRET_ENV, ""), help=f"the events secret (or set {SECRET_ENV})")
    add("--header", default=DEFAULT_HEADER, help="the header that carries it (default %(default)s)")
    add("--ecs-endpoint", default="", help="ECS endpoint ('' = AWS's own for --region)")
    add("--region", default="us-east-1")
    add("--cluster", default="calliope")
    add("--hub-id", default="calliope", help="the hub's ECSSpawner.hub_id: its tasks' startedBy")
    add("--interval", type=float, default=30.0, help="seconds between sweeps (default %(default)s)")
    add("--sweeps", type=int, default=0, help="stop after this many sweeps (0 = run until stopped)")


class Monitor:
    """Sweeps one cluster for one hub's tasks and pushes what changed."""

    def __init__(self, api: EcsApi, session: aiohttp.ClientSession, args: argparse.Namespace):
        self.api, self.session, self.args = api, session, args
        self.url = events_url(args.hub_url)
        self.versions: dict[str, int] = {}

    async def sweep(self) -> int:
        """One sweep; returns how many changed tasks were pushed."""
        hub_tasks = started_by(self.args.hub_id)  # the one rule: tasks carry the sanitized hub id
        arns: list[str] = []
        for status in ("RUNNING", "STOPPED"):
            arns += await self.api.list_tasks(self.args.cluster, started_by=hub_tasks, desired_status=status)
        changed = []
        for answer in await self.api.describe_all(self.args.cluster, arns):
            if isinstance(answer, EcsApiError):
                raise answer
            changed += [t for t in answer.tasks if t.get("version", 0) > self.versions.get(t["taskArn"], -1)]
        for i in range(0, len(changed), PUSH_BATCH):
            await self._push([task_state_change_event(t) for t in changed[i : i + PUSH_BATCH]])
        for task in changed:  # only once the hub took them: a failed push is retried next sweep
            self.versions[task["taskArn"]] = task.get("version", 0)
        self.versions = {arn: v for arn, v in self.versions.items() if arn in set(arns)}
        return len(changed)

    async def _push(self, events: list[dict[str, Any]]) -> None:
        headers = {self.args.header: self.args.secret, "Content-Type": "application/json"}
        async with self.session.post(self.url, data=json.dumps(events), headers=headers) as answer:
            if answer.status >= 300:
                raise RuntimeError(f"the hub answered HTTP {answer.status}: {(await answer.text())[:200]}")

    async def run(self) -> None:
        done = 0
        while not self.args.sweeps or done < self.args.sweeps:
            try:
                pushed = await self.sweep()
                log.info("sweep: %d changed tasks pushed", pushed)
            except (EcsApiError, aiohttp.ClientError, RuntimeError, TimeoutError) as e:
                log.warning("sweep failed (%s); the next one retries", e)
            done += 1
            if not self.args.sweeps or done < self.args.sweeps:
                await asyncio.sleep(self.args.interval)


async def _main(args: argparse.Namespace) -> None:
    api = await EcsApi.create(EcsTarget(args.region, args.ecs_endpoint or None))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await Monitor(api, session, args).run()
    finally:
        await api.close()


def run(args: argparse.Namespace) -> int:
    if not args.secret or args.interval <= 0:
        print(f"a secret (--secret or {SECRET_ENV}) and a positive --interval are required")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main(args))
    return 0
