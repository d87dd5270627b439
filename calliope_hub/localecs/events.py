"""Task state changes as EventBridge delivers them: an HTTP sink for the shared event shape.

The event itself is built by calliope_hub.ecsfacts.task_state_change_event (re-exported here),
the one builder `calliope-hub monitor` uses too, so the hub sees one shape from both.

The hub's event receiver must survive what EventBridge really does: deliver at least once,
sometimes twice, sometimes out of order, and retry only 5xx and 429. The sink does the
same, and its `duplicate` and `reorder` switches make the rare cases happen on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter

import aiohttp

from calliope_hub.ecsfacts import task_state_change_event

__all__ = ["HttpEventSink", "parse_header", "task_state_change_event"]

log = logging.getLogger(__name__)

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' (as given to --events-header) as a (name, value) pair."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.match(name) or not value:
        raise ValueError(f"a header must look like 'Name: value' (e.g. 'Authorization: Bearer xyz'), got {text!r}")
    return name, value


class HttpEventSink:
    """POSTs events as an EventBridge API destination does: JSON body, one configured header.

    Events of one task go to the same delivery lane, so without `reorder` they arrive in
    order; lanes run concurrently, which bounds delivery concurrency. A lane retries an
    event (5xx, 429, connection errors, timeouts) with capped, jittered exponential
    backoff before it moves on, so a down receiver holds back events rather than losing
    them; an event that still fails after `max_attempts` is dropped and counted.
    """

    def __init__(
        self,
        url: str,
        header: tuple[str, str] | None = None,
        *,
        duplicate: float = 0.0,
        reorder: bool = False,
        max_attempts: int = 8,
        concurrency: int = 4,
        timeout: float = 5.0,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        max_queued: int = 100_000,
        reorder_window: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= duplicate <= 1.0:
            raise ValueError(f"duplicate is a probability in [0, 1], got {duplicate}")
        if max_attempts < 1 or concurrency < 1:
            raise ValueError("max_attempts and concurrency must be at least 1")
        self.url = url
        self._headers = {"Content-Type": "application/json", **dict([header] if header else [])}
        self._duplicate, self._reorder, self._reorder_window = duplicate, reorder, reorder_window
        self._max_attempts, self._timeout = max_attempts, aiohttp.ClientTimeout(total=timeout)
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._rng = rng or random.Random()
        self._lanes: list[asyncio.Queue[dict]] = [
            asyncio.Queue(maxsize=max(1, max_queued // concurrency)) for _ in range(concurrency)
        ]
        self._workers: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._counts: Counter[str] = Counter()

    def publish(self, event: dict) -> None:
        """Queue an event (twice, with probability `duplicate`); never blocks, never raises."""
        copies = 2 if self._rng.random() < self._duplicate else 1
        lane = self._lanes[hash(event["resources"][0] if event.get("resources") else event["id"]) % len(self._lanes)]
        self._counts["published"] += 1
        self._counts["duplicated"] += copies - 1
        for _ in range(copies):
            if self._closed or lane.full():
                self._counts["dropped"] += 1
                continue
            lane.put_nowait(event)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._workers = [asyncio.create_task(self._run_lane(lane)) for lane in self._lanes]

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Deliver what can be delivered within `flush_timeout`, then stop; the rest is dropped."""
        self._closed = True
        if self._workers:
            try:
                await asyncio.wait_for(asyncio.gather(*(lane.join() for lane in self._lanes)), flush_timeout)
            except TimeoutError:
                log.warning("event sink %s closed with %d events undelivered", self.url, self.stats()["pending"])
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._counts["dropped"] += self.stats()["pending"]
        if self._session is not None:
            await self._session.close()

    def stats(self) -> dict[str, int]:
        """published, duplicated, delivered, retried, rejected, dropped, and pending events."""
        counts = {
            name: self._counts[name]
            for name in ("published", "duplicated", "delivered", "retried", "rejected", "dropped")
        }
        settled = counts["delivered"] + counts["rejected"] + counts["dropped"]
        counts["pending"] = counts["published"] + counts["duplicated"] - settled
        return counts

    async def _run_lane(self, lane: asyncio.Queue) -> None:
        while True:
            batch = [await lane.get()]
            if self._reorder:
                batch += await self._gather_window(lane)
                self._rng.shuffle(batch)
            for event in batch:
                try:
                    await self._deliver(event)
                finally:
                    lane.task_done()

    async def _gather_window(self, lane: asyncio.Queue) -> list[dict]:
        """Events published right after the first one, so shuffling has something to reorder."""
        window: list[dict] = []
        deadline = asyncio.get_running_loop().time() + 0.02
        while len(window) < self._reorder_window - 1:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                window.append(await asyncio.wait_for(lane.get(), remaining))
            except TimeoutError:
                break
        return window

    async def _deliver(self, event: dict) -> None:
        body = json.dumps(event)
        for attempt in range(1, self._max_attempts + 1):
            try:
                if self._session is None:
                    raise RuntimeError("HttpEventSink.start() was not called")
                async with self._session.post(self.url, data=body, headers=self._headers) as answer:
                    status = answer.status
                    await answer.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    self._counts["delivered"] += 1
                    return
                if status != 429 and status < 500:
                    self._counts["rejected"] += 1
                    log.warning("event sink %s rejected event %s with HTTP %d", self.url, event["id"], status)
                    return
                failure = f"HTTP {status}"
            if attempt < self._max_attempts:
                self._counts["retried"] += 1
                await asyncio.sleep(self._backoff(attempt))
        self._counts["dropped"] += 1
        log.warning("event sink %s dropped event %s after %d attempts: %s", self.url, event["id"], attempt, failure)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)
