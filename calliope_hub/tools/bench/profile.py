"""py-spy profiles of the hub, one per bench phase (`calliope-hub bench --profile DIR`).

Issue 11 asks where a hub's time goes in the spawn, steady and restart windows at 5,000 and
10,000 servers. Taking those by hand means catching the right pid at the right moment, and the
restarted hub is a new process; so the bench records them itself: `py-spy record` attached to
the hub for the length of each phase, stopped with SIGINT (which makes py-spy write its file),
as speedscope JSON (open it at speedscope.app). `--nonblocking` keeps py-spy from pausing the
hub it measures; the cost is an occasional torn sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

#: the hub's pid now (None between a kill and the next start)
HubPid = Callable[[], int | None]

#: samples a second: enough for phases of minutes, light enough for a hub on a shared core
RATE = 50
#: how often a restart's profile looks for the new hub process
FOLLOW_S = 0.02
#: how long py-spy may take to write its file after SIGINT
WRITE_TIMEOUT_S = 120.0


def py_spy() -> str:
    """The py-spy beside this Python (the bench extra installs it), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: pip install 'calliope-hub[bench]'")
    return found


class HubProfiler:
    """Writes DIR/profile-<N>-<mode>-<repeat>-<phase>.speedscope.json for each phase it wraps."""

    def __init__(self, directory: Path, stem: str) -> None:
        self.directory = directory
        self.stem = stem
        self.executable = py_spy()
        #: phase -> the file written, or why there is none
        self.written: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def phase(self, name: str, hub_pid: HubPid, *, follow: bool = False) -> AsyncIterator[None]:
        """Profile the hub while the body runs. With `follow`, wait for the body to start a
        new hub process (a restart) and attach to that one as soon as it exists."""
        old = hub_pid()
        attach = asyncio.create_task(self._record(name, hub_pid, old if follow else None))
        try:
            yield
        finally:
            await self._finish(name, attach)

    async def _record(self, name: str, hub_pid: HubPid, old: int | None) -> asyncio.subprocess.Process:
        pid = hub_pid()
        while pid is None or pid == old:  # bounded: the phase's end cancels this task
            await asyncio.sleep(FOLLOW_S)
            pid = hub_pid()
        output = self.directory / f"profile-{self.stem}-{name}.speedscope.json"
        command = [self.executable, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
        command += ["--format", "speedscope", "--output", str(output)]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self.written[name] = str(output)
        return process

    async def _finish(self, name: str, attach: asyncio.Task[asyncio.subprocess.Process]) -> None:
        if not attach.done():
            attach.cancel()
            self.written[name] = "no hub process to attach to during the phase"
            await asyncio.gather(attach, return_exceptions=True)
            return
        process = attach.result()
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        began = time.monotonic()
        try:
            _, errors = await asyncio.wait_for(process.communicate(), WRITE_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.written[name] = f"py-spy did not write within {WRITE_TIMEOUT_S:g}s"
            return
        if not Path(self.written[name]).exists():
            reason = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            self.written[name] = f"py-spy wrote nothing ({reason[0]}) after {time.monotonic() - began:.1f}s"
