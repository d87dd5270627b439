"""JupyterHub's count of active servers, taken once a second instead of on every spawn.

Every spawn request runs JupyterHub's `UserDict.count_active_users`, a loop over every user's
every spawner (three properties each, `Spawner.server` building a wrapper), to check
`concurrent_spawn_limit` and `active_server_limit`. Its comment says ~5 ms at 10,000 users; in
the floor's spawn window at 10,000 servers (py-spy, docs/benchmarks) it held 33 % of the hub's
samples, about 20 ms a spawn on this machine, O(N) per spawn and so O(N^2) for a class start.

Here a count is reused for REFRESH_S, and each request that reads it in between is counted as one
more pending and active spawn, since each may be one (JupyterHub marks the spawn pending right
after its check). So the limits are never looser than JupyterHub's: at worst a request is turned
away with a 429 that an exact count would have let through, within REFRESH_S of a count.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from jupyterhub.user import UserDict

#: seconds a count is reused
REFRESH_S = 1.0
#: the counts each request between two counts adds, as JupyterHub names them
ASSUMED_SPAWN = ("active", "pending", "spawn_pending")


class CountedUserDict(UserDict):
    """UserDict whose count_active_users counts at most once per REFRESH_S, erring towards busy."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._counted_at = float("-inf")
        self._since = 0

    def count_active_users(self) -> defaultdict[str, int]:
        now = self._clock()
        if now - self._counted_at >= REFRESH_S:
            self._counts = dict(super().count_active_users())
            self._counted_at = now
            self._since = 0
        else:
            self._since += 1
        counts: defaultdict[str, int] = defaultdict(int, self._counts)
        for key in ASSUMED_SPAWN:
            counts[key] += self._since
        return counts
