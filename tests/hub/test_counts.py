"""CountedUserDict: JupyterHub's active-server count at most once a second, never looser than JupyterHub's.

The users are JupyterHub's own UserDict entries' shape (a wrapper with spawners that say whether
they are pending, active and ready); the clock is the test's, so nothing is timed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from calliope_hub.hub import counts
from calliope_hub.hub.counts import CountedUserDict


def _spawner(pending: str | bool = False, ready: bool = False) -> SimpleNamespace:
    return SimpleNamespace(pending=pending, ready=ready, active=bool(pending or ready))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def users() -> tuple[CountedUserDict, Clock]:
    clock = Clock()
    users = CountedUserDict(db_factory=lambda: None, settings={}, clock=clock)
    for i in range(10):  # 6 ready, 2 spawning, 2 stopped
        spawner = _spawner(ready=True) if i < 6 else _spawner(pending="spawn") if i < 8 else _spawner()
        users[i] = SimpleNamespace(spawners={"": spawner})
    return users, clock


def test_counts_as_jupyterhub_does_when_fresh(users: tuple[CountedUserDict, Clock]) -> None:
    counted, _ = users
    assert dict(counted.count_active_users()) == {"ready": 6, "active": 8, "pending": 2, "spawn_pending": 2}


def test_between_counts_each_request_counts_as_a_spawn(users: tuple[CountedUserDict, Clock]) -> None:
    counted, clock = users
    counted.count_active_users()
    counted[0].spawners[""] = _spawner()  # a server stops: the reused count does not see it
    for expected in (3, 4, 5):
        clock.now += counts.REFRESH_S / 4
        got = counted.count_active_users()
        assert (got["spawn_pending"], got["pending"], got["active"], got["ready"]) == (
            expected,
            expected,
            6 + expected,
            6,
        )
    clock.now += counts.REFRESH_S
    assert counted.count_active_users()["active"] == 7  # counted again: exact


def test_never_looser_than_an_exact_count_for_the_spawn_limit(users: tuple[CountedUserDict, Clock]) -> None:
    """Requests that each start a spawn between two counts: the reused count keeps up with them."""
    counted, clock = users
    for i in range(10, 30):
        got = counted.count_active_users()
        exact = dict(super(CountedUserDict, counted).count_active_users())
        assert got["spawn_pending"] >= exact.get("spawn_pending", 0)
        assert got["active"] >= exact["active"]
        counted[i] = SimpleNamespace(spawners={"": _spawner(pending="spawn")})  # what JupyterHub does next
        clock.now += counts.REFRESH_S / 7
