"""Configs that cannot run as an HA pair stop the hub before it waits or writes anything, with the
setting's name: SQLite, a database that does not answer, cleanup_servers, a hub-started proxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from calliope_hub.tools.local.procs import free_port
from tests.ha.conftest import PG_SERVER, require_services

REPLICAS = [
    "c.JupyterHub.proxy_class = 'calliope-chp-replicas'",
    "c.CHPReplicas.api_urls = ['http://127.0.0.1:9']",
    "c.CHPReplicas.auth_token = 'refusal-test-token'",
]


def run_ha_hub(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "jupyterhub_config.py"
    config.write_text("\n".join([*lines, f"c.CalliopeHA.health_port = {free_port()}"]) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "calliope_hub.hub.ha", "-f", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "c.JupyterHub.db_url is a sqlite database"),
        (["c.JupyterHub.db_url = 'sqlite:///hub.sqlite'"], "an HA pair shares one PostgreSQL"),
        ([f"c.JupyterHub.db_url = '{PG_SERVER.rsplit(':', 1)[0]}:9/nothing'"], "cannot reach the hub database"),
        (
            [f"c.JupyterHub.db_url = '{PG_SERVER}/test'", "c.JupyterHub.cleanup_servers = True"],
            "c.JupyterHub.cleanup_servers must be False",
        ),
        (
            [f"c.JupyterHub.db_url = '{PG_SERVER}/test'", "c.JupyterHub.proxy_class = 'configurable-http-proxy'"],
            "ConfigurableHTTPProxy.should_start must be False",
        ),
    ],
    ids=["default-sqlite", "sqlite", "no-database", "cleanup-servers", "hub-started-proxy"],
)
def test_ha_refuses_a_config_that_cannot_run_as_a_pair(tmp_path: Path, lines: list[str], message: str) -> None:
    require_services()
    done = run_ha_hub(tmp_path, [*REPLICAS, *lines])
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert message in output, output
    assert "Traceback" not in output, output
    assert not list(tmp_path.glob("*.sqlite")), "nothing written before the refusal"
