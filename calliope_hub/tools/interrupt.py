"""How the tools' commands stop on a signal: Ctrl-C and SIGTERM both end the run cleanly.

`asyncio.run` turns Ctrl-C into a cancellation of the main coroutine only when SIGINT is at
Python's default handler. A command started in the background by a script or a CI job
(bash ignores SIGINT in asynchronous commands) inherits SIGINT ignored, so asyncio installs
nothing, and a SIGTERM handler that relays to SIGINT is silently ignored too: that is how
the bench came to ignore SIGTERM, and how the loadtest's Ctrl-C test ran on to the end
under a backgrounded test run. Here SIGTERM cancels the main task directly, and SIGINT does
so unless it was ignored when we started (a signal the caller chose to ignore stays
ignored, as in any Unix program). The first signal cancels, so every `finally` runs and
the command can still print what it measured; a second one stops at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by `signum`; a KeyboardInterrupt, so Ctrl-C handlers catch it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's convention, 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where SIGINT or SIGTERM raises Interrupted once `main` has unwound."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(main)
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) > 1:
                raise Interrupted(signum)  # the second signal: out of the loop now, unwound or not
            task.cancel()

        watched = [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
        for signum in watched:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if received and task.uncancel() == 0:
                raise Interrupted(received[0]) from None
            raise
        finally:
            for signum in watched:
                loop.remove_signal_handler(signum)
