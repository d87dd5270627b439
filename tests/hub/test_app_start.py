"""`calliope-jupyterhub` (calliope_hub.hub.app) checks the config at start, even with no servers, and
restarts with its servers' first polls answered from one primed sweep.

Each bad config runs a real hub process with an empty database: it must exit 1 with one line
naming the setting, print no traceback, and write no database (the check runs before
JupyterHub's own start touches anything).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import calliope_hub
from calliope_hub.tools.hubapi import HubApi
from calliope_hub.tools.local.hubconfig import HubSettings, render
from calliope_hub.tools.local.hubproc import HubProcess, api_token_config
from calliope_hub.tools.local.procs import free_port
from tests.hubtest import eventually, require_proxy, server_ready
from tests.spawner.conftest import prepare

#: the built-in lab with its small size made a pair Fargate refuses (256 CPU units take at most 2048 MiB)
BUILT_IN_LAB = Path(calliope_hub.__file__).parent / "services" / "lab.yaml"
GOOD_SIZE, BAD_SIZE = "small: {cpu: 1024, memory: 2048", "small: {cpu: 256, memory: 4096"
BAD_SIZE_LINE = next(n for n, line in enumerate(BUILT_IN_LAB.read_text().splitlines(), 1) if GOOD_SIZE in line)


def start_app(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "jupyterhub_config.py"
    ports = [
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{free_port()}'",
        f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{free_port()}'",
        "c.JupyterHub.spawner_class = 'ecs'",
    ]
    config.write_text("\n".join([*ports, *lines]) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "calliope_hub.hub.app", "-f", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["c.ECSSpawner.region = 'EU (Ireland)'"], "ECSSpawner.region must be an AWS Region"),
        (
            ["c.ECSSpawner.catalog_path = 'services'"],
            f"lab.yaml: line {BAD_SIZE_LINE}: sizes.small: cpu 256 with memory 4096 is not",
        ),
        (["c.ECSSpawner.stop_wait_timeout = 0.5"], "'stop_wait_timeout' trait of an ECSSpawner"),
        (["c.ECSSpawner.subnet = ['subnet-0abc']"], "c.ECSSpawner has no setting 'subnet' (did you mean 'subnets'?)"),
        (["c.ECSSpawner.endpoint_url = ''"], "ECSSpawner.subnets is still the local default"),
    ],
    ids=["region", "catalog-size", "trait-value", "trait-typo", "aws-local-subnets"],
)
def test_a_bad_config_stops_a_hub_with_no_servers(tmp_path: Path, lines: list[str], message: str) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "lab.yaml").write_text(BUILT_IN_LAB.read_text().replace(GOOD_SIZE, BAD_SIZE))
    done = start_app(tmp_path, lines)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    refusals = [line for line in output.splitlines() if "Calliope Hub: refusing to start" in line]
    assert len(refusals) == 1 and message in refusals[0], output
    assert "Traceback" not in output, output
    assert not list(tmp_path.glob("*.sqlite")), "the check runs before JupyterHub opens its database"


async def test_a_restart_answers_its_first_polls_from_one_primed_sweep(local_ecs: Any, tmp_path: Path) -> None:
    """Two servers survive a kill -9 of the hub; the new hub primed both tasks and held both users before its check."""
    require_proxy()
    await prepare(local_ecs.endpoint_url)
    token = secrets.token_hex(16)
    settings = HubSettings(ecs_endpoint=local_ecs.endpoint_url, cleanup_servers=False, extra=[api_token_config(token)])
    hub = HubProcess(render(settings), workdir=tmp_path / "hub")
    await hub.start(timeout=120)
    try:
        async with HubApi(hub.url, token) as admin:
            for user in ("ann", "ben"):
                assert (await admin.request("POST", f"/users/{user}")).status == 201
                assert (await admin.request("POST", f"/users/{user}/server", {"user_options": {}})).status in (201, 202)
            for user in ("ann", "ben"):
                await eventually(lambda user=user: server_ready(admin, user), 60, f"{user} ready")
        hub.kill()
        await hub.start(timeout=120)
        async with HubApi(hub.url, token) as admin:
            for user in ("ann", "ben"):
                assert await server_ready(admin, user), f"{user}'s server survived the restart"
    finally:
        await hub.stop()
    log = (tmp_path / "hub" / "jupyterhub.log").read_text()
    primed = re.findall(r"primed the status of (\d+) running tasks \((\d+) users\)", log)
    assert primed == [("0", "0"), ("2", "2")], log
    assert "Traceback" not in log, log[-3000:]
