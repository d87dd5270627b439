"""A pool the hub cannot keep honestly stops `calliope-jupyterhub` at start, naming the pool and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hub.test_app_start import start_app


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ("{'lab/small': {}}", "c.CalliopePool.pools['lab/small']: lab keeps each user's files on EFS"),
        ("{'chat/small': {'max': 0}}", "c.CalliopePool.pools['chat/small'].max: a whole number from 1 to 1000"),
    ],
    ids=["efs-service", "bad-max"],
)
def test_a_pool_that_cannot_be_kept_stops_the_hub(tmp_path: Path, pools: str, message: str) -> None:
    done = start_app(tmp_path, ["c.ECSSpawner.endpoint_url = 'http://127.0.0.1:9'", f"c.CalliopePool.pools = {pools}"])
    output = done.stdout + done.stderr
    refusals = [line for line in output.splitlines() if "Calliope Hub: refusing to start" in line]
    assert done.returncode == 1 and len(refusals) == 1 and message in refusals[0], output
    assert "Traceback" not in output, output
