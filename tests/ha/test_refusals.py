"""Configs that cannot run as an HA pair stop the hub before it waits or writes anything, with the
setting's name: SQLite, a database that does not answer, cleanup_servers, a hub-started proxy."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from calliope_hub.tools.local.procs import free_port
from tests.ha.conftest import PG_SERVER, require_services

REPLICAS = [
    "c.JupyterHub.proxy_class = 'calliope-chp-replicas'",
    "c.CHPReplicas.api_urls = ['http://127.0.0.1:9']",
    "c.CHPReplicas.auth_token = 'refusal-test-token'",
]

#: case id -> (config lines, what the refusal must name)
CASES: dict[str, tuple[list[str], str]] = {
    "default-sqlite": ([], "c.JupyterHub.db_url is a sqlite database"),
    "sqlite": (["c.JupyterHub.db_url = 'sqlite:///hub.sqlite'"], "an HA pair shares one PostgreSQL"),
    "no-database": (
        [f"c.JupyterHub.db_url = '{PG_SERVER.rsplit(':', 1)[0]}:9/nothing'"],
        "cannot reach the hub database",
    ),
    "cleanup-servers": (
        [f"c.JupyterHub.db_url = '{PG_SERVER}/test'", "c.JupyterHub.cleanup_servers = True"],
        "c.JupyterHub.cleanup_servers must be False",
    ),
    "hub-started-proxy": (
        [f"c.JupyterHub.db_url = '{PG_SERVER}/test'", "c.JupyterHub.proxy_class = 'configurable-http-proxy'"],
        "ConfigurableHTTPProxy.should_start must be False",
    ),
}


@dataclass
class Refusal:
    workdir: Path
    returncode: int
    output: str


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """Every case's hub, each a real `python -m calliope_hub.hub.ha` in a directory of its own, all started
    at once: each spends seconds importing JupyterHub and building the runtime before its refusal, and the
    cases share nothing, so one after another only added up those seconds."""
    require_services()
    started: dict[str, tuple[Path, subprocess.Popen[str]]] = {}
    try:
        for case, (lines, _) in CASES.items():
            workdir = tmp_path_factory.mktemp(f"refusal-{case}")
            config = workdir / "jupyterhub_config.py"
            config.write_text("\n".join([*REPLICAS, *lines, f"c.CalliopeHA.health_port = {free_port()}"]) + "\n")
            command = [sys.executable, "-m", "calliope_hub.hub.ha", "-f", str(config)]
            started[case] = (
                workdir,
                subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        done = {}
        for case, (workdir, process) in started.items():
            output, _ = process.communicate(timeout=90)
            done[case] = Refusal(workdir, process.returncode, output)
        return done
    finally:
        for _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("case", list(CASES))
def test_ha_refuses_a_config_that_cannot_run_as_a_pair(refusals: dict[str, Refusal], case: str) -> None:
    refusal, (_, message) = refusals[case], CASES[case]
    assert refusal.returncode == 2, refusal.output
    assert message in refusal.output, refusal.output
    assert "Traceback" not in refusal.output, refusal.output
    assert not list(refusal.workdir.glob("*.sqlite")), "nothing written before the refusal"
