"""Two pytest sessions at once on one machine hand their local ECSs different task addresses.

tests/conftest.py's fresh_cidr() used to count from 127.100.0.0 in every session, so a second
session's first local ECS gave its tasks the first session's addresses. Each session now holds a
/16 of its own (an flock), inside 127.1-127.15, where local ECS's own random default never lands.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from calliope_hub.localecs.config import random_cidr
from tests.conftest import fresh_cidr

ROOT = Path(__file__).resolve().parent.parent


def other_session_cidrs(count: int) -> list[str]:
    """What fresh_cidr() gives in another process, as another pytest session's would."""
    code = f"from tests.conftest import fresh_cidr\nprint(' '.join(fresh_cidr() for _ in range({count})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_another_session_at_the_same_time_gets_other_addresses() -> None:
    mine = [ipaddress.IPv4Network(fresh_cidr()) for _ in range(3)]
    theirs = [ipaddress.IPv4Network(cidr) for cidr in other_session_cidrs(3)]
    assert len(set(mine)) == 3 and len(set(theirs)) == 3
    assert not any(a.overlaps(b) for a in mine for b in theirs), (mine, theirs)
    tests_range = ipaddress.IPv4Network("127.0.0.0/12")  # 127.0-127.15
    assert all(
        net.subnet_of(tests_range) and not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/16")) for net in mine + theirs
    )


def test_local_ecs_default_never_lands_in_the_tests_range() -> None:
    for _ in range(500):
        assert not ipaddress.IPv4Network(random_cidr()).overlaps(ipaddress.IPv4Network("127.0.0.0/12"))
