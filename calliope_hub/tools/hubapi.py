"""A polite client of the JupyterHub REST API, for tools that put load on a hub.

The loadtest and the bench must behave like a good client at 10,000 servers: honour
429 Retry-After, back off on 5xx and connection errors with capped, jittered exponential
delays, and give up after a bounded number of tries. Doing that once here keeps the
figures of both tools comparable (same retries, same 429 count).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
#: Progress streams send a keepalive every 8 s; a silent minute means the stream is dead.
STREAM_READ_TIMEOUT_S = 60.0


class HubApiGaveUp(Exception):
    """Retries ran out; ``reason`` names the failure bucket (429, 5xx, connection)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def backoff(attempt: int) -> float:
    """Exponential, capped and jittered, so retrying clients do not move as one herd."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)


def retry_after(headers: Mapping[str, str], attempt: int) -> float:
    """The hub's Retry-After, with up to 20% jitter; our own backoff if it sent none."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return backoff(attempt)
    return max(0.1, seconds) * random.uniform(1.0, 1.2)


def parse_event(line: bytes) -> dict[str, Any]:
    """One text/event-stream line; anything but a JSON object `data:` line is empty."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:"):
        return {}
    try:
        event = json.loads(text[len("data:") :])
    except json.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


class HubApi:
    """``/hub/api`` of one hub with a token; counts the 429s and retries it absorbed."""

    def __init__(
        self,
        hub_url: str,
        token: str,
        *,
        max_connections: int = 16,
        request_timeout: float = 120.0,
        max_retries: int = 30,
    ) -> None:
        self.api_url = hub_url.rstrip("/") + "/hub/api"
        self.max_retries = max_retries
        self.http_429 = 0
        self.retries = 0
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=request_timeout),
            headers={"Authorization": f"token {token}"},
        )

    async def request(self, method: str, path: str, body: Any = None, latencies: list[float] | None = None) -> Answer:
        """Any answer below 500 except 429 is returned; ``latencies`` gets every round trip."""
        last = HubApiGaveUp("no attempt", "max_retries < 0")
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
            sent = time.monotonic()
            try:
                async with self._session.request(method, self.api_url + path, json=body) as response:
                    answer = Answer(response.status, await response.text())
                    headers = response.headers
            except (aiohttp.ClientError, TimeoutError) as error:
                last = HubApiGaveUp("connection error", f"{method} {path}: {error!r}")
                await asyncio.sleep(backoff(attempt))
                continue
            if latencies is not None:
                latencies.append(time.monotonic() - sent)
            if answer.status == 429:
                self.http_429 += 1
                last = HubApiGaveUp("429 retries exhausted", answer.text)
                await asyncio.sleep(retry_after(headers, attempt))
            elif answer.status >= 500:
                last = HubApiGaveUp("5xx retries exhausted", f"HTTP {answer.status}: {answer.text}")
                await asyncio.sleep(backoff(attempt))
            else:
                return answer
        raise last

    async def events(self, path: str) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON events of one text/event-stream (a server's spawn progress).

        Raises HubApiGaveUp when the stream cannot be opened; ends when the hub closes it.
        The caller bounds the total time.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_read=STREAM_READ_TIMEOUT_S)
        async with self._session.get(self.api_url + path, timeout=timeout) as response:
            if response.status != 200:
                raise HubApiGaveUp(f"progress http {response.status}", await response.text())
            async for line in response.content:
                event = parse_event(line)
                if event:
                    yield event

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> HubApi:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
