"""Children that die with their parent.

Local ECS's task processes, and local ECS itself under `up` and the benches, run in
sessions of their own so they can be signalled as a group. That also means nothing
kills them when their owner is killed. On Linux the kernel can: PR_SET_PDEATHSIG.

It lives in `localecs` because both users may import it from here: local ECS may import
nothing of the package but `ecsfacts`, while the tools (`tools/local/localecs_proc.py`)
may import local ECS. The hub never imports it.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """A `preexec_fn`: the kernel sends `signum` to this child when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signum)
