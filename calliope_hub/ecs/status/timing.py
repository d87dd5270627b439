"""The one clock and the one sleep every part of the TaskWatcher times itself with.

Sweep cadence, call timeouts, `wait_for` deadlines, the event batcher's window and its retry
backoff all read `clock()` and wait through `sleep()`, and never call `time` or `asyncio.sleep`
themselves. A test can then hand in virtual time and drive a watcher through hours of
cadence in microseconds, instead of setting every interval to an hour to keep the loop away.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Timing:
    """A clock, a sleep that agrees with it, and the random source for jitter."""

    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    async def within(self, awaitable: Awaitable[T], timeout: float) -> T:
        """`awaitable`'s result, or TimeoutError once `sleep(timeout)` ends first.

        asyncio.wait_for would time out on the loop's own clock; racing our sleep keeps a
        virtual clock in charge. The loser is cancelled, also when the caller is.
        """
        work = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.sleep(max(0.0, timeout)))
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        finally:
            timer.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work  # a cancelled call finishes unwinding before the caller moves on
        raise TimeoutError(f"not done within {timeout}s")
